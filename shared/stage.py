"""The stage runner: a consume → produce stage is declared, and this runs it, ordered,
exactly once or at least once.

A stage is a :class:`Stage` (its name, input and output topics, consumer group and
guarantee) and a handler: ``handle(records, out)`` turns one partition's records, in
order, into writes on ``out`` (:class:`Outputs`). The handler holds the domain; the
runner holds everything Kafka: the session (consumer, producer, the group's
rebalances), transactions and commits, refusals and backoff, failed writes, dead
letters of records that cannot be written, and what ``/readyz`` says. Kafka Streams'
``StreamThread`` and Quix Streams' ``Application`` are the models; enrich and insights'
route run on it. A stage whose records may finish out of order (notify's slow
deliveries) runs on :mod:`shared.consumer_loop` instead, with the same rules for
failed writes.

**Exactly once.** One transactional producer per runner (transactional id
``<group>-<instance id>``) and one open transaction at a time over every partition the
runner holds. A transaction spans polls: it takes the handler's writes, the dead
letters, and the next offset of each partition read (``send_offsets_to_transaction``
with the consumer's group metadata), and commits when it is ``commit_interval_ms`` old,
holds ``commit_max_records`` records, or the consumer had nothing more for
``commit_linger_ms``. Consumers read ``read_committed``. Fencing is the group
coordinator's (KIP-447, :mod:`shared.aiokafka_ext`): a runner that lost its partitions
in a rebalance without knowing it (a zombie) has its offsets refused and aborts; the new
owner reads the committed offsets with ``require_stable``. On a rebalance the open
transaction commits before the partitions go.

**At least once** (ordered): one idempotent producer; a batch's offsets (the consumer's
positions) commit once every write of the batch is acknowledged.

**Failed writes** (``docs/RELIABILITY.md``; :mod:`shared.write_failures`). Every send is
awaited before its offsets commit (aiokafka 0.14 leaves a transaction committable after
the broker refused one of its batches). A unit of work with a failed send commits
nothing: the transaction is aborted (exactly once), the producer replaced (its sequence
numbers are spent; a new epoch fences its late batches), the output topics' limits read
again (they change at run time), and every partition rewound to its committed offset
(exactly once) or the batch to its first offsets (at least once). A record the broker
refused for itself goes again on the new producer, whose batches fit the limit; refused
twice, it is dead-lettered with the broker's reason. A record larger than its output
topic takes is dead-lettered before it is sent (:class:`RecordTooLarge`, raised by
:meth:`Outputs.send` for the handler to dead-letter).

Any other failure tears the session down (consumer and producer) and starts it again
from the committed offsets. A session failing again and again at the same offsets, or
writes failing again and again, says so in the log with the offsets, in
:attr:`StageRunner.trouble` (``/readyz``), and in ``anting_worker_restarts_total``.
The broker refusing the stage (an ACL, a password) is one line per 30 s and a retry with
backoff (:mod:`shared.kafka_access`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import CommitFailedError
from aiokafka.structs import RecordMetadata

from shared.aiokafka_ext import (
    FencedByGroupError,
    TransactionalProducer,
    fetch_stable_offsets,
    group_metadata,
    is_fenced,
)
from shared.deadletters import DeadLetterWriter, fit, from_record
from shared.kafka import (
    PRODUCER_MAX_REQUEST_BYTES,
    RECORD_OVERHEAD_BYTES,
    SAFE_PRODUCER,
    abandon_producer,
    make_consumer,
    make_producer,
    max_message_bytes,
    record_size,
)
from shared.kafka_access import AccessStatus, Backoff, Doing, check_subscription, refusal
from shared.metrics import WORKER_RESTARTS, WRITE_FAILURES
from shared.settings import AntingSettings
from shared.write_failures import Coordinates, SendFailures, settle

__all__ = ["BARE_LETTER_BYTES", "STUCK_AFTER", "Ack", "Guarantee", "Handler", "Outputs", "Record",
           "RecordTooLarge", "Stage", "StageRunner"]

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Ack: TypeAlias = asyncio.Future[RecordMetadata]  # a send's broker acknowledgement

#: a session (or its writes) failing this many times in a row is stuck, not unlucky
STUCK_AFTER = 3
#: a dead letter the broker refused once already goes again with its value cut to this
BARE_LETTER_BYTES = 2048


class Guarantee(StrEnum):
    """How a stage's input offsets commit with its output."""

    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


