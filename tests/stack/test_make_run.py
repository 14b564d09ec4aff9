"""`anting run` (what `make run` runs) end to end on the session broker, on test ports:
the seed enriched and notified, Prometheus scraping every stage, a killed service
restarted with the stream going on, and Ctrl-C leaving nothing running.

The tests share one running stack (starting it is the expensive part) and run in
file order; the last one stops it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from devtools.console import readable
from devtools.localkafka import free_port, port_open
from devtools.stack import SEED
from devtools.testing import produce, read_topic, settings_for
from services.enrich.catalog import shipped
from services.enrich.gazetteer import Gazetteer
from services.enrich.reports import read_document
from services.ingest.documents import content_id
from shared.documents import Document
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS, DEAD_LETTERS, ENRICHED_EVENTS, NOTIFICATIONS
from shared.where import DEFAULT_PORTS
from tests.stack.promql import BUILT_IN, queried_names, sample_names

pytestmark = pytest.mark.kafka

API_KEY = "stack-test-key"


def _seed_events() -> list[dict[str, Any]]:
    """The events enrich reads out of the seed article as ingest publishes it (event ids
    are the document's id, a hash of its text, and a rank: the same in the stack)."""
    text = SEED.read_text(encoding="utf-8")
    doc = Document(id=content_id(text), source="/anting/ingest", media_type="text/plain",
                   text=text, received_at=datetime.now(UTC))
    return read_document(doc, Gazetteer(shipped())).events


SEED_EVENTS = _seed_events()
SEED_IDS = [e["id"] for e in SEED_EVENTS]
SEED_AGREEMENTS = [e["id"] for e in SEED_EVENTS if e["type"] == "agreement.signed"]
# what `anting run` says once ingest has the seed article
SEED_ACCEPTED = r"ingest accepted the article as document doc-"


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    settings: AntingSettings
    ports: dict[str, int]
    log_path: Path
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def output(self) -> str:
        with self.lock:
            return "\n".join(self.lines)

    def wait_for(self, what: str | Callable[[str], bool], timeout: float = 120.0) -> str:
        """Wait until the output contains ``what`` (a regex) or the predicate holds."""
        check = what if callable(what) else (lambda out: re.search(what, out) is not None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if check(out):
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = "\n".join(self.output().splitlines()[-60:])
        raise AssertionError(f"`anting run` did not show {what!r} (exit {self.proc.poll()}):\n{tail}")

    def service_pid(self, name: str) -> int:
        for child in psutil.Process(self.proc.pid).children():
            with_args = child.cmdline()
            if with_args[-2:] == ["serve", name]:
                return int(child.pid)
        raise AssertionError(f"no `anting serve {name}` child of `anting run`")


def _free_offset() -> int:
    """An ANTING_PORT_OFFSET whose service and Prometheus ports are all free now."""
    rng = random.Random()
    while True:
        offset = rng.randrange(20000, 40000)
        if not any(port_open(DEFAULT_PORTS[n] + offset)
                   for n in ("ingest", "enrich", "notify", "insights", "prometheus")):
            return offset


def _pump(stack: Stack) -> None:
    assert stack.proc.stdout is not None
    with open(stack.log_path, "ab") as log:
        for raw in stack.proc.stdout:
            log.write(raw)
            log.flush()
            with stack.lock:
                stack.lines.append(raw.decode(errors="replace").rstrip("\n"))


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`anting run` on the session broker with a topic prefix, groups and ports of its own:
    the ports moved together by the one knob, ANTING_PORT_OFFSET."""
    tmp = tmp_path_factory.mktemp("stack")
    prefix = f"stack{uuid.uuid4().hex[:8]}."
    offset = _free_offset()
    ports = {name: DEFAULT_PORTS[name] + offset for name in ("ingest", "enrich", "notify", "insights", "prometheus")}
    env = dict(os.environ)
    env.pop("ANTING_NOTIFY_ALLOW_NETWORKS", None)  # `anting run` allows loopback itself
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ANTING_TOPIC_PREFIX": prefix,
        "ANTING_ENRICH_GROUP": f"{prefix}enrich",
        "ANTING_NOTIFY_GROUP": f"{prefix}notify",
        "ANTING_PORT_OFFSET": str(offset),
        "ANTING_RUN_SCRAPE_INTERVAL": "1",
        "ANTING_RUN_STATE_DIR": str(tmp / "state"),
        "ANTING_API_KEYS": API_KEY,
        "PYTHONUNBUFFERED": "1",
    })
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "anting"), "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    st = Stack(proc, env, settings_for(kafka_bootstrap, prefix), ports, tmp / "anting-run.log")
    threading.Thread(target=_pump, args=(st,), daemon=True).start()
    try:
        yield st
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _records(records: list[Any]) -> list[dict[str, Any]]:
    """The JSON values (a poison record another test wrote is left out)."""
    out = []
    for r in records:
        try:
            out.append(orjson.loads(r.value or b""))
        except orjson.JSONDecodeError:
            continue
    return out


async def test_seed_is_enriched_and_notified(stack: Stack) -> None:
    """The seed article goes through ingest's API; the events enrich reads out of it come out
    enriched, and are delivered to the demo log subscription (every event) and the signed
    local webhook (agreements)."""
    assert SEED_AGREEMENTS, "the seed article reports its agreement"
    stack.wait_for(SEED_ACCEPTED, timeout=150)
    enriched = _records(await read_topic(
        stack.settings, stack.settings.topic(ENRICHED_EVENTS), expect=len(SEED_IDS), timeout=90))
    assert sorted(e["id"] for e in enriched) == sorted(SEED_IDS)
    assert all("enrichment" in e["data"] for e in enriched)
    assert any(o.get("resolved") for e in enriched for o in e["data"].get("organizations", []))

    want = len(SEED_IDS) + len(SEED_AGREEMENTS)
    delivered: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = _records(await read_topic(stack.settings, stack.settings.topic(NOTIFICATIONS), idle=1.0))
        delivered = [r for r in records if r["outcome"] == "delivered"]
        if len({(r["channel"], r["event_id"]) for r in delivered}) >= want:
            break
    by_channel = {ch: {r["event_id"] for r in delivered if r["channel"] == ch} for ch in ("log", "webhook")}
    assert by_channel["log"] == set(SEED_IDS)
    assert by_channel["webhook"] == set(SEED_AGREEMENTS)

    # and the newcomer saw it: labelled service lines, each event, each delivery, the webhook
    out = stack.wait_for(lambda o: all(f"enriched {t}" in o for t in ("conference.announcement", "agreement.signed"))
                         and o.count("signature ok") >= len(SEED_AGREEMENTS)
                         and "Ctrl-C stops everything this started." in o)
    for service in ("ingest", "enrich", "notify"):
        assert re.search(rf"^\s*{service} │ ", out, re.M), f"no labelled {service} lines"
    for event_id in SEED_IDS:
        assert f" {event_id}:" in out  # the `enriched <type> <id>: ...` line
    assert "BAD SIGNATURE" not in out
    assert f"{stack.url('ingest')}/docs" in out and f"127.0.0.1:{stack.ports['prometheus']}" in out


def test_insights_prints_anting_towns_partners_after_the_seed(stack: Stack) -> None:
    """After the seed, `anting run` prints `anting insights partners anting-town-government`
    (the seed's agreement, resolved) and the week's most active organizations."""
    out = stack.wait_for(lambda o: "$ anting insights top --window week" in o
                         and "Most active organizations (week)" in o, timeout=150)
    assert "$ anting insights partners anting-town-government" in out
    assert "Anting Town" in out and "latest agreement:" in out
    doc = httpx.get(f"http://127.0.0.1:{stack.ports['insights']}/v1/organizations/anting-town-government/partners",
                    headers={"authorization": f"Bearer {API_KEY}"}, timeout=10).json()
    assert doc["latest_agreement"]["id"] in SEED_AGREEMENTS


def test_a_command_in_another_terminal_finds_the_stack_through_its_profile(stack: Stack) -> None:
    """With none of the stack's variables (no offset, no broker, no prefix), `anting` finds
    the running stack through the profile `anting run` wrote: notify's and insights' APIs,
    and the broker with the topic prefix."""
    stack.wait_for(r"where this stack is: ", timeout=150)
    stack.wait_for(SEED_ACCEPTED, timeout=150)
    state = stack.env["ANTING_RUN_STATE_DIR"]
    profile = Path(state).resolve() / "stack.env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTING_", "KAFKA_"))}
    env.update({"ANTING_RUN_STATE_DIR": state, "ANTING_API_KEY": API_KEY, "COLUMNS": "200"})
    anting = str(Path(sys.executable).parent / "anting")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([anting, *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"anting {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    where = run("where").stdout
    assert f"{stack.url('notify')}  " in where and f"(profile {profile})" in where
    assert stack.settings.kafka.bootstrap_servers in where
    assert run("where", "ingest").stdout == stack.url("ingest") + "\n"
    assert "make-run" in run("subscriptions", "list").stdout
    run("insights", "partners", "anting-town-government")
    described = run("topics", "describe", stack.settings.topic(ENRICHED_EVENTS))
    assert f"on broker {stack.settings.kafka.bootstrap_servers}" in described.stderr


def _query(stack: Stack, expr: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/query",
                     params={"query": expr}, timeout=10)
    resp.raise_for_status()
    result: list[dict[str, Any]] = resp.json()["data"]["result"]
    return result


def test_prometheus_scrapes_every_stage(stack: Stack) -> None:
    """The Prometheus `anting run` started scrapes all three services: each stage's counters
    and the end-to-end histogram are queryable through its HTTP API."""
    stack.wait_for(r"ingest accepted", timeout=150)
    queries = {
        "up": 'sum(up{job=~"ingest|enrich|notify"})',
        "ingest": 'sum(anting_ingest_events_total{job="ingest", outcome="accepted"})',
        "enrich": 'sum(anting_enrich_events_total{job="enrich", outcome="enriched"})',
        "orgs": 'sum(anting_enrich_organizations_total{job="enrich", outcome="resolved"})',
        "notify": 'sum(anting_notify_deliveries_total{job="notify", outcome="delivered"})',
        "stage": 'count(anting_stage_seconds_bucket) > 0',
        "end_to_end": 'sum(anting_end_to_end_seconds_bucket{job="notify", le="+Inf"})',
    }
    # the seed is one article: ingest accepts one document, enrich the events read from it
    want = {"up": 3, "ingest": 1, "enrich": len(SEED_IDS), "orgs": 1,
            "notify": len(SEED_IDS), "stage": 1, "end_to_end": len(SEED_IDS)}
    got: dict[str, float] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for name, expr in queries.items():
            result = _query(stack, expr)
            got[name] = float(result[0]["value"][1]) if result else 0.0
        if all(got[k] >= want[k] for k in want):
            break
        time.sleep(1)
    assert all(got[k] >= want[k] for k in want), f"Prometheus saw {got}, wanted at least {want}"
    stages = {r["metric"].get("stage") for r in _query(stack, "sum by (stage) (anting_stage_seconds_count)")}
    assert len(stages - {None}) >= 2, stages
    rules = httpx.get(f"http://127.0.0.1:{stack.ports['prometheus']}/api/v1/rules", timeout=10).json()
    loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert "AntingStageDown" in loaded and "AntingDeadLetters" in loaded


async def test_services_export_every_metric_the_dashboard_and_alerts_query(stack: Stack) -> None:
    """Scraping the running services' /metrics (after poison records make dead letters at
    enrich and notify) finds every metric name a Grafana panel or an alert rule queries."""
    stack.wait_for(r"ingest accepted", timeout=150)
    await produce(stack.settings, stack.settings.topic(ANNOUNCEMENTS), [b"{not json"], [b"poison"])
    await produce(stack.settings, stack.settings.topic(ENRICHED_EVENTS), [b"{not json"], [b"poison"])
    letters = await read_topic(stack.settings, stack.settings.topic(DEAD_LETTERS), expect=2, timeout=60)
    assert len(letters) >= 2, "the poison records did not all reach dead-letters"
    exported: set[str] = set(BUILT_IN)
    deadline = time.monotonic() + 30
    needed = set().union(*queried_names().values())
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            exported = set(BUILT_IN)
            for service in ("ingest", "enrich", "notify", "insights"):
                exported |= sample_names((await client.get(f"{stack.url(service)}/metrics")).text)
            if needed <= exported:
                break
            await asyncio.sleep(0.5)
    assert needed <= exported, f"queried but not exported: {sorted(needed - exported)}"
    # and the dead-letter alert sees both poison records, each counted by its stage
    deadline = time.monotonic() + 30
    stages: set[str | None] = set()
    while time.monotonic() < deadline and not {"enrich", "notify"} <= stages:
        stages = {r["metric"].get("stage") for r in _query(stack, "anting_dead_letters_total > 0")}
        await asyncio.sleep(1)
    assert {"enrich", "notify"} <= stages, stages


async def test_killed_service_is_restarted_and_the_stream_goes_on(stack: Stack) -> None:
    """SIGKILL enrich's process: `anting run` says so, starts it again, and events published
    afterwards (with the API key) are still enriched and notified."""
    stack.wait_for(r"ingest accepted", timeout=150)
    old = stack.service_pid("enrich")
    os.kill(old, signal.SIGKILL)
    stack.wait_for(rf"enrich \(pid {old}\) killed by SIGKILL; restarting", timeout=30)
    stack.wait_for(r"restarted enrich \(pid \d+, restart #1\)", timeout=30)
    assert stack.service_pid("enrich") != old

    ids = [f"after-kill-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    body = b"".join(orjson.dumps({
        "specversion": "1.0", "id": i, "source": "/tests/stack", "type": "agreement.signed",
        "data": {"title": "Anting Town signs again", "organizations": [{"name": "Anting Town Government"}]},
    }) + b"\n" for i in ids)
    headers = {"content-type": "application/x-ndjson", "authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=30) as client:
        unauthorised = await client.post(f"{stack.url('ingest')}/v1/events", content=body,
                                         headers={"content-type": "application/x-ndjson"})
        assert unauthorised.status_code == 401  # ANTING_API_KEYS reached the child
        accepted = await client.post(f"{stack.url('ingest')}/v1/events", content=body, headers=headers)
        assert accepted.status_code == 202, accepted.text

    out = stack.wait_for(lambda o: all(f"enriched agreement.signed {i}:" in o for i in ids), timeout=120)
    stack.wait_for(lambda o: all(re.search(rf"delivered via webhook event={i} ", o) for i in ids), timeout=60)
    enriched = _records(await read_topic(stack.settings, stack.settings.topic(ENRICHED_EVENTS), idle=1.0))
    counts = {i: sum(1 for e in enriched if e["id"] == i) for i in ids}
    assert counts == dict.fromkeys(ids, 1), counts  # exactly once across the restart
    assert "restarted enrich" in out


def _running(p: psutil.Process) -> bool:
    """Alive and not a zombie (an exited child not yet reaped by its new parent)."""
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_ctrl_c_stops_everything_it_started(stack: Stack) -> None:
    """SIGINT (Ctrl-C) stops every process `anting run` started; none is left running."""
    stack.wait_for(r"ingest accepted", timeout=150)
    started = psutil.Process(stack.proc.pid).children(recursive=True)
    names = {" ".join(p.cmdline()[-2:]) for p in started}
    assert {"serve ingest", "serve enrich", "serve notify"} <= names
    assert any("prometheus" in p.name() for p in started)
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(90) == 0
    stack.wait_for(r"stopped; nothing left running", timeout=5)
    left = [p for p in started if _running(p)]
    assert not left, f"still running: {left}"
    for port in stack.ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    # and the profile saying where the stack was is gone with it
    assert not (Path(stack.env["ANTING_RUN_STATE_DIR"]) / "stack.env").exists()


def test_sigkill_of_make_run_takes_every_child_along(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Even `kill -9` of `anting run` leaves nothing 15 s later, insights included (it used
    to hang in faust's shutdown): each child gets the parent-death signal, and each
    service's stop is bounded."""
    prefix = f"stackkill{uuid.uuid4().hex[:8]}."
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "ANTING_TOPIC_PREFIX": prefix,
        "ANTING_ENRICH_GROUP": f"{prefix}enrich", "ANTING_NOTIFY_GROUP": f"{prefix}notify",
        "ANTING_INGEST_PORT": str(free_port()), "ANTING_ENRICH_PORT": str(free_port()),
        "ANTING_NOTIFY_PORT": str(free_port()), "ANTING_INSIGHTS_PORT": str(free_port()),
        "ANTING_RUN_PROMETHEUS_PORT": str(free_port()),
        "ANTING_RUN_STATE_DIR": str(tmp_path / "state"), "ANTING_RUN_SEED": str(tmp_path / "none.ndjson"),
        "PYTHONUNBUFFERED": "1",
    })
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "anting"), "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    st = Stack(proc, env, settings_for(kafka_bootstrap, prefix), {}, tmp_path / "run.log")
    threading.Thread(target=_pump, args=(st,), daemon=True).start()
    try:
        st.wait_for(r"Ctrl-C stops everything this started", timeout=150)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4, children  # the services and Prometheus
        names = {" ".join(p.cmdline()[-2:]) for p in children}
        assert {"serve ingest", "serve enrich", "serve notify", "serve insights"} <= names, names
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while (alive := [p for p in children if _running(p)]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not alive, f"still running after kill -9 of `anting run`: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_child_json_logs_read_as_one_labelled_line() -> None:
    """A service's JSON log line is shown as `level message key=value`; other lines pass as they are."""
    line = orjson.dumps({"ts": "t", "level": "info", "service": "enrich", "logger": "x",
                         "msg": "catalog loaded", "organizations": 136}).decode()
    assert readable(line) == "info  catalog loaded  organizations=136"
    assert readable("plain text") == "plain text"
