"""The broker refusing a service, on the secured broker: a wrong password, a CA that did
not sign the broker's certificate, an ACL taken away while it runs. Each service says so
in one line naming who may not do what (no traceback), answers ``/readyz`` 503 with that
line, keeps retrying, and once the ACL is back goes on by itself, without a restart and
without losing what arrived meanwhile (``shared/kafka_access.py``)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import ConsumerRecord

from devtools.localkafka import free_port
from devtools.secure import SecureMaterial
from devtools.testing import ServiceProcess, concurrent_stage, produce, read_topic, wait_until
from services.acls import ADMIN, Acl
from services.insights.state import decode_facts
from shared.kafka_access import AccessStatus
from shared.stage import StageRunner
from tests.notify.helpers import Receiver
from tests.security.conftest import SecuredKafka

pytestmark = pytest.mark.kafka

SEED = Path(__file__).resolve().parents[2] / "services" / "ingest" / "samples" / "world-metaverse-conference.ndjson"


def announcement(event_id: str) -> dict[str, object]:
    """The seed's first conference announcement under a new id (and subject)."""
    for line in SEED.read_bytes().splitlines():
        event = orjson.loads(line) if line.strip() else {}
        if event.get("type") == "conference.announcement":
            return {**event, "id": event_id, "subject": event_id}
    raise AssertionError("the seed has no announcement")


