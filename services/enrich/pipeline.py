"""The consume → enrich → produce loop, exactly once (Kafka transactions) or at least once.

Exactly once: one transactional producer per input partition, with the
transactional id ``<group>-<topic>-<partition>``. A worker that takes over a
partition (after a rebalance, or the same worker restarted after SIGKILL)
starts a producer with the same id, which fences the previous owner and aborts
its open transaction; only then does it read the partition's committed offset
and start there. Each poll becomes one transaction per partition: the enriched
events, the dead letters of its poison records, and the partition's next
offset (``send_offsets_to_transaction``) commit together or not at all.
Consumers read ``read_committed``.

aiokafka 0.14 sends offsets without the group generation (no KIP-447), so one
producer for the whole consumer could not fence a zombie that lost a
partition: hence a producer per partition, as Kafka Streams did before 2.6.

At least once (``ANTING_ENRICH_GUARANTEE=at_least_once``): one idempotent
producer; offsets are committed after the broker acknowledged the batch.

A record that cannot be read (not a CloudEvent of the contract, in either content
mode of the Kafka binding) or cannot be *written* (its enriched form is over the
output topic's ``max.message.bytes``, read from the broker at start, or the producer
refuses it) goes to ``dead-letters`` inside the same transaction, and the stream
goes on. Any other failure in a transaction tears the session down (consumer and
producers) and starts it again from the committed offsets: nothing is half-done. A
session that fails again and again at the same offsets says so in the log, with
the offsets, and counts ``anting_worker_restarts_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import TypeAlias

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError

from services.enrich.catalog import Catalog
from services.enrich.enrich import enrich_bytes
from services.enrich.settings import EnrichSettings
from shared.deadletters import DeadLetterWriter, from_record
from shared.events import record_event_bytes
from shared.kafka import (
    PRODUCER_MAX_REQUEST_BYTES,
    make_consumer,
    make_producer,
    max_message_bytes,
    record_size,
)
from shared.metrics import (
    ENRICH_EVENTS,
    ENRICH_ORGANIZATIONS,
    STAGE_SECONDS,
    WORKER_RESTARTS,
)
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS

log = logging.getLogger(__name__)
STAGE = "enrich"
_STAGE_SECONDS = STAGE_SECONDS.labels(STAGE)
_RESTARTS = WORKER_RESTARTS.labels(STAGE)  # exported from the start, at 0


class Outcome:
    """What one batch did, summed for the metrics (one label lookup per batch, not per event)."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.resolved = 0
        self.unresolved = 0

    def publish(self) -> None:
        for (etype, outcome), n in self.events.items():
            ENRICH_EVENTS.labels(etype, outcome).inc(n)
        if self.resolved:
            ENRICH_ORGANIZATIONS.labels("resolved").inc(self.resolved)
        if self.unresolved:
            ENRICH_ORGANIZATIONS.labels("unresolved").inc(self.unresolved)


def _type_of(raw: bytes | None) -> str:
    """The event type of a poison record, if it has a readable one (for the metric label)."""
    if raw and b'"conference.announcement"' in raw:
        return "conference.announcement"
    if raw and b'"agreement.signed"' in raw:
        return "agreement.signed"
    return "unknown"


STRUCTURED = ("content-type", b"application/cloudevents+json")
# a session failing this many times in a row at the same offsets is stuck, not unlucky
STUCK_AFTER = 3


class RecordTooLarge(ValueError):
    """The enriched record is larger than the output topic takes."""


Record: TypeAlias = ConsumerRecord[bytes, bytes]
Ack: TypeAlias = asyncio.Future[RecordMetadata]  # a send's broker acknowledgement

# what a produce refuses for one record alone: treated like a poison input
_UNWRITABLE = (RecordTooLarge, MessageSizeTooLargeError, TypeError, ValueError)


