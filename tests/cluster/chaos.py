"""The chaos run: the pipeline on a 3-node cluster under load while a nemesis kills
brokers, enrich and notify instances, with a concurrent ``read_committed`` reader
throughout and a final one after the drain; ``devtools.checker`` judges the history.

The load is open-loop: most events go from a raw producer straight into the input topics,
the rest through ingest's HTTP API in small batches, retried with the same events on a 503
(as a client would: ingest answers 503 while no in-sync leader takes the write). Two
notify instances deliver every enriched event to a webhook receiver in this process; the
checker wants every (event, subscription) pair delivered, a repeat only under the
``webhook-id`` of the first attempt.

The fault schedule follows Kafka's own ``tests/kafkatest/tests/core/transactions_test.py``
(copy a topic transactionally while bouncing brokers, clean or hard, and the copiers
themselves, then check that the output has every input once): here the copier is enrich.
``make chaos-cluster`` runs it at full size (``python -m tests.cluster.chaos``); the suite
runs a small one (tests/cluster/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from devtools.checker import Delivery, Input, Output, Report, check, check_deliveries
from devtools.localkafka import LocalCluster, cluster_brokers, free_port, port_open
from devtools.testing import ServiceProcess, settings_for
from services.notify.notification import idempotency_key
from shared.kafka import ensure_topics, make_admin, make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS
from tests.notify.helpers import Receiver
from tests.notify.test_kill import _subscribe

__all__ = ["Faults", "Outcome", "run_chaos"]

SESSION_MS = 6000  # enrich's session timeout here: a SIGSTOPped one is a zombie after this
HTTP_BATCH = 10  # events per POST /v1/events
HTTP_GIVE_UP_S = 120.0  # a client stops retrying a batch after this long


@dataclass
class Faults:
    """How many of each fault the nemesis injects, at random moments of the load."""

    broker_kills: int = 5
    broker_clean_stops: int = 2
    enrich_kills: int = 10
    enrich_pauses: int = 1
    notify_kills: int = 5


@dataclass
class Outcome:
    """The checker's report, what the nemesis did (one line per fault), what the raw
    producer had to send again, what ingest's HTTP clients saw (requests, 503
    problem+json answers, other failures, batches given up; whether every ingest instance
    still runs, never restarted) and the timings."""

    report: Report
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0
    drain_seconds: float = 0.0
    http_events: int = 0
    http_requests: int = 0
    http_503: int = 0
    http_other_failures: int = 0
    http_given_up: int = 0
    ingest_alive: bool = False
    raw_events: int = 0
    raw_resent: int = 0
    raw_given_up: int = 0

    def http_summary(self) -> str:
        """One line: what the raw producer and the HTTP clients sent, what ingest answered."""
        return (f"{self.raw_events} events by the raw producer ({self.raw_resent} sends failed "
                f"and were sent again, {self.raw_given_up} given up); "
                f"{self.http_events} events over HTTP in {self.http_requests} requests: "
                f"{self.http_503} answered 503 problem+json and were retried, "
                f"{self.http_other_failures} other failures, {self.http_given_up} batches given up; "
                f"ingest {'ran throughout, never restarted' if self.ingest_alive else 'DIED'}")


def _event(n: int) -> tuple[bytes, dict[str, object]]:
    """Event ``n``: keyed by one of 50 subjects (so per-key order is checked), alternating
    announcements and agreements."""
    subject = f"chaos-subject-{n % 50}"
    if n % 2:
        doc: dict[str, object] = {
            "specversion": "1.0", "id": f"chaos-{n:07d}", "source": "/chaos", "type": "agreement.signed",
            "subject": subject, "data": {"title": f"agreement {n}", "organizations": [{"name": "SAIC Motor"}]}}
    else:
        doc = {"specversion": "1.0", "id": f"chaos-{n:07d}", "source": "/chaos",
               "type": "conference.announcement", "subject": subject,
               "data": {"headline": f"forum {n}", "kind": "forum"}}
    return subject.encode(), doc


class Enrich:
    """One enrich instance with a stable instance id (its transactional id), restartable."""

    def __init__(self, settings: AntingSettings, tmp: Path, n: int) -> None:
        self.name = f"enrich-{n}"
        self.service = ServiceProcess(
            "enrich", settings, tmp / f"{self.name}.log",
            ANTING_ENRICH_PORT=str(free_port()), ANTING_ENRICH_GROUP=f"{settings.topic_prefix}enrich",
            ANTING_ENRICH_INSTANCE_ID=f"chaos-{n}", ANTING_ENRICH_SESSION_TIMEOUT_MS=str(SESSION_MS),
        )

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid


class Notify:
    """One notify instance of the shared group, allowed to reach the loopback receiver."""

    def __init__(self, settings: AntingSettings, tmp: Path, n: int) -> None:
        self.name = f"notify-{n}"
        self.service = ServiceProcess(
            "notify", settings, tmp / f"{self.name}.log",
            ANTING_NOTIFY_PORT=str(free_port()), ANTING_NOTIFY_GROUP=f"{settings.topic_prefix}notify",
            ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_NOTIFY_SESSION_TIMEOUT_MS=str(SESSION_MS),
            ANTING_NOTIFY_COMMIT_INTERVAL_SECONDS="0.5", ANTING_NOTIFY_RETRY_TIME_SCALE="10",
        )

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid


async def _reader(settings: AntingSettings, seen: list[Output], stop: asyncio.Event) -> None:
    """A read_committed reader of enriched-events from the start until ``stop``."""
    topic = settings.topic(ENRICHED_EVENTS)
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(ENRICHED_EVENTS.partitions)])
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batch.values():
                for r in records:
                    doc = orjson.loads(r.value or b"{}")
                    seen.append(Output((doc.get("source", ""), doc.get("id", "")), r.key or b"",
                                       r.partition, r.offset))
    finally:
        await consumer.stop()


async def _read_inputs(settings: AntingSettings) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Where each input event landed: every (partition, offset) of it in its input topic
    (a batch retried after a 503 may have been written twice: nothing was known)."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for t in (ANNOUNCEMENTS, AGREEMENTS):
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            tps = [TopicPartition(settings.topic(t), p) for p in range(t.partitions)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for r in records:
                        doc = orjson.loads(r.value or b"{}")
                        out.setdefault((doc["source"], doc["id"]), []).append((r.partition, r.offset))
        finally:
            await consumer.stop()
    return out


async def _final(settings: AntingSettings, want: int, quiet: float) -> list[Output]:
    """Read enriched-events until ``want`` records or nothing new for ``quiet`` seconds."""
    seen: list[Output] = []
    stop = asyncio.Event()
    task = asyncio.create_task(_reader(settings, seen, stop))
    last, n = time.monotonic(), 0
    while len(seen) < want and time.monotonic() - last < quiet:
        await asyncio.sleep(0.5)
        if len(seen) != n:
            last, n = time.monotonic(), len(seen)
    await asyncio.sleep(1.0)  # more than wanted is a finding too
    stop.set()
    await task
    return seen


def _delivery(body: bytes, headers: dict[str, str], subscription: str) -> Delivery:
    """What the receiver got: the event (from the CloudEvent body, else its ``ce-`` headers)
    for ``subscription`` under its ``webhook-id``."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = {}
    source = doc.get("source") if isinstance(doc, dict) else None
    event_id = doc.get("id") if isinstance(doc, dict) else None
    return Delivery((str(source or lower.get("ce-source", "")), str(event_id or lower.get("ce-id", ""))),
                    subscription, lower.get("webhook-id", ""))


