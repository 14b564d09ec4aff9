"""Every dead letter in Prometheus, whoever wrote it, read from ``dead-letters`` itself.

A stage that dead-letters a record counts it in ``anting_dead_letters_total`` (shared
/deadletters.py), but only a process Prometheus scrapes is seen that way: ``anting
publish`` is a short process of its own with no ``/metrics``, and kcat or any other
producer counts nothing at all. The topic is the one place every dead letter reaches,
so :class:`DeadLetterMonitor` reads it, like :class:`shared.lag.LagMonitor`, for the
whole life of a service, and exports two gauges by (``dlq.stage``, ``dlq.original.topic``):

- ``anting_dead_letters_in_topic`` — the letters counted: from the log start when the
  monitor started, and every one appended since (the dashboard's dead-letter panels);
- ``anting_dead_letters_last_timestamp_seconds`` — the newest one's Kafka timestamp
  (when it was written; a timestamp in the future counts as now). Alert
  ``AntingDeadLetters`` fires while it is less than 5 minutes old.

Why gauges read from the topic, and an age rather than a rate, for the alert: every
instance that reads the topic reports the same values (queries take ``max by (stage,
topic)``, never ``sum``), a restart reads the topic again and reports what it did before
(a counter started at 0 would lose the letters written while the service was down; one
started from the whole topic would drop when retention deletes letters, which
Prometheus reads as a reset and counts again), and the first letter of a stage and
topic makes its series appear with a recent timestamp, which an age alert sees and
``increase()`` over a series that starts at 1 does not.

notify runs it (services/notify/main.py): it is the long-running consumer at the end
of the pipeline, and already runs a LagMonitor for its whole life. ingest runs as many
stateless instances as the load needs and ``anting publish`` exits when done; enrich's
exactly-once transactions are the pipeline's latency budget, not to be shared with
reading 90 days of letters at start.

Best effort: it never takes the service down; a failed round is logged at debug, its
consumer is closed, and the next one goes on from the offsets it had reached. Letters
deleted by retention stay in the count until the next start. (stage, topic) pairs are
capped at :data:`MAX_SERIES` (the rest count as ``_other``), so a producer writing
arbitrary headers cannot flood Prometheus with series.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.deadletters import show_bytes, topic_partitions
from shared.kafka import make_consumer
from shared.metrics import DEAD_LETTERS_IN_TOPIC, DEAD_LETTERS_LAST_TIMESTAMP
from shared.runtime import BackgroundTask
from shared.settings import AntingSettings
from shared.topology import NOTIFY_DLQ_MONITOR

log = logging.getLogger(__name__)

MAX_SERIES = 500
MAX_LABEL = 200  # characters of a label value kept
OTHER = ("_other", "_other")

Labels = tuple[str, str]


def labels_of(headers: Iterable[tuple[str, bytes | None]]) -> Labels:
    """(stage, original topic) of a dead letter's headers: the last ``dlq.stage`` and
    ``dlq.original.topic`` as text ("" when absent), each cut to MAX_LABEL characters."""
    stage = topic = ""
    for name, value in headers:
        if name == "dlq.stage":
            stage = show_bytes(value) or ""
        elif name == "dlq.original.topic":
            topic = show_bytes(value) or ""
    return stage[:MAX_LABEL], topic[:MAX_LABEL]


class DeadLetterMonitor(BackgroundTask):
    """Reads ``dead-letters`` from its log start, then follows it, with a consumer of its
    own (no group, no commits, ``read_committed``: an aborted transaction's letter was
    never written), and sets the gauges of the module docstring until stopped.

    ``counts`` and ``newest`` (Unix seconds) hold the values by (stage, original topic).
    A topic that does not exist yet is looked for again every ``rediscover`` seconds (so
    are new partitions). Use as ``async with DeadLetterMonitor(settings):`` around a
    service's life, or :meth:`start` / :meth:`stop`.
    """

    task_name = "dead letter monitor"

    def __init__(
        self,
        settings: AntingSettings,
        *,
        poll_ms: int = 1000,
        rediscover: float = 30.0,
        retry: float = 5.0,
    ) -> None:
        self.topic = NOTIFY_DLQ_MONITOR.input(settings.topic_prefix)
        self.settings = settings
        self.poll_ms = poll_ms
        self.rediscover = rediscover
        self.retry = retry
        self.counts: dict[Labels, int] = {}
        self.newest: dict[Labels, float] = {}
        self.positions: dict[int, int] = {}  # partition: the next offset to read
        self._assigned: set[TopicPartition] = set()
        self._consumer: AIOKafkaConsumer | None = None

    def count(self, records: Iterable[Any]) -> None:
        """Count aiokafka ``ConsumerRecord``s of ``dead-letters`` and set the gauges of the
        pairs they touch."""
        now = time.time()
        touched: set[Labels] = set()
        for r in records:
            key = labels_of(r.headers or ())
            if key not in self.counts and len(self.counts) >= MAX_SERIES:
                key = OTHER
            self.counts[key] = self.counts.get(key, 0) + 1
            written = min(r.timestamp / 1000, now) if r.timestamp >= 0 else now
            if written > self.newest.get(key, float("-inf")):
                self.newest[key] = written
            self.positions[r.partition] = r.offset + 1
            touched.add(key)
        for key in touched:
            DEAD_LETTERS_IN_TOPIC.labels(*key).set(self.counts[key])
            DEAD_LETTERS_LAST_TIMESTAMP.labels(*key).set(self.newest[key])

    async def _connect(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = make_consumer(self.settings, group_id=None)
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer, self._assigned = consumer, set()
        return self._consumer

    async def _discover(self, consumer: AIOKafkaConsumer) -> None:
        """Assign every partition of the topic, each from where this monitor left off
        (its log start the first time)."""
        tps = {TopicPartition(self.topic, p)
               for p in (await topic_partitions(self.settings)).get(self.topic, ())}
        if not tps or tps == self._assigned:
            return
        consumer.assign(sorted(tps))
        for tp in tps:
            if tp.partition in self.positions:
                consumer.seek(tp, self.positions[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        self._assigned = tps

    async def close(self) -> None:
        """Close the consumer (the next round makes a new one, from the same offsets)."""
        consumer, self._consumer, self._assigned = self._consumer, None, set()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def run(self) -> None:
        """Read and count until cancelled; never raises anything else, and closes its
        consumer on the way out."""
        looked = float("-inf")
        try:
            while True:
                try:
                    consumer = await self._connect()
                    if not self._assigned or time.monotonic() - looked > self.rediscover:
                        looked = time.monotonic()
                        await self._discover(consumer)
                    if not self._assigned:
                        await asyncio.sleep(self.retry)
                        continue
                    batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=1000)
                    for records in batch.values():
                        self.count(records)
                except Exception:  # best effort: never take the service down for a gauge
                    log.debug("dead letters not counted; trying again", exc_info=True)
                    await self.close()
                    looked = float("-inf")
                    await asyncio.sleep(self.retry)
        finally:
            await self.close()


__all__ = ["MAX_LABEL", "MAX_SERIES", "OTHER", "DeadLetterMonitor", "Labels", "labels_of"]