def _structured(headers: Sequence[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """The input's headers (ce_*, traceparent ...), and always the CloudEvents Kafka
    binding's structured-mode content type: an input written by kcat without headers
    still comes out as a CloudEvent any binding-aware parser reads."""
    return [(k, v) for k, v in headers or () if k != "content-type" and v is not None] + [STRUCTURED]


class Enricher:
    """Turns records into sends on a producer: enriched events, or dead letters."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.out_topic = settings.topic(ENRICHED_EVENTS)
        # dead letters go on the batch's own producer: inside its transaction
        self.dlq = DeadLetterWriter(None, settings)
        # the largest record enriched-events takes; read from the broker by read_limits()
        self.max_out_bytes = PRODUCER_MAX_REQUEST_BYTES

    async def read_limits(self) -> None:
        """Read ``max.message.bytes`` of ``enriched-events`` and ``dead-letters`` from the
        broker, so a record too large for its topic is dead-lettered before it is sent
        (a send the broker refuses would fail the whole transaction, again and again)."""
        limits = await max_message_bytes(self.settings, [self.out_topic, self.dlq.topic])
        self.max_out_bytes = limits[self.out_topic]
        self.dlq.max_bytes = limits[self.dlq.topic]

    async def _dead_letter(self, producer: AIOKafkaProducer, r: Record, exc: BaseException,
                           outcome: Outcome, futures: list[Ack]) -> None:
        letter = from_record(r, stage=STAGE, error=exc)
        futures.append(await self.dlq.send(letter, producer))
        outcome.events[(_type_of(r.value), "dead_lettered")] += 1
        log.warning("record dead-lettered", extra={
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "error": type(exc).__name__, "reason": str(exc)[:200]})

    async def process(self, producer: AIOKafkaProducer, records: list[Record], outcome: Outcome) -> list[Ack]:
        """Queue one output per record; returns the delivery futures."""
        futures: list[Ack] = []
        index, version = self.catalog.index, self.catalog.version
        for r in records:
            t0 = time.perf_counter()
            try:
                # either content mode of the CloudEvents Kafka binding; structured out
                raw = record_event_bytes(r.value, r.headers)
                etype, enriched = enrich_bytes(raw, index, version)
                value = enriched.dump()
            except (ValidationError, ValueError) as exc:
                await self._dead_letter(producer, r, exc, outcome, futures)
                continue
            headers = _structured(r.headers)
            try:
                size = record_size(r.key, value, headers)
                if size > self.max_out_bytes:
                    raise RecordTooLarge(
                        f"the enriched event is {size} bytes; {self.out_topic} takes at most "
                        f"{self.max_out_bytes} (max.message.bytes)")
                # the output keeps the input's timestamp (as Kafka Streams does), so that
                # notify can measure accepted → delivered
                futures.append(await producer.send(
                    self.out_topic, value=value, key=r.key, headers=headers,
                    timestamp_ms=r.timestamp))
            except _UNWRITABLE as exc:
                # refused before it was queued: the transaction is untouched
                await self._dead_letter(producer, r, exc, outcome, futures)
                continue
            outcome.events[(etype, "enriched")] += 1
            outcome.resolved += enriched.resolved
            outcome.unresolved += enriched.unresolved
            _STAGE_SECONDS.observe(time.perf_counter() - t0)
        return futures


class _WorkerRebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the group's partition changes to the worker (its producers follow them)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.worker.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.worker.assigned(set(assigned))


class Worker:
    """One enrich worker: a consumer in the group, its producers, the catalog."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.group = settings.group
        self.catalog = catalog
        self.enricher = Enricher(settings, catalog)
        self.exactly_once = settings.guarantee == "exactly_once"
        self.inputs = [settings.topic(ANNOUNCEMENTS), settings.topic(AGREEMENTS)]
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None  # at-least-once
        self.producers: dict[TopicPartition, AIOKafkaProducer] = {}  # exactly-once
        self.fresh: set[TopicPartition] = set()
        self.lock = asyncio.Lock()
        self.running = False
        # where the batch being processed starts, and how often a session failed there
        self.attempt: dict[TopicPartition, int] = {}
        self.failed_at: dict[TopicPartition, int] = {}
        self.failures = 0

    # --- rebalance ---------------------------------------------------------------

    async def revoked(self, tps: set[TopicPartition]) -> None:
        # wait for the batch in flight: its transactions commit before the partitions go
        async with self.lock:
            for tp in tps:
                producer = self.producers.pop(tp, None)
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
            self.fresh -= tps

    def assigned(self, tps: set[TopicPartition]) -> None:
        # the producer (and so the fencing) comes before the first batch; see _claim
        self.fresh |= tps

    # --- session -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop``; a failed session is torn down and started again."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                _RESTARTS.inc()
                self._note_failure()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    def _note_failure(self) -> None:
        """Log a failed session; a run of failures at the same offsets is logged as stuck,
        naming the offsets, so an operator can find the record (``anting dlq list`` will
        not have it: it was never dead-lettered)."""
        at = dict(self.attempt)
        self.failures = self.failures + 1 if at and at == self.failed_at else 1
        self.failed_at = at
        where = ", ".join(f"{tp.topic}[{tp.partition}]@{off}" for tp, off in sorted(
            at.items(), key=lambda kv: (kv[0].topic, kv[0].partition))) or "(no batch)"
        if self.failures >= STUCK_AFTER:
            log.error(f"enrich is stuck: the session failed {self.failures} times in a row at "
                      f"{where}; restarting from the committed offsets", exc_info=True,
                      extra={"offsets": where, "failures": self.failures})
        else:
            log.exception(f"enrich session failed at {where}; restarting from the committed offsets",
                          extra={"offsets": where})

    async def _session(self, stop: asyncio.Event) -> None:
        self.consumer = make_consumer(
            self.settings, group_id=self.group,
            fetch_max_wait_ms=self.settings.batch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self.consumer.subscribe(self.inputs, listener=_WorkerRebalanceListener(self))
        await self.enricher.read_limits()
        await self.consumer.start()
        if not self.exactly_once:
            self.producer = make_producer(self.settings)
            await self.producer.start()
        self.running = True
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(
                    timeout_ms=self.settings.batch_wait_ms,
                    max_records=self.settings.batch_max_records,
                )
                if not batch:
                    continue
                async with self.lock:
                    self.attempt = {tp: rs[0].offset for tp, rs in batch.items() if rs}
                    await self.catalog.catch_up()
                    if self.exactly_once:
                        await self._transact(batch)
                    else:
                        await self._at_least_once(batch)
                    self.attempt = {}
                    self.failures = 0
        finally:
            self.running = False
            await self._close()

    async def _close(self) -> None:
        for producer in list(self.producers.values()):
            with contextlib.suppress(Exception):
                await producer.stop()
        self.producers.clear()
        self.fresh.clear()
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            self.consumer = None

    # --- exactly once --------------------------------------------------------------

    async def _claim(self, tp: TopicPartition) -> AIOKafkaProducer:
        """The partition's transactional producer; on first use it fences the previous
        owner, and the consumer is moved to the offset committed after that."""
        producer = self.producers.get(tp)
        if producer is None:
            producer = make_producer(
                self.settings,
                transactional_id=f"{self.group}-{tp.topic}-{tp.partition}",
                transaction_timeout_ms=self.settings.transaction_timeout_ms,
            )
            await producer.start()  # InitProducerId: bumps the epoch, aborts the zombie's open txn
            self.producers[tp] = producer
        return producer

    def _consumer(self) -> AIOKafkaConsumer:
        """The running session's consumer (the batch methods run only inside a session)."""
        assert self.consumer is not None, "no session running"
        return self.consumer

    async def _transact(self, batch: dict[TopicPartition, list[Record]]) -> None:
        outcome = Outcome()
        pending: list[tuple[TopicPartition, AIOKafkaProducer]] = []
        assignment = self._consumer().assignment()
        for tp, records in batch.items():
            if tp not in assignment or not records:
                continue
            producer = await self._claim(tp)
            if tp in self.fresh:
                # the position was read before the fencing: a transaction of the previous
                # owner may have committed since. Start from what is committed now.
                self.fresh.discard(tp)
                committed = await self._consumer().committed(tp)
                start = committed if committed is not None else 0
                records = [r for r in records if r.offset >= start]
                if not records or records[0].offset != start:
                    self._consumer().seek(tp, start)
                    continue
            await producer.begin_transaction()
            pending.append((tp, producer))
            try:
                await self.enricher.process(producer, records, outcome)
                await producer.send_offsets_to_transaction(
                    {tp: records[-1].offset + 1}, self.group)
            except BaseException:
                await self._abort(pending)
                raise
        try:
            # the partitions' transactions commit side by side
            await asyncio.gather(*(p.commit_transaction() for _, p in pending))
        except BaseException:
            await self._abort(pending)
            raise
        outcome.publish()

    @staticmethod
    async def _abort(pending: list[tuple[TopicPartition, AIOKafkaProducer]]) -> None:
        for _, producer in pending:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()

    # --- at least once ----------------------------------------------------------

    async def _at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        assert self.producer is not None
        outcome = Outcome()
        futures = []
        offsets = {}
        for tp, records in batch.items():
            if not records:
                continue
            futures += await self.enricher.process(self.producer, records, outcome)
            offsets[tp] = records[-1].offset + 1
        await asyncio.gather(*futures)
        await self._consumer().commit(offsets)
        outcome.publish()