async def run_chaos(cluster: LocalCluster, tmp: Path, events: int, faults: Faults, *,
                    rate: float = 400.0, http_share: float = 0.25, ingest_instances: int = 1,
                    seed: int | None = None, log: bool = False) -> Outcome:
    """Run 2 enrich and 2 notify instances and ``ingest_instances`` ingest on ``cluster``
    while ``events`` events are published at about ``rate`` per second (``http_share`` of
    them through ingest's HTTP API, the rest by a raw producer) and ``faults`` are injected
    at random moments (``seed`` fixes them); drain, read everything back and check it, the
    webhook deliveries included. Broker faults pick the leader of the transaction
    coordinator's or the group coordinator's partition first."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    settings = settings_for(cluster.bootstrap, prefix=f"chaos{rnd.randrange(1 << 30):x}.")
    await ensure_topics(settings)
    from services.enrich import catalog

    await catalog.write(settings, upserts=catalog.shipped())
    receiver = await Receiver().start()
    [(subscription, _)] = await _subscribe(
        settings, [{"name": "chaos-hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}}])
    enrich = [Enrich(settings, tmp, n) for n in (1, 2)]
    notify = [Notify(settings, tmp, n) for n in (1, 2)]
    ingest_ports = [free_port() for _ in range(ingest_instances)]
    ingest = [ServiceProcess("ingest", settings, tmp / f"ingest-{i + 1}.log", ANTING_INGEST_PORT=str(port))
              for i, port in enumerate(ingest_ports)]
    for s in [*(e.service for e in enrich), *(n.service for n in notify), *ingest]:
        s.start()
    outcome = Outcome(Report())

    def say(line: str) -> None:
        outcome.faults.append(f"{time.monotonic() - t0:6.1f}s {line}")
        if log:
            print(outcome.faults[-1], file=sys.stderr, flush=True)

    async with httpx.AsyncClient(timeout=10) as client:
        for port in ingest_ports:  # the load starts once every ingest answers
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ingest on port {port} not ready in 60s")
                await asyncio.sleep(0.2)

    concurrent: list[Output] = []
    stop_reader = asyncio.Event()
    reader = asyncio.create_task(_reader(settings, concurrent, stop_reader))
    acked: dict[int, bool] = {}
    keys: dict[int, bytes] = {}
    http_every = round(1 / http_share) if http_share > 0 else 0

    async def post(client: httpx.AsyncClient, batch: list[int]) -> None:
        """POST ``batch`` to an ingest until a 202, retrying the same events after a 503
        (its Retry-After) or a failed request, for up to ``HTTP_GIVE_UP_S``."""
        body = orjson.dumps([_event(n)[1] for n in batch])
        give_up = time.monotonic() + HTTP_GIVE_UP_S
        attempt = 0
        while True:
            port = ingest_ports[(batch[0] // HTTP_BATCH + attempt) % len(ingest_ports)]
            attempt += 1
            outcome.http_requests += 1
            wait = 1.0
            try:
                resp = await client.post(f"http://127.0.0.1:{port}/v1/events", content=body,
                                         headers={"content-type": "application/cloudevents-batch+json"})
                if resp.status_code == 202:
                    for n in batch:
                        acked[n] = True
                    return
                if resp.status_code == 503 and resp.headers.get("content-type", "").startswith(
                        "application/problem+json"):
                    outcome.http_503 += 1
                    wait = float(resp.headers.get("retry-after", "1"))
                else:
                    outcome.http_other_failures += 1
                    say(f"ingest answered {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                outcome.http_other_failures += 1
                say(f"ingest request failed: {exc!r}")
            if time.monotonic() + wait > give_up:
                outcome.http_given_up += 1
                for n in batch:
                    acked[n] = False
                return
            await asyncio.sleep(wait)

    async def send(producer: AIOKafkaProducer, n: int, value: bytes, key: bytes) -> None:
        """Produce event ``n`` until the cluster acknowledges it, sending it again after a
        failed send (a timeout, NOT_ENOUGH_REPLICAS past the producer's own retries), as a
        client would, for up to ``HTTP_GIVE_UP_S``."""
        topic = settings.topic(AGREEMENTS if n % 2 else ANNOUNCEMENTS)
        give_up = time.monotonic() + HTTP_GIVE_UP_S
        while True:
            try:
                await (await producer.send(topic, value, key=key))
                acked[n] = True
                return
            except KafkaError:
                outcome.raw_resent += 1
                if time.monotonic() + 1 > give_up:
                    outcome.raw_given_up += 1
                    acked[n] = False
                    return
                await asyncio.sleep(1)

    async def load() -> None:
        producer = make_producer(settings, linger_ms=10)
        await producer.start()
        posts: list[asyncio.Task[None]] = []
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                start = time.monotonic()
                raw: list[asyncio.Task[None]] = []
                batch: list[int] = []
                for n in range(events):
                    key, doc = _event(n)
                    keys[n] = key
                    if http_every and (n // HTTP_BATCH) % http_every == 0:
                        outcome.http_events += 1
                        batch.append(n)
                        if len(batch) == HTTP_BATCH or n == events - 1:
                            posts.append(asyncio.create_task(post(client, batch)))
                            batch = []
                    else:
                        outcome.raw_events += 1
                        raw.append(asyncio.create_task(send(producer, n, orjson.dumps(doc), key)))
                    ahead = start + n / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if batch:
                    posts.append(asyncio.create_task(post(client, batch)))
                await asyncio.gather(*raw, *posts)
        finally:
            await producer.stop()

    async def coordinator_leader(kind: int) -> int | None:
        admin = make_admin(settings)
        await admin.start()
        try:
            name = f"{settings.topic_prefix}enrich" if kind == 0 else f"{settings.topic_prefix}enrich-chaos-1"
            return int(await admin.find_coordinator(name, kind))
        except Exception:
            return None
        finally:
            await admin.close()

    duration = events / rate
    plan: list[tuple[float, str]] = []
    plan += [(rnd.uniform(0.1, 0.8) * duration, "broker-kill") for _ in range(faults.broker_kills)]
    plan += [(rnd.uniform(0.1, 0.8) * duration, "broker-stop") for _ in range(faults.broker_clean_stops)]
    plan += [(rnd.uniform(0.05, 0.9) * duration, "enrich-kill") for _ in range(faults.enrich_kills)]
    plan += [(rnd.uniform(0.1, 0.7) * duration, "enrich-pause") for _ in range(faults.enrich_pauses)]
    plan += [(rnd.uniform(0.05, 0.9) * duration, "notify-kill") for _ in range(faults.notify_kills)]
    plan.sort()

    async def nemesis(brokers: bool) -> None:
        """Inject the planned broker faults (``brokers``) or the service faults, one after
        another: two of these run side by side, so that a zombie's 9 s or a clean stop's
        hand-over does not push the other kind past the load."""
        broker_faults = 0
        begin = time.monotonic()
        for at, what in plan:
            if what.startswith("broker") != brokers:
                continue
            await asyncio.sleep(max(0.0, begin + at - time.monotonic()))
            if what.startswith("broker"):
                # first the transaction coordinator's leader, then the group coordinator's
                node = await coordinator_leader(1 if broker_faults % 2 == 0 else 0)
                node = node if node in (1, 2, 3) else rnd.choice([1, 2, 3])
                which = "transaction" if broker_faults % 2 == 0 else "group"
                broker_faults += 1
                if what == "broker-kill":
                    cluster.kill(node)
                    say(f"SIGKILL kafka-{node} (the {which} coordinator)")
                else:
                    await asyncio.to_thread(cluster.terminate, node)
                    say(f"SIGTERM kafka-{node} (the {which} coordinator), stopped cleanly")
                await asyncio.sleep(rnd.uniform(2, 6))
                cluster.restart(node)  # in this thread: see LocalKafka.launch
                say(f"restarted kafka-{node}")
                # the next broker fault waits for this one to be back in the cluster, as
                # Kafka's bounce does: killing one that is still starting tests nothing
                back = time.monotonic() + 60
                for _ in range(120):
                    if time.monotonic() > back or (port_open(cluster.node(node).port)
                                                   and node in await cluster_brokers(cluster.bootstrap)):
                        break
                    await asyncio.sleep(0.5)
                say(f"kafka-{node} registered again")
            elif what in ("enrich-kill", "notify-kill"):
                instance: Enrich | Notify = rnd.choice(enrich if what == "enrich-kill" else notify)
                instance.service.kill()
                say(f"SIGKILL {instance.name}")
                await asyncio.sleep(1)
                instance.service.start()
                say(f"restarted {instance.name} (pid {instance.pid})")
            else:
                e = rnd.choice(enrich)
                with contextlib.suppress(ProcessLookupError):
                    e.service.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                    say(f"SIGSTOP {e.name} for {SESSION_MS / 1000 + 3:.0f}s (a zombie)")
                    await asyncio.sleep(SESSION_MS / 1000 + 3)
                    e.service.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                    say(f"SIGCONT {e.name}")

    def delivered() -> list[Delivery]:
        return [_delivery(r.body, r.headers, subscription) for r in receiver.on("/hook")]

    try:
        await asyncio.gather(load(), nemesis(brokers=True), nemesis(brokers=False))
        drain0 = time.monotonic()
        positions = await _read_inputs(settings)
        inputs: list[Input] = []
        for n in range(events):
            event = ("/chaos", f"chaos-{n:07d}")
            copies = positions.get(event) or [(None, None)]
            inputs += [Input(event, keys[n], acked.get(n, False), p, o) for p, o in copies]
        final = await _final(settings, sum(len(c) for c in positions.values()), quiet=60)
        wanted = {(o.event, subscription) for o in final}
        last, count = time.monotonic(), 0
        while time.monotonic() - last < 60:  # every pair, or a minute with no new delivery
            got = {(d.event, d.subscription) for d in delivered()}
            if wanted <= got:
                break
            if len(got) != count:
                last, count = time.monotonic(), len(got)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # a late repeat is a finding too
        outcome.drain_seconds = time.monotonic() - drain0
        stop_reader.set()
        await reader
        outcome.report = check(inputs, final, concurrent)
        check_deliveries(outcome.report, wanted, delivered(),
                         expected=lambda event, sub: idempotency_key(event[0], event[1], sub))
        outcome.ingest_alive = all(s.proc is not None and s.proc.poll() is None for s in ingest)
    finally:
        stop_reader.set()
        for e in enrich:
            if e.service.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    e.service.proc.send_signal(signal.SIGCONT)
        for s in [*(e.service for e in enrich), *(n.service for n in notify), *ingest]:
            s.terminate(10)
        await receiver.stop()
    outcome.seconds = time.monotonic() - t0
    return outcome


def main() -> int:
    """``make chaos-cluster``: the full-size run on a fresh local cluster; prints the fault
    log, the checker's counts and the run time; exit 1 when an anomaly was found."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--broker-kills", type=int, default=5)
    ap.add_argument("--broker-stops", type=int, default=2, help="clean stops (SIGTERM) of brokers")
    ap.add_argument("--enrich-kills", type=int, default=10)
    ap.add_argument("--enrich-pauses", type=int, default=1)
    ap.add_argument("--notify-kills", type=int, default=5)
    ap.add_argument("--http-share", type=float, default=0.25, help="share of the events sent through ingest")
    ap.add_argument("--ingest", type=int, default=1, help="ingest instances")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--port", type=int, default=None,
                    help="the first of 3 consecutive client ports (free ones when not given)")
    args = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="cluster-chaos-"))
    ports = [args.port + i for i in range(3)] if args.port else None
    cluster = LocalCluster(3, ports=ports, data_dir=args.data_dir).start()
    try:
        outcome = asyncio.run(run_chaos(
            cluster, tmp, args.events,
            Faults(broker_kills=args.broker_kills, broker_clean_stops=args.broker_stops,
                   enrich_kills=args.enrich_kills, enrich_pauses=args.enrich_pauses,
                   notify_kills=args.notify_kills),
            rate=args.rate, http_share=args.http_share, ingest_instances=args.ingest,
            seed=args.seed, log=True))
    finally:
        cluster.stop()
    print(f"chaos-cluster: {outcome.report.summary()}")
    print(f"chaos-cluster: {outcome.http_summary()}")
    print(f"chaos-cluster: {len(outcome.faults)} faults, run {outcome.seconds:.0f}s "
          f"(drain {outcome.drain_seconds:.0f}s); service logs in {tmp}")
    return 0 if outcome.report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