@dataclass(frozen=True)
class Stage:
    """A consume → produce stage, declared: ``name`` (metric labels, ``dlq.stage``),
    the topic names it reads (``inputs``) and writes (``outputs``; ``dead-letters`` is
    every stage's), its consumer ``group`` and ``guarantee``. ``instance_id`` makes the
    transactional id ``<group>-<instance_id>`` stable across restarts (a restarted
    instance aborts its predecessor's open transaction at once); the rest tunes polls
    (records, ms), transactions (ms, records) and the group session (ms)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dead_letters: str
    group: str
    guarantee: Guarantee = Guarantee.EXACTLY_ONCE
    instance_id: str | None = None
    batch_max_records: int = 2000
    batch_wait_ms: int = 100
    commit_interval_ms: int = 100
    commit_max_records: int = 10000
    commit_linger_ms: int = 0
    transaction_timeout_ms: int = 10000
    session_timeout_ms: int = 10000
    max_partition_fetch_bytes: int = 4 * 1024 * 1024


class Handler(Protocol):
    """A stage's domain: ``handle`` turns one partition's ``records`` (in offset order)
    into writes on ``out``; it may raise only for a failure that is not the records'
    own (a record it cannot read, it dead-letters with ``out.dead_letter``)."""

    async def handle(self, records: list[Record], out: Outputs) -> None: ...


class RecordTooLarge(ValueError):
    """An output record is larger than its topic takes now (``max.message.bytes``)."""


class _Unit:
    """One unit of work: a transaction (exactly once) or a batch (at least once). What it
    read (next offset per partition), how many records, since when (monotonic), each
    send's acknowledgement with the input record it was written for, and what to run
    once it has committed."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.records = 0
        self.offsets: dict[TopicPartition, int] = {}
        self.acks: list[Ack] = []
        self.origins: list[Coordinates] = []
        self.committed: list[Callable[[], None]] = []

    async def settle(self) -> SendFailures:
        """Wait for every send; the failures, by input record."""
        acks, origins = self.acks, self.origins
        self.acks, self.origins = [], []
        return await settle(acks, origins)

    def forget(self) -> None:
        """Retrieve every send's outcome once it settles (an aborted unit's), so that
        asyncio logs none as never retrieved."""
        for ack in self.acks:
            ack.add_done_callback(_retrieve)
        self.acks, self.origins = [], []


def _retrieve(fut: asyncio.Future[RecordMetadata]) -> None:
    if not fut.cancelled():
        fut.exception()


class Outputs:
    """Where a handler writes, for the unit of work under way: :meth:`send` an output
    record, :meth:`dead_letter` an input record, :meth:`after_commit` a callback (metrics
    are counted once the work that makes them true has committed)."""

    def __init__(self, runner: StageRunner, producer: AIOKafkaProducer, unit: _Unit) -> None:
        self._runner = runner
        self._producer = producer
        self._unit = unit

    async def send(self, origin: Record, topic: str, value: bytes, *, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None) -> Ack:
        """Queue one record on ``topic``, written for the input record ``origin``; returns
        its acknowledgement (the unit commits only once it resolves). Raises
        :class:`RecordTooLarge` when it is larger than the topic takes now, and what the
        producer raises for a record it refuses before queueing it (``TypeError``,
        ``ValueError``, ``MessageSizeTooLargeError``): the handler dead-letters ``origin``."""
        limit = self._runner.limits.get(topic, PRODUCER_MAX_REQUEST_BYTES)
        size = record_size(key, value, headers or ())
        if size > limit:
            raise RecordTooLarge(f"the record is {size} bytes; {topic} takes at most {limit} "
                                 "(max.message.bytes)")
        ack: Ack = await self._producer.send(topic, value, key, None, timestamp_ms, headers)
        unit = self._unit
        unit.acks.append(ack)
        unit.origins.append((origin.topic, origin.partition, origin.offset))
        return ack

    async def dead_letter(self, origin: Record, error: BaseException | str) -> Ack:
        """Write ``origin`` to ``dead-letters`` with ``error`` as the reason, in the unit of
        work (cut to fit the topic; to the bare coordinates when its letter was refused
        before); returns the acknowledgement."""
        letter = from_record(origin, stage=self._runner.stage.name, error=error)
        if self._runner.refusals.get((origin.topic, origin.partition, origin.offset), 0) > 2:
            letter = fit(letter, BARE_LETTER_BYTES)
        ack = await self._runner.dlq.send(letter, self._producer)
        self._unit.acks.append(ack)
        self._unit.origins.append((origin.topic, origin.partition, origin.offset))
        log.warning("record dead-lettered", extra={
            "stage": self._runner.stage.name, "topic": origin.topic, "partition": origin.partition,
            "offset": origin.offset, "error": error if isinstance(error, str) else type(error).__name__,
            "reason": str(error)[:200]})
        return ack

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the unit of work has committed (never if it aborts)."""
        self._unit.committed.append(callback)


class _Listener(ConsumerRebalanceListener):
    """Hands the group's partition changes to the runner (its transaction follows them)."""

    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.runner.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.runner.assigned(set(assigned))


