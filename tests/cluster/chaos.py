"""The chaos run: enrich instances on a 3-node cluster under load while a nemesis kills
brokers and enrich instances, with a concurrent ``read_committed`` reader throughout and
a final one after the drain; ``devtools.checker`` judges the history.

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

import orjson
from aiokafka import TopicPartition

from devtools.checker import Input, Output, Report, check
from devtools.localkafka import LocalCluster, free_port
from devtools.testing import ServiceProcess, settings_for
from shared.kafka import ensure_topics, make_admin, make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS

__all__ = ["Faults", "Outcome", "run_chaos"]

SESSION_MS = 6000  # enrich's session timeout here: a SIGSTOPped one is a zombie after this


@dataclass
class Faults:
    """How many of each fault the nemesis injects, at random moments of the load."""

    broker_kills: int = 5
    broker_clean_stops: int = 0
    enrich_kills: int = 10
    enrich_pauses: int = 1


@dataclass
class Outcome:
    """The checker's report, what the nemesis did (one line per fault) and the timings."""

    report: Report
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0
    drain_seconds: float = 0.0


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


async def _read_inputs(settings: AntingSettings) -> dict[tuple[str, str], tuple[int, int]]:
    """Where each input event landed: (partition, offset) in its input topic."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
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
                        out.setdefault((doc["source"], doc["id"]), (r.partition, r.offset))
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


async def run_chaos(cluster: LocalCluster, tmp: Path, events: int, faults: Faults, *,
                    rate: float = 400.0, seed: int | None = None, log: bool = False) -> Outcome:
    """Run 2 enrich instances on ``cluster`` while ``events`` events are produced at about
    ``rate`` per second and ``faults`` are injected at random moments (``seed`` fixes them);
    drain, read everything back and check it. Broker faults pick the leader of the
    transaction coordinator's or the group coordinator's partition first."""
    rnd = random.Random(seed)
    t0 = time.monotonic()
    settings = settings_for(cluster.bootstrap, prefix=f"chaos{rnd.randrange(1 << 30):x}.")
    await ensure_topics(settings)
    from services.enrich import catalog

    await catalog.write(settings, upserts=catalog.shipped())
    enrich = [Enrich(settings, tmp, n) for n in (1, 2)]
    for e in enrich:
        e.service.start()
    outcome = Outcome(Report())

    def say(line: str) -> None:
        outcome.faults.append(f"{time.monotonic() - t0:6.1f}s {line}")
        if log:
            print(outcome.faults[-1], file=sys.stderr, flush=True)

    concurrent: list[Output] = []
    stop_reader = asyncio.Event()
    reader = asyncio.create_task(_reader(settings, concurrent, stop_reader))
    acked: dict[int, bool] = {}
    keys: dict[int, bytes] = {}

    async def load() -> None:
        producer = make_producer(settings, linger_ms=10)
        await producer.start()
        try:
            start = time.monotonic()
            pending = []
            for n in range(events):
                key, doc = _event(n)
                keys[n] = key
                topic = settings.topic(AGREEMENTS if n % 2 else ANNOUNCEMENTS)
                fut = await producer.send(topic, orjson.dumps(doc), key=key)
                fut.add_done_callback(lambda f, n=n: acked.__setitem__(n, f.exception() is None))
                pending.append(fut)
                ahead = start + n / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 120)
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
    plan.sort()

    async def nemesis() -> None:
        broker_faults = 0
        begin = time.monotonic()
        for at, what in plan:
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
                    say(f"SIGTERM kafka-{node} (the {which} coordinator)")
                await asyncio.sleep(rnd.uniform(2, 6))
                cluster.restart(node)  # in this thread: see LocalKafka.launch
                say(f"restarted kafka-{node}")
            elif what == "enrich-kill":
                e = rnd.choice(enrich)
                e.service.kill()
                say(f"SIGKILL {e.name}")
                await asyncio.sleep(1)
                e.service.start()
                say(f"restarted {e.name} (pid {e.pid})")
            else:
                e = rnd.choice(enrich)
                with contextlib.suppress(ProcessLookupError):
                    e.service.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
                    say(f"SIGSTOP {e.name} for {SESSION_MS / 1000 + 3:.0f}s (a zombie)")
                    await asyncio.sleep(SESSION_MS / 1000 + 3)
                    e.service.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                    say(f"SIGCONT {e.name}")

    try:
        await asyncio.gather(load(), nemesis())
        drain0 = time.monotonic()
        positions = await _read_inputs(settings)
        inputs = [Input(("/chaos", f"chaos-{n:07d}"), keys[n], acked.get(n, False),
                        *positions.get(("/chaos", f"chaos-{n:07d}"), (None, None)))
                  for n in range(events)]
        final = await _final(settings, len(positions), quiet=60)
        outcome.drain_seconds = time.monotonic() - drain0
        stop_reader.set()
        await reader
        outcome.report = check(inputs, final, concurrent)
    finally:
        stop_reader.set()
        for e in enrich:
            if e.service.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    e.service.proc.send_signal(signal.SIGCONT)
            e.service.terminate(10)
    outcome.seconds = time.monotonic() - t0
    return outcome


def main() -> int:
    """``make chaos-cluster``: the full-size run on a fresh local cluster; prints the fault
    log, the checker's counts and the run time; exit 1 when an anomaly was found."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=250.0)
    ap.add_argument("--broker-kills", type=int, default=5)
    ap.add_argument("--enrich-kills", type=int, default=10)
    ap.add_argument("--enrich-pauses", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="cluster-chaos-"))
    cluster = LocalCluster(3, data_dir=args.data_dir).start()
    try:
        outcome = asyncio.run(run_chaos(
            cluster, tmp, args.events,
            Faults(broker_kills=args.broker_kills, enrich_kills=args.enrich_kills,
                   enrich_pauses=args.enrich_pauses),
            rate=args.rate, seed=args.seed, log=True))
    finally:
        cluster.stop()
    print(f"chaos-cluster: {outcome.report.summary()}")
    print(f"chaos-cluster: {len(outcome.faults)} faults, run {outcome.seconds:.0f}s "
          f"(drain {outcome.drain_seconds:.0f}s); service logs in {tmp}")
    return 0 if outcome.report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
