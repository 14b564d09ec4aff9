"""The stage runner: a consume → produce stage is declared, and this runs it — exactly
once, at least once in order, or at least once concurrently with each key in order.

A stage is a :class:`Stage` (its name, input and output topics, consumer group and
guarantee) and a handler. An ordered stage's handler, ``handle(records, out)``, turns
one partition's records, in order, into writes on ``out`` (:class:`Outputs`); a
concurrent stage's (:data:`RecordHandler`) takes one record and hands back the broker
acknowledgements of what it wrote. The handler holds the domain; the runner holds
everything Kafka: the session (consumer, producer, the group's rebalances),
transactions and commits, refusals and backoff, failed writes, dead letters of records
that cannot be written, and what ``/readyz`` says. Kafka Streams' ``StreamThread`` and
Quix Streams' ``Application`` are the models; enrich and insights' route run ordered,
notify's events, retry schedule and digest windows concurrently.

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

**Concurrent, in order per key** (:attr:`Guarantee.AT_LEAST_ONCE_CONCURRENT`,
:class:`ConcurrentSession`; Confluent's Parallel Consumer's key ordering is the model):
each record is handled in a task of its own, so a slow delivery never blocks the poll
nor the other keys; the records of one key (within its partition) one after the other —
the next starts once the handler returned for the one before (its writes may still be
on their way; their order on a partition is the producer's). A record with no key is
handled at once. At most :attr:`Stage.max_in_flight` records are taken and not yet
handled (running, or waiting for their key); offsets commit in batches, per partition
up to the first record not done — done is its handler returned *and* every
acknowledgement it handed back resolved — and to the consumer's position once all are
(past a transactional input's commit markers, KAFKA-6607): Spring Kafka's out-of-order
acknowledgements defer commits the same way. The handler writes on the service's own
producer and hands back the acknowledgements; the runner counts nothing done before
them.

A record whose handler fails, or whose writes fail, is not committed; it is tried again
in this process after a backoff (1 s doubling to 5 s), never left for a restart. While
its handler keeps failing its key waits; a record whose writes failed after its handler
returned is handled again after its key's later records (at least once). What the
failure means decides how often (:mod:`shared.write_failures`): a failure of the
producer or the broker (a timeout, a broker away, ``OutOfOrderSequenceNumber``) is tried
for as long as it lasts; a write refused for the record itself, or a handler raising
anything but a Kafka error, :data:`RECORD_ATTEMPTS` times, and then the record goes to
``dead-letters`` (``dead_letter``) with the reason and the stream (and its key) goes on.
A record its handler gives up (:class:`Abandoned`: shutting down) is read again after a
restart or rebalance. The broker refusing the stage's fetches, commits or writes is a
wait, not a failure: one line naming who may not do what, the refusal in ``access``
(readiness), and a retry with backoff up to 5 s; while the group refuses its commits no
new records are taken. On a revocation the records started of the partitions going
away are waited for (``revoke_grace_ms``) and committed; those waiting for their key
are not started (:meth:`ConcurrentSession.hold_back`), nor are those taken while the
revocation waits: the next owner reads them. A record failing for 30 s or
more is named by :attr:`StageRunner.trouble`, and one log line per kind of failure per
30 s says what keeps failing (:class:`FailureLog`); failed writes are counted in
``anting_write_failures_total``, consumers replaced (their group coordination ended) in
``anting_worker_restarts_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeAlias, cast

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import OffsetAndMetadata, RecordMetadata

from shared.aiokafka_ext import (
    FencedByGroupError,
    TransactionalProducer,
    fetch_stable_offsets,
    group_metadata,
    is_fenced,
    restart_offset_fetch,
)
from shared.deadletters import DeadLetterWriter, fit, from_record
from shared.kafka import (
    PRODUCER_MAX_REQUEST_BYTES,
    RECORD_OVERHEAD_BYTES,
    SAFE_PRODUCER,
    abandon_producer,
    leaders_settled,
    make_consumer,
    make_producer,
    max_message_bytes,
    record_size,
)
from shared.kafka_access import (
    AccessStatus,
    Backoff,
    Doing,
    check_subscription,
    denial,
    refusal,
    until_allowed,
)
from shared.metrics import WORKER_RESTARTS, WRITE_FAILURES
from shared.settings import AntingSettings
from shared.write_failures import Coordinates, SendFailures, refuses_the_record, settle

__all__ = ["BARE_LETTER_BYTES", "RECORD_ATTEMPTS", "STUCK_AFTER", "Abandoned", "Ack", "Acks",
           "ConcurrentSession", "DeadLetterer", "FailureLog", "Guarantee", "Handler", "OffsetTracker",
           "Outputs", "Record", "RecordHandler", "RecordTooLarge", "Stage", "StageRunner"]

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
Ack: TypeAlias = asyncio.Future[RecordMetadata]  # a send's broker acknowledgement

#: a session (or its writes) failing this many times in a row is stuck, not unlucky
STUCK_AFTER = 3
#: a transaction open this much longer than its commit interval went through a stall (ms)
STALLED_MS = 1000
#: a dead letter the broker refused once already goes again with its value cut to this
BARE_LETTER_BYTES = 2048


class Guarantee(StrEnum):
    """How a stage's input offsets commit with its output."""

    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"
    #: at least once, records handled concurrently, those of one key in order
    AT_LEAST_ONCE_CONCURRENT = "at_least_once_concurrent"


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
    max_in_flight: int = 256
    revoke_grace_ms: int = 0
    stop_grace_ms: int = 10000


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
    :meth:`run`'s stop event is set: a :class:`Handler` for an ordered stage, a
    :data:`RecordHandler` (one record, its acknowledgements back) for a concurrent one.
    ``before_batch`` is awaited before each batch of an ordered stage (enrich catches its
    catalog up there); ``on_assigned`` and ``dead_letter`` are a concurrent stage's (see
    :class:`ConcurrentSession`). :attr:`running` while in the group, :attr:`access` the
    broker's refusals (``access``: a service's own, to share it), :attr:`trouble` what keeps
    failing (both for ``/readyz``)."""

    def __init__(self, stage: Stage, settings: AntingSettings, handler: Handler | RecordHandler, *,
                 before_batch: Callable[[], Awaitable[None]] | None = None,
                 access: AccessStatus | None = None,
                 on_assigned: Callable[[int, int], Awaitable[None]] | None = None,
                 dead_letter: DeadLetterer | None = None) -> None:
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
        self.stuck: str | None = None  # what keeps failing (an ordered stage's trouble)
        self.access = access or AccessStatus()  # shared with the service's other parts, if given
        self.backoff = Backoff(cap=self.access.cap)
        #: the topics a transaction's markers go to: what it writes, and the group's offsets
        self.marked = frozenset((*stage.outputs, stage.dead_letters, "__consumer_offsets"))
        self.doing = Doing(reads=stage.inputs, writes=(*stage.outputs, stage.dead_letters),
                           group=stage.group,
                           transactional_id=self.transactional_id if self.exactly_once else None)
        self._restarts = WORKER_RESTARTS.labels(stage.name)  # exported from the start, at 0
        #: a concurrent stage's work (None for an ordered one)
        self.concurrent: ConcurrentSession | None = None
        if stage.guarantee is Guarantee.AT_LEAST_ONCE_CONCURRENT:
            self.concurrent = ConcurrentSession(self, cast(RecordHandler, handler),
                                                on_assigned=on_assigned, dead_letter=dead_letter)

    @property
    def trouble(self) -> str | None:
        """What keeps failing, for ``/readyz`` (``None`` while nothing does): an ordered
        stage's session or writes failing :data:`STUCK_AFTER` times in a row, a concurrent
        stage's record failing for 30 s or more (:meth:`ConcurrentSession.trouble`)."""
        if self.concurrent is not None:
            return self.concurrent.trouble()
        return self.stuck

    def assignment(self) -> set[TopicPartition]:
        """The partitions this runner's consumer holds now (none between sessions)."""
        consumer = self.concurrent.consumer if self.concurrent is not None else self.consumer
        return set(consumer.assignment()) if consumer is not None else set()

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
        """Sessions until ``stop``; a failed session is torn down and started again (a
        concurrent stage's: one session, its failures handled per record)."""
        if self.concurrent is not None:
            await self.concurrent.run(stop)
            return
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
            self.stuck = f"the session failed {self.failures} times in a row at {where}"
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
                await self._abort_transaction(self.producer)
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
            await cast(Handler, self.handler).handle(records, out)

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
            if (time.monotonic() - unit.started) * 1000 > self.stage.commit_interval_ms + STALLED_MS:
                # open through a stall (a broker or this process paused): the commit marker
                # is skipped on a partition that has no leader as it is written, and the
                # records stay open until this producer's next marker there decides them
                await leaders_settled(producer, 5.0, topics=self.marked)
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
        await self._abort_transaction(self._producer())

    async def _abort_transaction(self, producer: AIOKafkaProducer) -> None:
        """Abort the open transaction once every partition has a leader again
        (:func:`shared.kafka.leaders_settled`: a coordinator skips the abort marker of a
        partition it finds leaderless, and the aborted records would be committed by the
        next commit marker). Bounded at 10 s in all: a producer whose broker does not
        answer is replaced or closed next. Never raises."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10.0):
                t0 = time.monotonic()
                missing = await leaders_settled(producer, 5.0, topics=self.marked)
                if missing:
                    log.warning(f"{self.stage.name}: aborting while partitions have no leader "
                                f"({', '.join(missing[:5])}); their abort markers may be skipped")
                elif time.monotonic() - t0 > 0.1:
                    log.info(f"{self.stage.name}: the abort waited {time.monotonic() - t0:.1f} s "
                             "for every partition to have a leader again")
                await producer.abort_transaction()

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
        self.stuck = None
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
            self.stuck = f"writes failed {self.write_failures} times in a row ({failures.kinds()})"
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
        except BaseException:
            # no new epoch fences the old producer's batches (a broker away, a coordinator
            # moving): they belong to work already aborted or refused, so they are dropped,
            # never flushed (stop() would send them, into no transaction or a later one)
            if old is not None:
                await abandon_producer(old)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(new.stop(), 5.0)
            raise
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


# --- concurrent, in order per key ------------------------------------------------------

#: what a concurrent stage's handler returns: ``None`` (its work is done), or the broker
#: acknowledgements of the records it wrote — one awaitable, or a list of futures — to wait
#: for before the record counts as done (and may be committed)
Acks: TypeAlias = Awaitable[Any] | list[asyncio.Future[Any]] | None
#: a concurrent stage's domain: one input record to its work, run as a task of its own
RecordHandler: TypeAlias = Callable[[Record], Awaitable[Acks]]
#: writes the input record to ``dead-letters`` with the reason; returns the write's ack
DeadLetterer: TypeAlias = Callable[[Record, BaseException], Awaitable[Any]]

#: how often a record of a concurrent stage is tried when the failure is its own (see the
#: module) before it is dead-lettered: the second try is on a renewed producer, after the
#: limits were read again
RECORD_ATTEMPTS = 3


class FailureLog:
    """Logs records left uncommitted by a failure once per kind of failure per ``window``
    seconds, with its traceback, and how many more failed the same way since the last
    line: while a broker is away every record in flight fails alike, and one line (not
    one per record) says what happened. A kind is what failed and the exception's type."""

    def __init__(self, name: str, window: float = 30.0) -> None:
        self.name = name
        self.window = window
        self.reported: dict[tuple[str, str], float] = {}  # kind -> when last logged (monotonic)
        self.since: dict[tuple[str, str], int] = {}  # kind -> failures not logged since

    def failed(self, what: str, exc: BaseException | None) -> None:
        """One record failed (``exc`` None: cancelled); log it unless its kind was logged
        less than ``window`` seconds ago."""
        kind = (what, type(exc).__name__ if exc is not None else "cancelled")
        now = time.monotonic()
        last = self.reported.get(kind)
        if last is not None and now - last < self.window:
            self.since[kind] = self.since.get(kind, 0) + 1
            return
        more = self.since.pop(kind, 0)
        self.reported[kind] = now
        tail = f" ({more} more records failed the same way since the last such line)" if more else ""
        log.error("%s: %s; the record stays uncommitted and is tried again%s",
                  self.name, what, tail, exc_info=exc)