class StageRunner:
    """Runs ``handler`` as ``stage`` on the cluster of ``settings`` (see the module) until
    :meth:`run`'s stop event is set. ``before_batch`` is awaited before each batch (enrich
    catches its catalog up there). :attr:`running` while in the group, :attr:`access` the
    broker's refusals (``access``: a service's own, to share it), :attr:`trouble` what keeps
    failing (both for ``/readyz``)."""

    def __init__(self, stage: Stage, settings: AntingSettings, handler: Handler, *,
                 before_batch: Callable[[], Awaitable[None]] | None = None,
                 access: AccessStatus | None = None) -> None:
        self.stage = stage
        self.settings = settings
        self.handler = handler
        self.before_batch = before_batch
        self.exactly_once = stage.guarantee is Guarantee.EXACTLY_ONCE
        self.transactional_id = f"{stage.group}-{stage.instance_id or uuid.uuid4().hex}"
        self.dlq = DeadLetterWriter(None, settings)
        # the largest record each output topic takes, read from the broker (read_limits)
        self.limits: dict[str, int] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.unit: _Unit | None = None  # exactly once: the open transaction
        # assigned partitions whose start is read from the committed offsets first
        self.fresh: set[TopicPartition] = set()
        self.broken: BaseException | None = None  # a commit on revocation failed fatally
        self.lock = asyncio.Lock()
        self.running = False
        # input records whose output the broker refused for itself, and how often. Once is
        # not yet the record's fault: the broker refuses a whole *batch* over the topic's
        # limit, neighbours included (Java's producer splits such a batch, KIP-126; aiokafka
        # does not), so the record goes again on a producer whose batches fit the limit.
        self.refused: dict[Coordinates, BaseException] = {}
        self.refusals: Counter[Coordinates] = Counter()
        # where the batch being processed starts, and how often a session failed there
        self.attempt: dict[TopicPartition, int] = {}
        self.failed_at: dict[TopicPartition, int] = {}
        self.failures = 0
        self.write_failures = 0  # units whose writes failed since the last commit
        self.trouble: str | None = None
        self.access = access or AccessStatus()  # shared with the service's other parts, if given
        self.backoff = Backoff(cap=self.access.cap)
        self.doing = Doing(reads=stage.inputs, writes=(*stage.outputs, stage.dead_letters),
                           group=stage.group,
                           transactional_id=self.transactional_id if self.exactly_once else None)
        self._restarts = WORKER_RESTARTS.labels(stage.name)  # exported from the start, at 0

    # --- rebalance ---------------------------------------------------------------

    async def revoked(self, tps: set[TopicPartition]) -> None:
        """The open transaction commits before the partitions go (as Kafka Streams does);
        a runner that has lost them already (a zombie) is refused and aborts it."""
        async with self.lock:
            if self.unit is not None and self.exactly_once:
                try:
                    await self._commit()
                except FencedByGroupError:
                    await self._fenced_by_group()
                except Exception as exc:
                    self.broken = exc
            self.fresh -= tps

    def assigned(self, tps: set[TopicPartition]) -> None:
        """The start comes from the stable committed offset before the first batch."""
        if self.exactly_once:
            self.fresh |= tps

    # --- sessions -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop``; a failed session is torn down and started again."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._restarts.inc()
                line = await refusal(exc, self.settings.kafka, self.doing)
                if line is not None:
                    # nothing was committed past what the refused work read: the next
                    # session starts from the committed offsets once it is allowed
                    self.access.refused(line, "session")
                    await self.backoff.wait(stop)
                    continue
                if is_fenced(exc):
                    log.warning(f"{self.stage.name} was fenced (its transaction timed out, or another "
                                "instance took its transactional id); starting a new session",
                                extra={"error": type(exc).__name__})
                else:
                    self._note_failure()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    def _allowed(self) -> None:
        """The session did what it is there for (a commit, or a poll with nothing to do):
        whatever the broker refused before is allowed again."""
        if self.access.current:
            self.access.restored("session")
            self.backoff.reset()

    def _note_failure(self) -> None:
        """Log a failed session; a run of failures at the same offsets is logged as stuck,
        naming the offsets, so an operator can find the record."""
        at = dict(self.attempt)
        self.failures = self.failures + 1 if at and at == self.failed_at else 1
        self.failed_at = at
        where = ", ".join(f"{tp.topic}[{tp.partition}]@{off}" for tp, off in sorted(
            at.items(), key=lambda kv: (kv[0].topic, kv[0].partition))) or "(no batch)"
        name = self.stage.name
        if self.failures >= STUCK_AFTER:
            self.trouble = f"the session failed {self.failures} times in a row at {where}"
            log.error(f"{name} is stuck: the session failed {self.failures} times in a row at "
                      f"{where}; restarting from the committed offsets", exc_info=True,
                      extra={"offsets": where, "failures": self.failures})
        else:
            log.exception(f"{name} session failed at {where}; restarting from the committed offsets",
                          extra={"offsets": where})

    async def read_limits(self) -> None:
        """Read each output topic's and ``dead-letters``' ``max.message.bytes`` from the
        broker (a record too large is dead-lettered before it is sent)."""
        limits = await max_message_bytes(self.settings, [*self.stage.outputs, self.dlq.topic])
        self.dlq.max_bytes = limits.pop(self.dlq.topic)
        self.limits = limits

    def _new_producer(self) -> AIOKafkaProducer:
        """A producer whose batches fit the output topics' limits as last read (the broker
        refuses a batch larger than ``max.message.bytes`` whole)."""
        limit = min([*self.limits.values(), self.dlq.max_bytes]) - RECORD_OVERHEAD_BYTES
        batch = max(1024, min(SAFE_PRODUCER["max_batch_size"], limit))
        if self.exactly_once:
            # InitProducerId: a predecessor with the same transactional id is fenced and
            # its open transaction aborted
            producer: AIOKafkaProducer = TransactionalProducer(
                **self.settings.kafka.client_options(),
                **{**SAFE_PRODUCER, "request_timeout_ms": self.settings.kafka.request_timeout_ms,
                   "max_batch_size": batch},
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self.stage.transaction_timeout_ms)
            return producer
        return make_producer(self.settings, max_batch_size=batch)

    async def _session(self, stop: asyncio.Event) -> None:
        self.broken = None
        stage = self.stage
        self.consumer = make_consumer(
            self.settings, group_id=stage.group,
            fetch_max_wait_ms=stage.batch_wait_ms,
            max_partition_fetch_bytes=stage.max_partition_fetch_bytes,
            session_timeout_ms=stage.session_timeout_ms,
            heartbeat_interval_ms=max(100, stage.session_timeout_ms // 10),
        )
        self.consumer.subscribe(list(stage.inputs), listener=_Listener(self))
        try:  # a set-up failing while a broker is away closes what it made, as a session does
            await self.read_limits()
            self.producer = self._new_producer()
            await self.producer.start()
            await self.consumer.start()
            self.running = True
            while not stop.is_set():
                if self.exactly_once:
                    await self._exactly_once_step()
                else:
                    await self._at_least_once_step()
            async with self.lock:  # stopping: what was read commits
                if self.unit is not None:
                    await self._commit()
        finally:
            self.running = False
            await self._close()

    async def _close(self) -> None:
        if self.unit is not None:
            self.unit.forget()
            if self.producer is not None and self.exactly_once:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.producer.abort_transaction(), 10.0)
        self.unit = None
        self.fresh.clear()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            self.consumer = None
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
            self.producer = None

    def _consumer(self) -> AIOKafkaConsumer:
        assert self.consumer is not None, "no session running"
        return self.consumer

    def _producer(self) -> AIOKafkaProducer:
        assert self.producer is not None, "no session running"
        return self.producer

    async def _handle(self, records: list[Record], unit: _Unit) -> None:
        """The handler on one partition's records, the records refused twice before
        dead-lettered instead (see :attr:`refused`)."""
        out = Outputs(self, self._producer(), unit)
        if self.refused:
            todo = []
            for r in records:
                coords = (r.topic, r.partition, r.offset)
                exc = self.refused.pop(coords, None)
                if exc is not None and self.refusals[coords] > 1:
                    await out.dead_letter(r, exc)
                else:
                    todo.append(r)
            records = todo
        if records:
            await self.handler.handle(records, out)

    # --- exactly once --------------------------------------------------------------

    async def _exactly_once_step(self) -> None:
        """One poll into the open transaction (begun by the first records), and its commit
        when a bound is reached or the poll came back empty."""
        s = self.stage
        unit = self.unit
        if unit is None:
            wait_ms, room = s.batch_wait_ms, s.batch_max_records
        else:
            left_ms = s.commit_interval_ms - (time.monotonic() - unit.started) * 1000
            wait_ms = int(max(0.0, min(s.commit_linger_ms, left_ms)))
            room = max(1, min(s.batch_max_records, s.commit_max_records - unit.records))
        batch = await self._consumer().getmany(timeout_ms=wait_ms, max_records=room)
        check_subscription(self._consumer())  # an empty poll may be a refused topic
        async with self.lock:
            if self.broken is not None:
                raise self.broken
            if batch:
                if self.before_batch is not None:
                    await self.before_batch()
                await self._add(batch)
            unit = self.unit
            if unit is not None and (
                    not batch or unit.records >= s.commit_max_records
                    or (time.monotonic() - unit.started) * 1000 >= s.commit_interval_ms):
                try:
                    committed = await self._commit()
                except FencedByGroupError:
                    await self._fenced_by_group()
                else:
                    if committed:
                        self._allowed()
            elif unit is None and not batch:
                self._allowed()

    async def _fenced_by_group(self) -> None:
        """A zombie's transaction was refused and aborted: the partitions are someone
        else's now. Each starts again from its committed offset (a rebalance reassigns
        them anyway), on a new producer: a batch of the aborted transaction that was
        waiting to be sent again (a produce timed out while the broker did not answer) is
        not flushed by aiokafka's abort, and sent later it joined the *next* transaction,
        which then committed that record a second time (seen under a broker paused past
        the session timeout). The new producer's epoch fences it."""
        log.warning(f"{self.stage.name} lost its partitions while a transaction was open: the "
                    "group refused its offsets (KIP-447); the transaction is aborted, it rejoins")
        await self._replace_producer()
        self.fresh |= self._consumer().assignment()

    async def _add(self, batch: dict[TopicPartition, list[Record]]) -> None:
        consumer = self._consumer()
        assignment = consumer.assignment()
        batch = {tp: rs for tp, rs in batch.items() if rs and tp in assignment}
        fresh = [tp for tp in batch if tp in self.fresh]
        if fresh:
            # the position was read without waiting for open transactions: start from the
            # committed offset once no transaction holds it (a zombie's aborts, a
            # predecessor's commits)
            committed = await fetch_stable_offsets(
                consumer, fresh, timeout=self.stage.transaction_timeout_ms / 1000 + 30)
            for tp in fresh:
                self.fresh.discard(tp)
                start = committed.get(tp) or 0
                records = [r for r in batch[tp] if r.offset >= start]
                if not records or records[0].offset != start:
                    consumer.seek(tp, start)
                    del batch[tp]
                else:
                    batch[tp] = records
        if not batch:
            return
        producer = self._producer()
        unit = self.unit
        if unit is None:
            await producer.begin_transaction()
            unit = self.unit = _Unit()
        for tp, records in batch.items():
            self.attempt.setdefault(tp, records[0].offset)
        for tp, records in batch.items():
            try:
                await self._handle(records, unit)
            except BaseException:
                await self._abort()
                raise
            unit.offsets[tp] = records[-1].offset + 1
            unit.records += len(records)

    async def _commit(self) -> bool:
        """Commit the open transaction with its offsets, fenced by the group generation,
        once every send in it is acknowledged. A failed send aborts it instead and the
        runner starts over from the committed offsets (:meth:`_written_again`): False.
        On any other failure it is aborted and the error raised."""
        unit = self.unit
        assert unit is not None
        producer = self._producer()
        try:
            failures = await unit.settle()
            if failures:
                await self._written_again(failures)
                return False
            if unit.offsets:
                await producer.send_offsets_to_transaction(unit.offsets, group_metadata(self._consumer()))
            await producer.commit_transaction()
        except BaseException:
            await self._abort()
            raise
        self.unit = None
        self.attempt = {}
        self.failures = 0
        self._went_on(unit)
        return True

    async def _abort(self) -> None:
        if self.unit is not None:
            self.unit.forget()
        self.unit = None
        with contextlib.suppress(Exception):
            # bounded: a producer whose broker does not answer is replaced or closed next
            await asyncio.wait_for(self._producer().abort_transaction(), 10.0)

    async def _written_again(self, failures: SendFailures) -> None:
        """Sends of the open transaction failed: abort it (nothing of it commits), replace
        the producer, and start every partition again from its committed offset."""
        self._refused_writes(failures)
        await self._abort()
        await self._replace_producer()
        await self._rewind()

    async def _rewind(self) -> None:
        """Every held partition back to its committed offset, once no transaction holds it:
        the consumer's position is past what the aborted transaction read."""
        consumer = self._consumer()
        held = list(consumer.assignment())
        committed = await fetch_stable_offsets(
            consumer, held, timeout=self.stage.transaction_timeout_ms / 1000 + 30)
        for tp in held:
            start = committed.get(tp)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            self.fresh.discard(tp)

    # --- both -------------------------------------------------------------------------

    def _went_on(self, unit: _Unit) -> None:
        """A unit of work committed: its callbacks run, whatever kept failing is over."""
        self.refusals.clear()
        self.write_failures = 0
        self.trouble = None
        for callback in unit.committed:
            callback()

    def _refused_writes(self, failures: SendFailures) -> None:
        """Log and count a unit of work's failed sends; remember the records refused."""
        for origin, exc in failures.records.items():
            self.refused[origin] = exc
            self.refusals[origin] += 1
        name = self.stage.name
        if failures.records:
            WRITE_FAILURES.labels(name, "record").inc(len(failures.records))
        if failures.producer:
            WRITE_FAILURES.labels(name, "producer").inc(len(failures.producer))
        self.write_failures += 1
        if self.write_failures >= STUCK_AFTER:
            self.trouble = f"writes failed {self.write_failures} times in a row ({failures.kinds()})"
        log.warning(f"{name}: writes refused ({failures.kinds()}); nothing of that work is "
                    "committed, it is written again on a new producer from the committed offsets"
                    + ("; a record refused for itself goes again in a batch within the limit read "
                       "again, and to dead-letters if refused twice" if failures.records else ""),
                    extra={"refused": failures.kinds()})

    async def _replace_producer(self) -> None:
        """A new producer in place of one whose writes failed or whose transaction was
        aborted (a new producer id or epoch: its sequence numbers start again, and a late
        batch of the old one is fenced), and the topics' limits read again."""
        old = self.producer
        self.producer = None
        with contextlib.suppress(Exception):  # the last limits stand until the next refusal
            await self.read_limits()
        # the new one first: its InitProducerId bumps the transactional id's epoch, so what
        # the old one still sends while it stops (a batch of an aborted transaction waiting
        # to be sent again) is refused as fenced, never written into a later transaction
        new = self._new_producer()
        try:
            await new.start()
        finally:
            if old is not None:
                try:
                    await asyncio.wait_for(old.stop(), 5.0)
                except Exception:
                    await abandon_producer(old)
        self.producer = new

    # --- at least once ----------------------------------------------------------

    async def _at_least_once_step(self) -> None:
        batch = await self._consumer().getmany(
            timeout_ms=self.stage.batch_wait_ms, max_records=self.stage.batch_max_records)
        check_subscription(self._consumer())  # an empty poll may be a refused topic
        if not batch:
            self._allowed()
            return
        async with self.lock:
            self.attempt = {tp: rs[0].offset for tp, rs in batch.items() if rs}
            if self.before_batch is not None:
                await self.before_batch()
            await self._at_least_once(batch)
            self.attempt = {}
            self.failures = 0
            self._allowed()

    async def _at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Write the batch's outputs and commit the consumer's positions once all are
        acknowledged (past a transactional input's commit markers, KAFKA-6607); a failed
        send commits nothing: the producer is replaced and the batch read again from its
        first offsets."""
        consumer = self._consumer()
        unit = _Unit()
        for records in batch.values():
            if records:
                await self._handle(records, unit)
        failures = await unit.settle()
        if failures:
            self._refused_writes(failures)
            await self._replace_producer()
            for tp, records in batch.items():
                if records:
                    consumer.seek(tp, records[0].offset)
            return
        offsets = {}
        for tp, records in batch.items():
            if records:
                offsets[tp] = max(records[-1].offset + 1, await consumer.position(tp))
        try:
            await consumer.commit(offsets)
        except CommitFailedError:
            # the partitions went to another member, which reads them again from the last
            # commit: at least once allows what it writes twice
            log.info(f"{self.stage.name}: commit refused after a rebalance; the new owner reads again")
            return
        self._went_on(unit)