class Service:
    """``anting serve NAME`` signed in as ``anting-NAME`` on the secured broker, topics under
    ``prefix``; ``env`` overrides the principal's variables (a wrong password...)."""

    def __init__(self, kafka: SecuredKafka, name: str, prefix: str, log_dir: Path, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.proc = ServiceProcess(
            name, kafka.settings(f"anting-{name}", prefix), log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log",
            **{**kafka.env(f"anting-{name}"), f"ANTING_{name.upper()}_PORT": str(self.port),
               "ANTING_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8", "ANTING_ENRICH_INSTANCE_ID": "refusals-0",
               **env})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.proc.log()

    async def readyz(self, client: httpx.AsyncClient) -> tuple[int, str]:
        """(status, detail) of ``/readyz``; (0, why) when it does not answer."""
        try:
            r = await client.get(f"{self.url}/readyz")
        except httpx.HTTPError as exc:
            return 0, repr(exc)
        return r.status_code, str(r.json().get("detail"))

    def running(self) -> None:
        proc = self.proc.proc
        assert proc is not None and proc.poll() is None, f"{self.name} exited:\n{self.log()[-3000:]}"


@pytest.fixture
def services(secure_kafka: SecuredKafka, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Starts services (see :class:`Service`); terminates them all at the end."""
    started: list[Service] = []

    def start(name: str, prefix: str, **env: str) -> Service:
        service = Service(secure_kafka, name, prefix, tmp_path, **env)
        service.proc.start()
        started.append(service)
        return service

    yield start
    for s in started:
        s.proc.terminate()


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                log: Callable[[], str] = lambda: "") -> None:
    """Await ``check()`` every 0.3 s until true; after ``timeout`` s fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log()[-4000:]}")


async def readyz_is(client: httpx.AsyncClient, service: Service, status: int, detail: str = "",
                    timeout: float = 90.0) -> str:
    """Wait until ``service``'s ``/readyz`` answers ``status`` with ``detail`` in its body."""
    seen: list[tuple[int, str]] = []

    async def check() -> bool:
        service.running()
        seen.append(await service.readyz(client))
        return seen[-1][0] == status and detail in seen[-1][1]

    try:
        await until(check, timeout, f"{service.name} /readyz {status} {detail!r}", service.log)
    except AssertionError as exc:
        raise AssertionError(f"last /readyz: {seen[-1:]}; {exc}") from None
    return seen[-1][1]


def refusal_lines(log: str, line: str) -> list[str]:
    """The error lines of ``log`` (JSON lines) that carry ``line``."""
    return [entry for entry in log.splitlines() if line in entry and '"level":"error"' in entry]


async def fresh_prefix(secure_kafka: SecuredKafka) -> str:
    """A topic prefix of this test's own, with the ACL table applied and the topics made
    (the fixture's calls run their own event loop: in a thread)."""
    prefix = f"r{uuid.uuid4().hex[:6]}."
    await asyncio.to_thread(secure_kafka.use_prefix, prefix)
    return prefix


def _no_traceback(service: Service) -> None:
    log = service.log()
    assert "Traceback" not in log, f"{service.name} logged a traceback:\n{log[-4000:]}"


async def test_wrong_password_and_unknown_ca_are_one_clear_line_and_readiness_503(
        secure_kafka: SecuredKafka, services: Callable[..., Service], tmp_path: Path) -> None:
    """enrich and ingest with a wrong password, notify trusting another CA: each says why
    in one line at error (the user, the mechanism and the broker's message; the CA file
    and the verification error), keeps running, and ``/readyz`` answers 503 with it."""
    other = SecureMaterial(tmp_path / "other-ca")
    other.issue_tls()  # a CA of its own, which did not sign the broker's certificate
    prefix = await fresh_prefix(secure_kafka)
    where = secure_kafka.bootstrap
    enrich = services("enrich", prefix, KAFKA_SASL_PASSWORD="not-the-password")
    ingest = services("ingest", prefix, KAFKA_SASL_PASSWORD="not-the-password")
    notify = services("notify", prefix, KAFKA_SSL_CAFILE=str(other.ca_file))
    wrong = {
        enrich: f"kafka: authentication failed for SASL user anting-enrich (SCRAM-SHA-512) at {where}: ",
        ingest: f"kafka: authentication failed for SASL user anting-ingest (SCRAM-SHA-512) at {where}: ",
        notify: (f"kafka: TLS certificate of {where} not trusted by KAFKA_SSL_CAFILE={other.ca_file}: "
                 "certificate verify failed"),
    }
    async with httpx.AsyncClient(timeout=10) as client:
        for service, line in wrong.items():
            detail = await readyz_is(client, service, 503, line, timeout=60)
            assert detail.startswith(line), detail
        await asyncio.sleep(4)  # a few retries more: still one line each
        for service, line in wrong.items():
            service.running()
            lines = refusal_lines(service.log(), line)
            assert len(lines) == 1, f"{service.name}: {lines}\n{service.log()[-3000:]}"
            if "authentication failed" in line:
                assert "invalid credentials" in lines[0], lines[0]  # the broker's own words
            _no_traceback(service)


@pytest.mark.parametrize("taken", ["write-output", "transactional-id"])
async def test_enrich_without_an_acl_waits_and_loses_nothing(
        secure_kafka: SecuredKafka, services: Callable[..., Service], taken: str) -> None:
    """enrich's Write on enriched-events, or on its transactional ids, taken away: the
    event read meanwhile is not written (its transaction aborts, its offset is not
    committed), one line names the ACL, ``/readyz`` is 503 with it; the ACL back, enrich
    goes on by itself and both that event and one published afterwards come out, once each."""
    prefix = await fresh_prefix(secure_kafka)
    admin = secure_kafka.settings(ADMIN, prefix)
    if taken == "write-output":
        acl = secure_kafka.acl("anting-enrich", "topic", f"{prefix}enriched-events", "WRITE")
        line = f"kafka: User:anting-enrich may not Write Topic:{prefix}enriched-events (TOPIC_AUTHORIZATION_FAILED)"
    else:
        acl = secure_kafka.acl("anting-enrich", "transactional_id", "anting-enrich-", "WRITE")
        line = ("kafka: User:anting-enrich may not Write TransactionalId:anting-enrich-refusals-0 "
                "(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)")
    enrich = services("enrich", prefix)
    before, after = f"refused-{uuid.uuid4().hex[:8]}", f"allowed-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10) as client:
        await readyz_is(client, enrich, 200)
        await asyncio.to_thread(secure_kafka.remove_acl, acl)
        try:
            await produce(admin, f"{prefix}announcements", [orjson.dumps(announcement(before))], [before.encode()])
            await readyz_is(client, enrich, 503, line, timeout=60)
            assert await read_topic(admin, f"{prefix}enriched-events", idle=1.0) == []
        finally:
            await asyncio.to_thread(secure_kafka.restore_acl, acl)
        await readyz_is(client, enrich, 200, timeout=60)
        await produce(admin, f"{prefix}announcements", [orjson.dumps(announcement(after))], [after.encode()])
        out = await read_topic(admin, f"{prefix}enriched-events", expect=2, timeout=60)
    ids = sorted(orjson.loads(r.value or b"{}")["id"] for r in out)
    assert ids == sorted([before, after]), ids
    log = enrich.log()
    assert 1 <= len(refusal_lines(log, line)) <= 2, log[-4000:]  # one per 30 s
    assert f"kafka: access restored (was: {line.removeprefix('kafka: ')})" in log, log[-3000:]
    _no_traceback(enrich)


@pytest.mark.parametrize("taken", ["read-input", "group"])
async def test_notify_without_an_acl_waits_and_delivers_after(
        secure_kafka: SecuredKafka, services: Callable[..., Service], taken: str) -> None:
    """notify's Read on enriched-events, or on its groups, taken away while an event comes
    through enrich: nothing is delivered, one line names the ACL, ``/readyz`` is 503 with
    it; the ACL back, notify delivers that event and one published afterwards, without a
    restart."""
    prefix = await fresh_prefix(secure_kafka)
    admin = secure_kafka.settings(ADMIN, prefix)
    if taken == "read-input":
        acl = secure_kafka.acl("anting-notify", "topic", f"{prefix}enriched-events", "READ")
        line = f"kafka: User:anting-notify may not Read Topic:{prefix}enriched-events (TOPIC_AUTHORIZATION_FAILED)"
    else:
        # a prefixed ACL: its three groups are refused, readiness names the first refused
        acl = secure_kafka.acl("anting-notify", "group", "anting-notify", "READ")
        line = "kafka: User:anting-notify may not Read Group:anting-notify"
    hook = await Receiver().start()
    enrich, notify = services("enrich", prefix), services("notify", prefix)
    before, after = f"refused-{uuid.uuid4().hex[:8]}", f"allowed-{uuid.uuid4().hex[:8]}"

    def delivered() -> set[str]:
        return {orjson.loads(d.body)["id"] for d in hook.on("/refusals")}

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await readyz_is(client, enrich, 200)
            await readyz_is(client, notify, 200)
            r = await client.post(f"{notify.url}/v1/subscriptions", json={
                "name": "refusals", "channel": {"type": "webhook", "url": hook.url("/refusals")}})
            assert r.status_code == 201, r.text
            sub = r.json()["id"]

            async def served() -> bool:
                return (await client.get(f"{notify.url}/v1/subscriptions/{sub}")).status_code == 200

            await until(served, 15, "notify serving its subscription")
            await asyncio.to_thread(secure_kafka.remove_acl, acl)
            try:
                # refused from its next fetch on (the brokers apply the change within a moment)
                await readyz_is(client, notify, 503, line, timeout=60)
                if taken == "group":
                    # a group's ACL is checked on heartbeats and commits, not on fetches:
                    # each of notify's three members learns of it at its next heartbeat (at
                    # most 3 s apart), and /readyz shows the first. Until then the events
                    # member may still take records, which is not what this test is about.
                    await asyncio.sleep(6)
                await produce(admin, f"{prefix}announcements", [orjson.dumps(announcement(before))],
                              [before.encode()])
                got = await read_topic(admin, f"{prefix}enriched-events", expect=1, timeout=60)
                assert [orjson.loads(r.value or b"{}")["id"] for r in got] == [before]
                await asyncio.sleep(2)
                assert delivered() == set()
                await readyz_is(client, notify, 503, line, timeout=5)
            finally:
                await asyncio.to_thread(secure_kafka.restore_acl, acl)
            await readyz_is(client, notify, 200, timeout=90)
            await produce(admin, f"{prefix}announcements", [orjson.dumps(announcement(after))], [after.encode()])

            async def both() -> bool:
                return delivered() >= {before, after}

            await until(both, 60, "webhook deliveries of the events from before and after", notify.log)
        log = notify.log()
        assert 1 <= len(refusal_lines(log, line)) <= 6, log[-4000:]  # per loop, one per 30 s
        assert f"kafka: access restored (was: {line.removeprefix('kafka: ')}" in log, log[-3000:]
        _no_traceback(notify)
    finally:
        await hook.stop()


async def test_ingest_without_write_on_announcements_answers_503_and_publishes_nothing(
        secure_kafka: SecuredKafka, services: Callable[..., Service]) -> None:
    """ingest's Write on announcements taken away: ``/readyz`` says so before any publish
    (the broker's authorized operations), a publish answers 503 problem+json naming the
    ACL and writes nothing; the ACL back, readiness is 200 and a publish is accepted."""
    prefix = await fresh_prefix(secure_kafka)
    admin = secure_kafka.settings(ADMIN, prefix)
    acl: Acl = secure_kafka.acl("anting-ingest", "topic", f"{prefix}announcements", "WRITE")
    line = f"kafka: User:anting-ingest may not Write Topic:{prefix}announcements"
    ingest = services("ingest", prefix)
    before, after = f"refused-{uuid.uuid4().hex[:8]}", f"allowed-{uuid.uuid4().hex[:8]}"
    headers = {"content-type": "application/cloudevents+json"}
    async with httpx.AsyncClient(timeout=10) as client:
        await readyz_is(client, ingest, 200)
        await asyncio.to_thread(secure_kafka.remove_acl, acl)
        try:
            # before any publish: readiness asks the broker what ingest may do
            detail = await readyz_is(client, ingest, 503, line, timeout=30)
            assert re.search(r"\((TOPIC_AUTHORIZATION_FAILED|no Write among its authorized operations)\)$",
                             detail), detail
            r = await client.post(f"{ingest.url}/v1/events", content=orjson.dumps(announcement(before)),
                                  headers=headers)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json"), r.headers
            assert line in r.json()["detail"], r.json()
        finally:
            await asyncio.to_thread(secure_kafka.restore_acl, acl)
        await readyz_is(client, ingest, 200, timeout=30)
        r = await client.post(f"{ingest.url}/v1/events", content=orjson.dumps(announcement(after)),
                              headers=headers)
        assert r.status_code == 202, r.text
    written = await read_topic(admin, f"{prefix}announcements", expect=1, timeout=30)
    assert [orjson.loads(r.value or b"{}")["id"] for r in written] == [after]
    log = ingest.log()
    assert 1 <= len(refusal_lines(log, line)) <= 2, log[-4000:]
    _no_traceback(ingest)


async def test_insights_route_without_read_on_enriched_events_waits_and_routes_after(
        secure_kafka: SecuredKafka, services: Callable[..., Service]) -> None:
    """insights' Read on enriched-events taken away: its route names the ACL in one line and
    on ``/readyz`` (503); the ACL back, the event enriched meanwhile becomes facts on
    insights-facts, without a restart."""
    prefix = await fresh_prefix(secure_kafka)
    admin = secure_kafka.settings(ADMIN, prefix)
    acl = secure_kafka.acl("anting-insights", "topic", f"{prefix}enriched-events", "READ")
    line = f"kafka: User:anting-insights may not Read Topic:{prefix}enriched-events (TOPIC_AUTHORIZATION_FAILED)"
    enrich, insights = services("enrich", prefix), services("insights", prefix)
    before = f"refused-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=10) as client:
        await readyz_is(client, enrich, 200)
        await readyz_is(client, insights, 200, timeout=120)
        await asyncio.to_thread(secure_kafka.remove_acl, acl)
        try:
            await readyz_is(client, insights, 503, line, timeout=60)
            await produce(admin, f"{prefix}announcements", [orjson.dumps(announcement(before))], [before.encode()])
            got = await read_topic(admin, f"{prefix}enriched-events", expect=1, timeout=60)
            assert [orjson.loads(r.value or b"{}")["id"] for r in got] == [before]
        finally:
            await asyncio.to_thread(secure_kafka.restore_acl, acl)
        await readyz_is(client, insights, 200, timeout=90)
    facts = await read_topic(admin, f"{prefix}insights-facts", timeout=60, idle=3.0)
    assert facts and {fact.id for f in facts for fact in decode_facts(f.value or b"{}")} == {before}, facts
    log = insights.log()
    assert 1 <= len(refusal_lines(log, line)) <= 2, log[-4000:]
    _no_traceback(insights)


async def test_a_topic_refused_before_the_member_joins_is_a_refusal_not_an_idle_loop(
        secure_kafka: SecuredKafka) -> None:
    """Read on the topic taken away before the consumer joins its group: aiokafka marks the
    topic unauthorized in its metadata, the group assigns the member no partition and every
    poll comes back empty, raising nothing. The stage runner calls that a refusal (the line, the
    readiness reason) and, the ACL back, joins again with the partitions and reads."""
    prefix = await fresh_prefix(secure_kafka)
    admin = secure_kafka.settings(ADMIN, prefix)
    notify = secure_kafka.settings("anting-notify", prefix)
    topic = f"{prefix}enriched-events"
    marker = uuid.uuid4().hex.encode()
    await produce(admin, topic, [marker])
    acl = secure_kafka.acl("anting-notify", "topic", topic, "READ")
    await asyncio.to_thread(secure_kafka.remove_acl, acl)
    line = f"kafka: User:anting-notify may not Read Topic:{topic} (TOPIC_AUTHORIZATION_FAILED)"
    got: list[bytes] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        got.append(record.value or b"")

    # the group is anting-notify-join-...: the stage's group under no topic prefix
    stage = replace(concurrent_stage(notify, topic, "", name="events"),
                    group=f"anting-notify-join-{uuid.uuid4().hex[:6]}")
    access = AccessStatus()
    runner = StageRunner(stage, notify, handler, access=access)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        try:
            await wait_until(lambda: access.reason == line, 60, f"the refusal {line!r}")
            assert got == [] and not runner.assignment()
        finally:
            await asyncio.to_thread(secure_kafka.restore_acl, acl)
        await wait_until(lambda: got == [marker] and access.reason is None, 90, "the record read once allowed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