class Abandoned(Exception):
    """A concurrent stage's handler gave its record up for now (shutting down): its offset
    is not committed, and the records after it of its key are not handled."""


class OffsetTracker:
    """Per partition: the offsets taken and not done yet, the offset after the last one
    taken, and the offset last committed; what may be committed now."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.generation = 0  # moves on whenever partitions are forgotten (handed over)
        # per partition, how many times it was forgotten: work begun before a handover
        # tells by it that the partition changed hands meanwhile
        self.handovers: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` of ``tp`` was taken: pending until :meth:`done`."""
        pending = self.pending.get(tp)
        if pending is None:
            pending = self.pending[tp] = set()
        pending.add(offset)
        if offset >= self.next.get(tp, 0):
            self.next[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        """``offset`` of ``tp`` is done (a commit may pass it)."""
        if tp in self.pending:
            self.pending[tp].discard(offset)

    def forget(self, tps: Collection[TopicPartition]) -> None:
        """The partitions changed hands: nothing of them is pending or committed here."""
        self.generation += 1
        for tp in tps:
            self.handovers[tp] = self.handovers.get(tp, 0) + 1
            self.pending.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)

    def settled(self) -> list[TopicPartition]:
        """The partitions every record taken from is done (nothing pending)."""
        return [tp for tp in self.next if not self.pending.get(tp)]

    def committable(
        self, positions: dict[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit now, for the partitions whose commit would move on.

        A partition with work pending commits its first offset not done. One with
        nothing pending commits the consumer's position there (``positions``, read just
        before this call) when it is at or past the last record taken, else the offset
        after that record. Why the position (Kafka Streams does the same since
        KAFKA-6607): on a topic written in transactions the offset after a transaction's
        last record is its commit marker, which a consumer skips but never returns;
        committing last record + 1 leaves every partition one behind its end for good,
        so outside tools read a lag of 1 where there is none. The records between the
        last one taken and the position are markers or aborted records: nothing to do."""
        out = {}
        for tp, nxt in self.next.items():
            pending = self.pending.get(tp)
            if pending:
                upto = min(pending)
            else:
                pos = positions.get(tp) if positions else None
                # a position behind ``nxt`` was read before more records were taken
                upto = pos if pos is not None and pos >= nxt else nxt
            if upto > self.committed.get(tp, -1):
                out[tp] = OffsetAndMetadata(upto, "")
        return out

    def in_flight(self) -> int:
        """How many records taken are not done yet."""
        return sum(len(p) for p in self.pending.values())


class _ConcurrentListener(ConsumerRebalanceListener):
    def __init__(self, session: ConcurrentSession) -> None:
        self.session = session

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # Finish what is in flight for these partitions and commit it before the group
        # hands them over, so the next owner starts after it instead of sending it again
        # (bounded: the group waits for this member only so long).
        s = self.session
        s.hold_back(revoked)
        try:
            await s.drain(revoked, s.stage.revoke_grace_ms / 1000)
        finally:
            s.revoking.difference_update(revoked)
        await s.commit()
        s.forget(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        s = self.session
        if s.on_assigned is not None:
            consumer = s.consumer
            total = sum(len(consumer.partitions_for_topic(t) or ()) for t in s.stage.inputs)
            await s.on_assigned(len(consumer.assignment()), total)


class ConcurrentSession:
    """A :attr:`Guarantee.AT_LEAST_ONCE_CONCURRENT` stage's work (see the module): runs
    ``handler`` on every record of the stage's inputs, each in a task of its own, the
    records of one key one after the other, at most :attr:`Stage.max_in_flight` taken and
    not handled at a time; commits finished work every :attr:`Stage.commit_interval_ms`.

    ``on_assigned(held, total)``: awaited after each rebalance, before records are taken
    (notify's ledger catches up there). ``dead_letter`` writes a record whose failure is
    its own, :data:`RECORD_ATTEMPTS` times over (without it such a record is tried for
    as long as it fails). The runner's ``access`` holds the broker's refusals of this
    stage (fetch, commit, its handler's writes): each is a wait, not a failure."""

    def __init__(self, runner: StageRunner, handler: RecordHandler, *,
                 on_assigned: Callable[[int, int], Awaitable[None]] | None = None,
                 dead_letter: DeadLetterer | None = None) -> None:
        self.runner = runner
        self.stage = stage = runner.stage
        self.settings = runner.settings
        self.handler = handler
        self.on_assigned = on_assigned
        self.dead_letter = dead_letter
        self.max_in_flight = stage.max_in_flight
        self.name = stage.name
        self.consumer: AIOKafkaConsumer = self._new_consumer()
        self.failures = FailureLog(stage.name)
        self._settled = asyncio.Event()  # set whenever a record is done
        self.tracker = OffsetTracker()
        self.tasks: set[asyncio.Task[None]] = set()
        self.acks: set[asyncio.Future[Any]] = set()  # handed back by handlers, not yet resolved
        # per (partition, key) whose record is being handled: the records of that key
        # taken since, in offset order, waiting for it (taken records count in flight)
        self.keys: dict[tuple[TopicPartition, bytes], deque[Record]] = {}
        self.waiting = 0
        # per partition being revoked: the offsets of the records that were waiting for
        # their key, never started here (pending still: no commit passes them)
        self.held_back: dict[TopicPartition, set[int]] = {}
        # the partitions being revoked: records of theirs taken meanwhile are held back too
        # (the poll goes on while a revocation drains; the next owner reads them)
        self.revoking: set[TopicPartition] = set()
        self.stopping = False  # no record waiting for its key starts once set
        self.paused = False  # only after ``stalled_after`` seconds without room (see _poll)
        self.stalled_after = 60.0  # well inside the group's max.poll.interval (300 s)
        self._room = asyncio.Event()  # set when in-flight work drops below the resume mark
        self._full_since: float | None = None  # when in-flight work last reached the maximum
        self.access = runner.access
        self.kafka = runner.settings.kafka
        self.reading = Doing(reads=stage.inputs, group=stage.group)
        self.writing = Doing(writes=(*stage.outputs, stage.dead_letters))
        self.backoff = Backoff(cap=self.access.cap)
        self._refused: set[str] = set()  # which of poll, commit, writes is refused now
        self._resubscribed = False  # since the group refused this member (see run)
        # per record tried again: how many times it failed for a reason of its own
        self.attempts: dict[tuple[TopicPartition, int], int] = {}
        self.retry_backoff = Backoff(cap=5.0)  # failures that are not refusals
        # per record failing now: since when (monotonic) and the last failure's kind
        self.failing: dict[tuple[TopicPartition, int], tuple[float, str]] = {}

    def _new_consumer(self) -> AIOKafkaConsumer:
        s = self.stage
        return make_consumer(self.settings, group_id=s.group, max_poll_records=s.batch_max_records,
                             session_timeout_ms=s.session_timeout_ms,
                             heartbeat_interval_ms=min(3000, s.session_timeout_ms // 3))

    def subscribe(self) -> None:
        """Subscribe the consumer to the stage's inputs, with this session's listener."""
        self.consumer.subscribe(list(self.stage.inputs), listener=_ConcurrentListener(self))

    def in_flight(self) -> int:
        """Records taken and not done yet: running, waiting for their key, or handled and
        waiting for the work their handler handed back (a notify event's first attempts)."""
        return self.tracker.in_flight()

    def forget(self, tps: Collection[TopicPartition]) -> None:
        """The partitions changed hands: their offsets, retries and keys are the next
        owner's (it reads their uncommitted records again)."""
        tps = set(tps)
        self.tracker.forget(tps)
        for key in [k for k in self.attempts if k[0] in tps]:
            del self.attempts[key]
        for key in [k for k in self.failing if k[0] in tps]:
            del self.failing[key]
        for held in [k for k in self.keys if k[0] in tps]:
            self.waiting -= len(self.keys.pop(held))
        for tp in tps:
            self.held_back.pop(tp, None)
        if self.in_flight() <= self.max_in_flight * 3 // 4:
            self._room.set()

    def hold_back(self, tps: Collection[TopicPartition]) -> None:
        """The partitions are being revoked: the records of theirs waiting for their key
        do not start here (the next owner reads them from the committed offset, which
        stops at the first of them); only those started are waited for."""
        tps = set(tps)
        self.revoking |= tps
        for (tp, _), queue in self.keys.items():
            if tp in tps and queue:
                self.held_back.setdefault(tp, set()).update(r.offset for r in queue)
                self.waiting -= len(queue)
                queue.clear()

    async def _replace_consumer(self) -> None:
        """A new consumer in the group in place of one whose coordination died: what the
        old one held is forgotten (the group reassigns it; uncommitted records are read
        again), in-flight work finishes on its own and commits nothing for it."""
        log.warning("%s: the consumer's group coordination ended; joining again with a new consumer",
                    self.name)
        self.runner._restarts.inc()
        self.forget(list(self.tracker.next) + [k[0] for k in self.keys])
        self.attempts.clear()
        self.failing.clear()
        old = self.consumer
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(old.stop(), 10.0)
        self.consumer = self._new_consumer()
        await self.consumer.start()
        self.subscribe()

    async def positions(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer's position on each of ``tps`` it still holds; one it cannot tell
        within half a second (being reset) is left out, and the next commit has it."""
        held = self.consumer.assignment()
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            if tp not in held:
                continue
            try:
                out[tp] = await asyncio.wait_for(self.consumer.position(tp), 0.5)
            except Exception:  # e.g. revoked meanwhile: commit the tracked offset instead
                continue
        return out

    def _refuse(self, part: str, line: str) -> None:
        self._refused.add(part)
        self.access.refused(line, f"{self.name}.{part}")

    def _allow(self, part: str) -> None:
        if part in self._refused:
            self._refused.discard(part)
            self.access.restored(f"{self.name}.{part}")
            if not self._refused:
                self.backoff.reset()

    def _writes_refused(self, exc: BaseException | None) -> str | None:
        """The refusal line when ``exc`` is the broker refusing this stage's writes."""
        if exc is None:
            return None
        return denial(exc, self.kafka, self.writing)

    # --- records -----------------------------------------------------------------------

    def _take(self, tp: TopicPartition, record: Record) -> None:
        """A polled record: pending until done; handled now, or after the record of its key
        being handled (and those of the key taken before it). A record with no key has no
        order to keep: it is handled at once."""
        self.tracker.add(tp, record.offset)
        if tp in self.revoking:
            self.held_back.setdefault(tp, set()).add(record.offset)
            return
        if record.key is not None:
            held = (tp, record.key)
            queue = self.keys.get(held)
            if queue is not None:
                queue.append(record)
                self.waiting += 1
                return
            self.keys[held] = deque()
        self._start(tp, record)

    def _start(self, tp: TopicPartition, record: Record) -> None:
        task = asyncio.create_task(self._run_one(tp, record))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _next_of_key(self, tp: TopicPartition, record: Record, handovers: int) -> None:
        """``record``'s handler is through with it (handled, or dead-lettered): the next
        record of its key starts. Nothing, if its partition changed hands meanwhile (its
        keys went with it)."""
        if record.key is None or self.tracker.handovers.get(tp, 0) != handovers or self.stopping:
            return
        held = (tp, record.key)
        queue = self.keys.get(held)
        if queue is None:
            return
        if not queue:
            del self.keys[held]
            return
        self.waiting -= 1
        self._start(tp, queue.popleft())

    def _finished(self, tp: TopicPartition, offset: int) -> None:
        self.tracker.done(tp, offset)
        self._settled.set()
        if self.in_flight() <= self.max_in_flight * 3 // 4:
            self._room.set()
        if self.attempts and self.attempts.pop((tp, offset), None) is not None and not self.attempts:
            self.retry_backoff.reset()
        if self.failing:
            self.failing.pop((tp, offset), None)
        if self._refused:
            self._allow("writes")

    async def drain(self, tps: Collection[TopicPartition], timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) until every record taken from ``tps`` is done,
        but those held back (:meth:`hold_back`)."""
        deadline = time.monotonic() + timeout
        while any(self.tracker.pending.get(tp, set()) - self.held_back.get(tp, set()) for tp in tps):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), left)

    async def _run_one(self, tp: TopicPartition, record: Record, *, holds_key: bool = True) -> None:
        """The handler on ``record``; with ``holds_key`` (its key's records after it wait
        for it) the next of its key starts once the handler returned."""
        handovers = self.tracker.handovers.get(tp, 0)
        try:
            acks = await self.handler(record)
        except (Abandoned, asyncio.CancelledError):
            return  # not done, nor its key: read again after a restart or rebalance
        except Exception as exc:
            self._failed(tp, record, "handler failed", exc, handled=not holds_key)
            return
        if holds_key:
            # the handler's work is done: the next record of the key goes on while this
            # one's writes are acknowledged (their order on a partition is the producer's)
            self._next_of_key(tp, record, handovers)
        if acks is None:
            self._finished(tp, record.offset)
            return
        if isinstance(acks, list):  # broker-ack futures: count them down, no gather per record
            self._count_down(acks, tp, record)
            return
        fut = asyncio.ensure_future(acks)
        self.acks.add(fut)
        fut.add_done_callback(lambda f: self._acked(f, tp, record))

    def _failed(self, tp: TopicPartition, record: Record, what: str,
                exc: BaseException | None, *, handled: bool = True) -> None:
        """A record's work failed: refused writes are retried (see the class); any other
        failure is logged once per kind and the record tried again after a backoff, or,
        when the failure is the record's own and it has had :data:`RECORD_ATTEMPTS`
        tries, dead-lettered (see the module). ``handled``: its handler returned (its
        writes failed), so its key went on already; else the key waits for the retry."""
        line = self._writes_refused(exc)
        if line is not None:
            self._refuse("writes", line)
            self._again(tp, record, handled=handled)
            return
        self.failures.failed(what, exc)
        if exc is not None and what == "writes not acknowledged":
            kind = "record" if refuses_the_record(exc) else "producer"
            WRITE_FAILURES.labels(self.name, kind).inc()
        since = self.failing.get((tp, record.offset), (time.monotonic(), ""))[0]
        self.failing[(tp, record.offset)] = (since, f"{what}: {type(exc).__name__ if exc else 'cancelled'}")
        own = exc is not None and (refuses_the_record(exc) or not isinstance(exc, KafkaError))
        if own:
            n = self.attempts[(tp, record.offset)] = self.attempts.get((tp, record.offset), 0) + 1
            if n >= RECORD_ATTEMPTS and self.dead_letter is not None and exc is not None:
                self._give_up(tp, record, exc, handled=handled)
                return
        else:
            self.attempts.setdefault((tp, record.offset), 0)
        self._again(tp, record, self.retry_backoff, handled=handled)

    def trouble(self, after: float = 30.0) -> str | None:
        """What ``/readyz`` says while a record has kept failing for ``after`` seconds or
        more (``None`` otherwise): the stage, the record's coordinates, how long, and why."""
        if not self.failing:
            return None
        (tp, offset), (since, why) = min(self.failing.items(), key=lambda kv: kv[1][0])
        age = time.monotonic() - since
        if age < after:
            return None
        return (f"{self.name}: {tp.topic}[{tp.partition}]@{offset} has been failing for {age:.0f} s "
                f"({why}); it is tried again, and nothing after it on that partition is committed")

    def _give_up(self, tp: TopicPartition, record: Record, exc: BaseException, *, handled: bool) -> None:
        """Write ``record`` to ``dead-letters`` with ``exc`` as the reason; done once the
        letter is acknowledged, and then the next record of its key goes on (a letter that
        cannot be written is tried again, after the backoff, as long as the partition is
        this session's)."""
        assert self.dead_letter is not None
        dead_letter = self.dead_letter
        handovers = self.tracker.handovers.get(tp, 0)

        async def write() -> None:
            while self.tracker.handovers.get(tp, 0) == handovers:
                try:
                    ack = await dead_letter(record, exc)
                    if ack is not None:
                        await ack
                except asyncio.CancelledError:
                    return
                except Exception as failed:
                    self.failures.failed("dead letter not written", failed)
                    await asyncio.sleep(self.retry_backoff.delay())
                    continue
                log.warning("%s: record dead-lettered after %d tries", self.name, RECORD_ATTEMPTS,
                            extra={"topic": record.topic, "partition": record.partition,
                                   "offset": record.offset, "error": type(exc).__name__,
                                   "reason": str(exc)[:200]})
                if not handled:
                    self._next_of_key(tp, record, handovers)
                self._finished(tp, record.offset)
                return

        task = asyncio.create_task(write())
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _again(self, tp: TopicPartition, record: Record, backoff: Backoff | None = None, *,
               handled: bool = True) -> None:
        """Run the handler on ``record`` again after the backoff (its writes were refused
        or failed); the record stays pending meanwhile, so no commit passes it, and so
        does its key when its handler failed (``handled`` False). If its partition changes
        hands meanwhile the retry is dropped: its new owner reads the record again from the
        committed offset, and a late ``done`` here must not clear that owner's pending
        offset. A record whose writes failed after its handler returned holds no key: its
        key's later records may be handled before it runs again (at least once)."""
        handovers = self.tracker.handovers.get(tp, 0)
        delay = (backoff or self.backoff).delay()

        async def later() -> None:
            await asyncio.sleep(delay)
            if self.tracker.handovers.get(tp, 0) != handovers:
                return
            await self._run_one(tp, record, holds_key=not handled)

        task = asyncio.create_task(later())
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _count_down(self, futures: list[asyncio.Future[Any]], tp: TopicPartition, record: Record) -> None:
        left = len(futures)
        failed = False

        def one(fut: asyncio.Future[Any]) -> None:
            nonlocal left, failed
            left -= 1
            self.acks.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                if not failed:
                    failed = True
                    self._failed(tp, record, "writes not acknowledged",
                                 None if fut.cancelled() else fut.exception())
            elif left == 0 and not failed:
                self._finished(tp, record.offset)

        for fut in futures:
            self.acks.add(fut)
            fut.add_done_callback(one)

    def _acked(self, fut: asyncio.Future[Any], tp: TopicPartition, record: Record) -> None:
        self.acks.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self._failed(tp, record, "writes not acknowledged", fut.exception())
            return
        self._finished(tp, record.offset)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.in_flight() <= self.max_in_flight * 3 // 4:
            self._room.set()

    # --- commits and polls -------------------------------------------------------------

    async def commit(self) -> None:
        """Commit what :meth:`OffsetTracker.committable` allows, with the consumer's
        positions on the partitions that have nothing pending (see there). A failed
        commit is logged; the next one catches up."""
        generation = self.tracker.generation
        positions = await self.positions(self.tracker.settled())
        if self.tracker.generation != generation:
            # partitions changed hands while the positions were read: they may be from
            # before the handover, past records the new assignment has not done
            positions = {}
        offsets = self.tracker.committable(positions)
        if not offsets:
            if "commit" in self._refused:
                # nothing left to commit (e.g. the partitions went elsewhere): polls go on,
                # and a group that still refuses this member says so there
                self._allow("commit")
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # e.g. a rebalance under way: the next commit catches up
            line = denial(exc, self.kafka, self.reading)
            if line is not None:
                self._refuse("commit", line)
            else:
                log.warning("%s: commit failed", self.name, exc_info=True)
                if "commit" in self._refused:
                    self._allow("commit")  # not refused now: polls go on (and rejoin, if it was that)
            return
        if self._refused:
            self._allow("commit")
        for tp, om in offsets.items():
            self.tracker.committed[tp] = om.offset

    async def _poll(self) -> dict[TopicPartition, list[Record]]:
        """The next records, never more than there is room for in flight.

        Flow control is by how many records are asked for, not by ``pause``: aiokafka
        drops the records it has already fetched for a paused partition, so each pause
        fetched them again after the resume (measured: the topic was read about twice).
        Records not asked for wait in the fetcher's buffer, which then fetches no more
        for that partition. Once full, the session takes records again when in-flight
        work is down to three quarters (so that it fetches in chunks). Only when nothing
        frees up for long (stuck handlers) does it pause and poll, so that the group does
        not take it for dead; that poll returns only partitions assigned since (not
        paused), and their records are taken, not dropped."""
        if self._full_since is None and self.in_flight() >= self.max_in_flight:
            self._full_since = time.monotonic()
            self._room.clear()
        if self._full_since is not None:
            if self.in_flight() > self.max_in_flight * 3 // 4:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
            if self.in_flight() > self.max_in_flight * 3 // 4:  # still no room: back to run()
                if not self.paused and time.monotonic() - self._full_since > self.stalled_after:
                    self.paused = True
                    self.consumer.pause(*self.consumer.assignment())
                if self.paused:
                    polled: dict[TopicPartition, list[Record]] = await self.consumer.getmany(timeout_ms=0)
                    return polled
                return {}
            self._full_since = None
            if self.paused:
                self.consumer.resume(*self.consumer.assignment())
                self.paused = False
        room = self.max_in_flight - self.in_flight()
        batch: dict[TopicPartition, list[Record]] = await self.consumer.getmany(
            timeout_ms=200, max_records=max(1, min(room, 1000)))
        return batch

    async def run(self, stop: asyncio.Event) -> None:
        """Start the consumer (a wait while the broker refuses it), take records until
        ``stop`` is set; then wait up to :attr:`Stage.stop_grace_ms` for the work in flight
        (and its acknowledgements), cancel the rest, commit what is done and stop."""
        await until_allowed(self.consumer.start, self.access, self.kafka, Doing(), stop)
        if stop.is_set():
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            return
        self.subscribe()
        self.runner.running = True
        try:
            await self._run(stop)
        finally:
            self.runner.running = False
            with contextlib.suppress(Exception):
                await self.consumer.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        last_commit = time.monotonic()
        committing: asyncio.Task[None] | None = None
        grace = self.stage.stop_grace_ms / 1000
        try:
            while not stop.is_set():
                if "commit" in self._refused:
                    # the group refuses this member's commits: records handed on now could
                    # not be committed either (each would be handled again after a restart),
                    # so none are taken until a commit goes through
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.delay())
                    if committing is None or committing.done():
                        committing = asyncio.create_task(self.commit())
                        await asyncio.wait({committing}, timeout=self.backoff.cap)
                    continue
                try:
                    batch = await self._poll()
                    check_subscription(self.consumer)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    # not this task's cancellation: aiokafka's group coordination task ended
                    # cancelled (its heartbeat stopped mid-rejoin, seen while the broker
                    # refused the group), and the consumer raises that on every poll for good
                    await self._replace_consumer()
                    continue
                except Exception as exc:
                    line = await refusal(exc, self.kafka, self.reading)
                    if line is None:
                        raise
                    self._refuse("poll", line)  # the coordinator and the fetcher retry by themselves
                    if isinstance(exc, GroupAuthorizationFailedError) and not self._resubscribed:
                        # aiokafka (0.14) raises a refused heartbeat's error again on every
                        # poll, even once allowed, until the member rejoins the group: a new
                        # subscription makes it rejoin (refused, then retried, until allowed)
                        self._resubscribed = True
                        self.consumer.unsubscribe()
                        self.subscribe()
                    elif isinstance(exc, TopicAuthorizationFailedError) and not self.consumer.assignment():
                        # refused in the metadata, so given no partition: a new subscription
                        # asks for the metadata again and, once allowed, rejoins with them
                        self.consumer.unsubscribe()
                        self.subscribe()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.delay())
                    # a refused committed-offset fetch ends aiokafka's task for it, and
                    # its error comes back on every poll, even once allowed: fetch again
                    restart_offset_fetch(self.consumer)
                    continue
                if self._refused:
                    self._allow("poll")
                    self._resubscribed = False
                for tp, records in batch.items():
                    for record in records:
                        self._take(tp, record)
                if (time.monotonic() - last_commit) * 1000 >= self.stage.commit_interval_ms and (
                        committing is None or committing.done()):
                    # in the background: the next fetch does not wait for the coordinator
                    committing = asyncio.create_task(self.commit())
                    last_commit = time.monotonic()
        finally:
            # records waiting for their key stay pending (read again after a restart)
            self.stopping = True
            if committing is not None:
                with contextlib.suppress(Exception):
                    await committing
            # graceful: let in-flight work finish (bounded), then commit what is done
            deadline = time.monotonic() + grace
            rest: set[asyncio.Task[None]] = set()
            if self.tasks:
                _, rest = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in rest:
                task.cancel()
            for task in rest:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.acks:
                await asyncio.wait(set(self.acks), timeout=max(1.0, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                await self.commit()
