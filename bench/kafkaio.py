"""Kafka helpers of the bench: topics per measurement, filling a topic, and
watching a topic until N records are there (read_committed, like any user)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import TopicPartition

from bench.payload import ID_PATTERN
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import AntingSettings, KafkaSettings
from shared.topics import ALL_TOPICS, Topic


def fresh_settings(bootstrap: str, label: str) -> AntingSettings:
    """Settings with a topic prefix of this measurement's own."""
    prefix = f"bench-{label}-{uuid.uuid4().hex[:6]}."
    return AntingSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap), topic_prefix=prefix)


def scratch_topic(name: str, partitions: int = 3) -> Topic:
    """A topic shaped like ``announcements`` (3 partitions, delete) for the raw loops."""
    return Topic(name, None, partitions, "delete", "id")


async def create(settings: AntingSettings, *extra: Topic) -> None:
    """Every registered topic (plus ``extra``) under the prefix, with leaders elected, so
    the first sends of a measurement are not retried on NotLeaderForPartition."""
    topics = (*ALL_TOPICS, *extra)
    await ensure_topics(settings, topics)
    producer = make_producer(settings)
    await producer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            cluster = await producer.client.fetch_all_metadata()
            ready = True
            for t in topics:
                parts = cluster.partitions_for_topic(settings.topic(t)) or set()
                if len(parts) < t.partitions or any(
                    cluster.leader_for_partition(TopicPartition(settings.topic(t), p)) in (None, -1)
                    for p in parts
                ):
                    ready = False
                    break
            if ready:
                # the broker may name itself leader in metadata a moment before it
                # serves the partition as one
                await asyncio.sleep(0.5)
                return
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()


async def fill(
    settings: AntingSettings, topic: str, values: Sequence[bytes], keys: Sequence[bytes]
) -> None:
    """Produce every value (safe producer settings), then wait for every ack."""
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for v, k in zip(values, keys, strict=True)]
        await producer.flush()
        for f in futures:
            f.result()
    finally:
        await producer.stop()


@dataclass
class Watch:
    """What arrived on a topic: CreateTime timestamps (ms) and local arrival times (monotonic)."""

    expected: int
    timestamps: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    started: float = 0.0
    values: list[bytes] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.timestamps)

    def rate_from_timestamps(self) -> float | None:
        """(N-1) / (last − first record timestamp): the writer's steady rate, start-up excluded."""
        if self.count < 2:
            return None
        span = (max(self.timestamps) - min(self.timestamps)) / 1000
        return (self.count - 1) / span if span > 0 else None

    def rate_from_arrivals(self) -> float | None:
        """Records after the first fetch over the time from the first fetch to the last:
        right for a transactional writer too, whose records become visible a commit at a time."""
        if self.count < 2:
            return None
        first = self.arrivals[0]
        after_first = sum(1 for t in self.arrivals if t > first)
        span = self.arrivals[-1] - first
        return after_first / span if span > 0 and after_first else None


async def watch(
    settings: AntingSettings,
    topics: str | Sequence[str],
    expect: int,
    timeout: float,
    *,
    ready: asyncio.Event | None = None,
    keep_values: bool = False,
) -> Watch:
    """Read ``topics`` from the start until ``expect`` records arrived or ``timeout`` passed;
    sets ``ready`` once the consumer holds its partitions."""
    w = Watch(expected=expect)
    names = [topics] if isinstance(topics, str) else list(topics)
    consumer = make_consumer(settings, *names, group_id=None)
    await consumer.start()
    try:
        w.started = time.monotonic()
        if ready is not None:
            ready.set()
        deadline = time.monotonic() + timeout
        while w.count < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10000)
            now = time.monotonic()
            for records in batch.values():
                for r in records:
                    w.timestamps.append(r.timestamp)
                    w.arrivals.append(now)
                    if keep_values and r.value is not None:
                        w.values.append(r.value)
    finally:
        await consumer.stop()
    return w


async def timestamps_by_id(settings: AntingSettings, topics: Sequence[str], tag: str,
                           timeout: float = 60) -> dict[str, int]:
    """Every benchmark event id (of this tag) on the topics → its record timestamp (ms),
    reading read_committed up to the end offsets as they are now."""
    marker = f"-{tag}-".encode()
    producer = make_producer(settings)
    await producer.start()
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    out: dict[str, int] = {}
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in sorted(await producer.partitions_for(t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in parts]
            if all(pos >= ends[tp] for pos, tp in zip(positions, parts, strict=True)):
                break
            batch = await consumer.getmany(timeout_ms=200, max_records=10000)
            for records in batch.values():
                for r in records:
                    if r.value is None or marker not in r.value:
                        continue
                    m = ID_PATTERN.search(r.value)
                    if m is not None:
                        out.setdefault(m.group(0).decode(), r.timestamp)
    finally:
        await consumer.stop()
        await producer.stop()
    return out


class IdWatcher:
    """A read_committed consumer in a thread of its own recording when each benchmark
    event id first becomes visible on the topics (``time.monotonic()``)."""

    def __init__(self, settings: AntingSettings, topics: Sequence[str]) -> None:
        import threading

        self.settings = settings
        self.topics = list(topics)
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        consumer = make_consumer(self.settings, *self.topics, group_id=None,
                                 auto_offset_reset="latest")
        await consumer.start()
        self._ready.set()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=10000)
                now = time.monotonic()
                for records in batch.values():
                    for r in records:
                        if r.value is None:
                            continue
                        m = ID_PATTERN.search(r.value)
                        if m is not None:
                            self.seen.setdefault(m.group(0).decode(), now)
        finally:
            await consumer.stop()

    def __enter__(self) -> IdWatcher:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def end_offsets_total(settings: AntingSettings, *topics: str) -> int:
    """How many records the topics hold (committed or not): a cheap count for checks."""
    producer = make_producer(settings)
    await producer.start()
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in sorted(await producer.partitions_for(t))]
        ends = await consumer.end_offsets(parts)
        return int(sum(ends.values()))
    finally:
        await consumer.stop()
        await producer.stop()
