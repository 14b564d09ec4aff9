"""The fault matrix: every stage that writes, under each kind of answer a broker or the
machine can give, while events flow; ``devtools.checker`` judges each cell.

A cell is one enrich (exactly once, or at least once), one notify and one insights (its
route stage writes ``insights-facts``) on a broker of the run's own, a raw producer writing
events at a steady rate, and one fault in the middle:

- ``broker-pause``: the broker SIGSTOPped past the clients' request timeout
  (``KAFKA_REQUEST_TIMEOUT_MS``), then resumed: writes time out, the producers are replaced;
- ``service-pause``: enrich, then notify, then insights, SIGSTOPped past their session
  timeout (zombies whose partitions the group takes away), then resumed;
- ``limit-lowered``: ``enriched-events``' ``max.message.bytes`` lowered to 20 KB while an
  event whose enriched form is ~50 KB goes by among the others, then restored: the
  refused batch spends the idempotent producer's sequence numbers, later sends to that
  partition would fail ``OutOfOrderSequenceNumber`` on it;
- ``undecodable``: a record whose header name is not UTF-8 written into ``agreements`` and
  one into ``enriched-events``;
- ``coordinator-stop`` (on a 3-node cluster of the run's own): the broker that leads
  enrich's transaction coordinator stopped cleanly (SIGTERM) while transactions are open,
  then started again.

Result per cell: lost 0, duplicated 0 (exactly once), undelivered 0, aborted reads 0, the
records a fault makes unwritable or unreadable in ``dead-letters`` (and nothing else
there: the odd record of ``enriched-events`` once from notify and once from insights),
the groups' committed offsets at the end of their input, no restart loop ("is stuck" in
no log), and every answer of insights' API equal to a plain reader's recomputation from
``enriched-events`` (nothing of the stream lost or counted twice by its route). ``make chaos-faults`` runs it at full size
(``python -m tests.faults.matrix``); the suite runs a small cell (tests/faults/test_matrix.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from devtools.checker import Input, Report, check, check_deliveries
from devtools.localkafka import LocalCluster, LocalKafka, free_port
from devtools.testing import (
    ServiceProcess,
    produce_raw_header,
    set_topic_config,
    settings_for,
    wait_until,
)
from services.notify.notification import idempotency_key
from shared.deadletters import read_dead_letters
from shared.kafka import ensure_topics, make_admin, make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS, Topic
from tests.cluster.chaos import _delivery, _event, _final, _read_inputs
from tests.insights.helpers import differences, expected_from_topic, instance, ready
from tests.notify.helpers import Receiver
from tests.notify.test_kill import _subscribe

__all__ = ["FAULTS", "GUARANTEES", "Cell", "run_cell", "run_matrix"]

FAULTS = ("broker-pause", "service-pause", "limit-lowered", "undecodable", "coordinator-stop")
CLUSTER_FAULTS = ("coordinator-stop",)  # run on a 3-node cluster
GUARANTEES = ("exactly_once", "at_least_once")
SESSION_MS = 6000  # the services' session timeout here: paused longer, they are zombies
REQUEST_TIMEOUT_MS = 5000  # the services' request timeout here: the broker paused longer
BIG_ID = "faults-big"  # the event whose enriched form is over the lowered limit
# the names of the shipped catalog: each resolves to a record of a few hundred bytes
_RESOLVED = ["Anting Town Government", "SAIC Motor", "Tongji University", "China Simulation Federation"]


@dataclass
class Cell:
    """One cell's outcome: the checker's report, the dead letters' original ids, what
    the committed offsets lack of the input's end, and the faults as they happened."""

    fault: str
    guarantee: str
    report: Report = field(default_factory=Report)
    letters: list[str] = field(default_factory=list)
    expected_letters: list[str] = field(default_factory=list)
    uncommitted: dict[str, int] = field(default_factory=dict)
    stuck: list[str] = field(default_factory=list)
    #: insights' answers that differ from the recomputation from enriched-events
    insights: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No anomaly the guarantee rules out (duplicates allowed at least once)."""
        report = self.report
        anomalies = bool(report.lost or report.aborted_reads or report.unseen or report.undelivered
                         or report.webhook_id_changed)
        if self.guarantee == "exactly_once":
            anomalies = anomalies or bool(report.duplicated or report.order)
        return (not anomalies and sorted(self.letters) == sorted(self.expected_letters)
                and not any(self.uncommitted.values()) and not self.stuck and not self.insights)

    def row(self) -> str:
        """One line of the matrix table."""
        c = self.report.counts()
        return (f"| {self.fault} | {self.guarantee} | {c['inputs']} | {c['lost']} | {c['duplicated']} | "
                f"{c['undelivered']} | {len(self.letters)}/{len(self.expected_letters)} | "
                f"{sum(self.uncommitted.values())} | {len(self.insights)} | {'yes' if self.stuck else 'no'} | "
                f"{'ok' if self.ok else 'FAIL'} | {self.seconds:.0f}s |")


HEADER = ("| fault | enrich | inputs | lost | duplicated | undelivered | dead letters (seen/expected) "
          "| uncommitted | insights wrong | restart loop | result | time |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


async def _set_limit(settings: AntingSettings, topic: Topic, limit: int) -> None:
    await set_topic_config(settings, settings.topic(topic), {"max.message.bytes": str(limit)})


async def _uncommitted(settings: AntingSettings, group: str, topics: list[str]) -> dict[str, int]:
    """Per group: how many records of ``topics`` lie past its committed offsets (0: at the end)."""
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
        behind = 0
        for tp in tps:
            # the consumers commit their position, past a transaction's commit marker
            behind += max(0, ends[tp] - (await consumer.committed(tp) or 0))
        return {group: behind}
    finally:
        await consumer.stop()


async def run_cell(bootstrap: str, broker: LocalKafka | LocalCluster, tmp: Path, fault: str, guarantee: str, *,
                   events: int = 1000, rate: float = 100.0, pause: float | None = None,
                   log: bool = False) -> Cell:
    """Run one cell on ``broker`` (``bootstrap``) with its own topics; returns its :class:`Cell`.
    ``pause``: how long a paused broker or service stays stopped (s; default: just past the
    request or session timeout)."""
    cell = Cell(fault, guarantee)
    t0 = time.monotonic()

    def say(line: str) -> None:
        cell.log.append(f"{time.monotonic() - t0:6.1f}s {line}")
        if log:
            print(f"[{fault}/{guarantee}] {cell.log[-1]}", file=sys.stderr, flush=True)

    settings = settings_for(bootstrap, prefix=f"f{fault[:3]}{guarantee[:3]}{free_port()}.")
    await ensure_topics(settings)
    from services.enrich import catalog

    await catalog.write(settings, upserts=catalog.shipped())
    receiver = await Receiver().start()
    [(subscription, _)] = await _subscribe(
        settings, [{"name": "faults-hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}}])
    common = {"KAFKA_REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS)}
    enrich_group, notify_group = f"{settings.topic_prefix}enrich", f"{settings.topic_prefix}notify"
    enrich = ServiceProcess(
        "enrich", settings, tmp / f"{fault}-{guarantee}-enrich.log", **common,
        ANTING_ENRICH_PORT=str(free_port()), ANTING_ENRICH_GROUP=enrich_group,
        ANTING_ENRICH_GUARANTEE=guarantee, ANTING_ENRICH_INSTANCE_ID="faults-1",
        ANTING_ENRICH_SESSION_TIMEOUT_MS=str(SESSION_MS))
    notify = ServiceProcess(
        "notify", settings, tmp / f"{fault}-{guarantee}-notify.log", **common,
        ANTING_NOTIFY_PORT=str(free_port()), ANTING_NOTIFY_GROUP=notify_group,
        ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_NOTIFY_SESSION_TIMEOUT_MS=str(SESSION_MS),
        ANTING_NOTIFY_COMMIT_INTERVAL_SECONDS="0.5", ANTING_NOTIFY_RETRY_TIME_SCALE="10")
    insights, insights_url = instance(settings, tmp, f"{fault}-{guarantee}", **common)
    insights_group = f"{settings.topic_prefix}anting-insights-route"
    services = (("enrich", enrich), ("notify", notify), ("insights", insights))
    enrich.start()
    notify.start()
    insights.start()
    acked: dict[int, bool] = {}
    keys: dict[int, bytes] = {}
    injected = asyncio.Event()

    async def load() -> None:
        producer = make_producer(settings, linger_ms=10)
        await producer.start()
        try:
            start = time.monotonic()
            for n in range(events):
                key, doc = _event(n)
                keys[n] = key
                topic = settings.topic(AGREEMENTS if n % 2 else ANNOUNCEMENTS)
                while True:  # as a client would: again after a failed send
                    try:
                        await (await producer.send(topic, orjson.dumps(doc), key=key))
                        acked[n] = True
                        break
                    except KafkaError:
                        await asyncio.sleep(1)
                if n == events // 2:
                    injected.set()
                ahead = start + (n + 1) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await producer.stop()

    async def nemesis() -> None:
        await injected.wait()
        if fault == "coordinator-stop":
            assert isinstance(broker, LocalCluster)
            admin = make_admin(settings)
            await admin.start()
            try:  # enrich's transactional id is <group>-<instance id>
                node = int(await admin.find_coordinator(f"{enrich_group}-faults-1", 1))
            finally:
                await admin.close()
            await asyncio.to_thread(broker.terminate, node)
            say(f"SIGTERM kafka-{node} (enrich's transaction coordinator), stopped cleanly")
            await asyncio.sleep(5)
            broker.restart(node)
            say(f"restarted kafka-{node}")
        elif fault == "broker-pause":
            stopped = pause or REQUEST_TIMEOUT_MS / 1000 + 4
            assert isinstance(broker, LocalKafka) and broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            say(f"SIGSTOP the broker for {stopped:.0f}s (request timeout {REQUEST_TIMEOUT_MS} ms)")
            await asyncio.sleep(stopped)
            broker.proc.send_signal(signal.SIGCONT)
            say("SIGCONT the broker")
        elif fault == "service-pause":
            for name, service in services:
                assert service.proc is not None
                service.proc.send_signal(signal.SIGSTOP)
                stopped = pause or SESSION_MS / 1000 + 3
                say(f"SIGSTOP {name} for {stopped:.0f}s (session timeout {SESSION_MS} ms)")
                await asyncio.sleep(stopped)
                service.proc.send_signal(signal.SIGCONT)
                say(f"SIGCONT {name}")
        elif fault == "limit-lowered":
            await _set_limit(settings, ENRICHED_EVENTS, 20_000)
            say("enriched-events max.message.bytes lowered to 20000")
            big = {"specversion": "1.0", "id": BIG_ID, "source": "/faults", "type": "agreement.signed",
                   "data": {"title": "too large once enriched",
                            "organizations": [{"name": n} for n in _RESOLVED * 25]}}
            producer = make_producer(settings)
            await producer.start()
            try:  # keyed like the stream's events: its output partition is theirs too
                await (await producer.send(settings.topic(AGREEMENTS), orjson.dumps(big),
                                           key=b"chaos-subject-1"))
            finally:
                await producer.stop()
            cell.expected_letters.append(BIG_ID)
            await asyncio.sleep(5)
            await _set_limit(settings, ENRICHED_EVENTS, 1_000_000)
            say("enriched-events max.message.bytes restored")
        elif fault == "undecodable":
            for topic, name in ((AGREEMENTS, "faults-odd-input"), (ENRICHED_EVENTS, "faults-odd-enriched")):
                doc = {"specversion": "1.0", "id": name, "source": "/faults", "type": "agreement.signed",
                       "data": {"title": "odd header", "organizations": [{"name": "SAIC Motor"}]}}
                await produce_raw_header(settings, settings.topic(topic), orjson.dumps(doc), key=b"chaos-subject-1")
                cell.expected_letters.append(name)
            cell.expected_letters.append("faults-odd-enriched")  # notify's letter, and insights'
            say("a record whose header name is not UTF-8 written to agreements and enriched-events")

    try:
        await wait_until(lambda: ready(insights_url), 120, "insights ready")
        await asyncio.gather(load(), nemesis())
        positions = await _read_inputs(settings)
        inputs = [Input(("/chaos", f"chaos-{n:07d}"), keys[n], acked.get(n, False), p, o)
                  for n in range(events)
                  for p, o in (positions.get(("/chaos", f"chaos-{n:07d}")) or [(None, None)])]
        final = [o for o in await _final(settings, len(inputs), quiet=45) if o.event[0] == "/chaos"]
        wanted = {(o.event, subscription) for o in final}
        last, count = time.monotonic(), 0
        while time.monotonic() - last < 45:
            got = {(d.event, d.subscription) for d in
                   (_delivery(r.body, r.headers, subscription) for r in receiver.on("/hook"))}
            if wanted <= got:
                break
            if len(got) != count:
                last, count = time.monotonic(), len(got)
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # a late repeat, a late commit
        cell.report = check(inputs, final)
        check_deliveries(cell.report, wanted,
                         [_delivery(r.body, r.headers, subscription) for r in receiver.on("/hook")],
                         expected=lambda event, sub: idempotency_key(event[0], event[1], sub))
        expected = await expected_from_topic(settings, len(final))
        deadline = time.monotonic() + 60
        while True:  # insights folds what its route wrote within a batch or two
            cell.insights = await asyncio.to_thread(differences, insights_url, expected)
            if not cell.insights or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        cell.letters = [orjson.loads(dl.value or b"{}").get("id", "?")
                        for _, dl in await read_dead_letters(settings, limit=1000, idle_ms=1000)]
        deadline = time.monotonic() + 20
        while True:  # commits follow the work within a commit interval or two
            cell.uncommitted = {
                **await _uncommitted(settings, enrich_group,
                                     [settings.topic(ANNOUNCEMENTS), settings.topic(AGREEMENTS)]),
                **await _uncommitted(settings, notify_group, [settings.topic(ENRICHED_EVENTS)]),
                **await _uncommitted(settings, insights_group, [settings.topic(ENRICHED_EVENTS)])}
            if not any(cell.uncommitted.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        cell.stuck = [f"{name}: {line[:200]}" for name, service in services
                      for line in service.log().splitlines() if "is stuck" in line]
    finally:
        for _, service in services:
            if service.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    service.proc.send_signal(signal.SIGCONT)
            service.terminate(15)
        await receiver.stop()
    cell.seconds = time.monotonic() - t0
    say(f"done: {cell.report.summary()}; letters {cell.letters}; uncommitted {cell.uncommitted}; "
        f"insights wrong {cell.insights[:5]}")
    return cell


async def run_matrix(tmp: Path, faults: tuple[str, ...] = FAULTS, guarantees: tuple[str, ...] = GUARANTEES,
                     *, events: int = 1000, rate: float = 100.0, pause: float | None = None,
                     log: bool = False) -> list[Cell]:
    """Every (fault, guarantee) cell in turn: on one broker of the run's own, and the
    cluster faults on a 3-node cluster of its own."""
    cells = []
    single = [f for f in faults if f not in CLUSTER_FAULTS]
    if single:
        broker = LocalKafka(port=free_port(), data_dir=tmp / "kafka", heap="512m")
        await asyncio.to_thread(broker.start)
        try:
            for fault in single:
                for guarantee in guarantees:
                    cells.append(await run_cell(broker.bootstrap, broker, tmp, fault, guarantee,
                                                events=events, rate=rate, pause=pause, log=log))
        finally:
            if broker.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    broker.proc.send_signal(signal.SIGCONT)
            await asyncio.to_thread(broker.stop)
    clustered = [f for f in faults if f in CLUSTER_FAULTS]
    if clustered:
        cluster = await asyncio.to_thread(LocalCluster(3, data_dir=tmp / "cluster", heap="384m").start)
        try:
            for fault in clustered:
                for guarantee in guarantees:
                    cells.append(await run_cell(cluster.bootstrap, cluster, tmp, fault, guarantee,
                                                events=events, rate=rate, pause=pause, log=log))
        finally:
            await asyncio.to_thread(cluster.stop)
    return cells


def main() -> int:
    """``make chaos-faults``: the whole matrix; prints its table; exit 1 when a cell failed."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000, help="events per cell")
    ap.add_argument("--rate", type=float, default=100.0, help="events per second")
    ap.add_argument("--fault", action="append", choices=FAULTS, help="only these faults (repeatable)")
    ap.add_argument("--guarantee", action="append", choices=GUARANTEES, help="only these enrich modes")
    ap.add_argument("--pause", type=float, help="seconds a paused broker or service stays stopped "
                    "(default: just past the request or session timeout)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    cells = asyncio.run(run_matrix(tmp, tuple(args.fault or FAULTS), tuple(args.guarantee or GUARANTEES),
                                   events=args.events, rate=args.rate, pause=args.pause, log=True))
    print(HEADER)
    for cell in cells:
        print(cell.row())
    print(f"service logs in {tmp}")
    return 0 if all(c.ok for c in cells) else 1


if __name__ == "__main__":
    raise SystemExit(main())
