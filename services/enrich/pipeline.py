"""The consume → enrich → produce loop, exactly once (Kafka transactions) or at least once.

Exactly once: one transactional producer per worker (transactional id
``<group>-<instance id>``) and one open transaction at a time, over every partition
the worker holds. A transaction spans polls: it takes the enriched events, the dead
letters of poison records and the next offset of each partition it read
(``send_offsets_to_transaction`` with the consumer's group metadata), and commits
when it is ``commit_interval_ms`` old, holds ``commit_max_records`` records, or the
consumer has had nothing more for ``commit_linger_ms`` (0: at once). Consumers read
``read_committed``.

Fencing is the group coordinator's (KIP-447, ``shared/transactions.py``): a worker
that lost its partitions in a rebalance without knowing it (paused past its session
timeout: a zombie) has its offsets refused, so its transaction can only abort; the
new owner reads the committed offsets with ``require_stable``, which waits for a
transaction still holding them. A partition's first batch after an assignment starts
from that offset. On a rebalance the open transaction commits before the partitions
go; a worker fenced by the group aborts it and starts its partitions again from the
committed offsets; one whose producer was fenced (its transaction timed out) starts
a new session.

At least once (``ANTING_ENRICH_GUARANTEE=at_least_once``): one idempotent
producer; offsets are committed after the broker acknowledged the batch.

A record that cannot be read (not a CloudEvent of the contract, in either content
mode of the Kafka binding, a header name that is not UTF-8) or cannot be *written*
(its enriched form is over the output topic's ``max.message.bytes``, or the producer
refuses it) goes to ``dead-letters`` inside the same transaction, and the stream
goes on.

Every send is awaited before its offsets commit (aiokafka leaves a transaction
committable after the broker refused one of its batches). A transaction with a failed
send is aborted, never committed; the producer is replaced (its sequence numbers are
spent: ``shared/write_failures.py``), the topics' limits are read again (they change
at run time), and every partition starts again from its committed offset. The records
the broker refused for themselves are dead-lettered on that second pass, with the
broker's reason. The same holds at least once, from the batch's first offsets. Any
other failure tears the session down (consumer and producers) and starts it again
from the committed offsets: nothing is half-done. A session that fails again and again
at the same offsets says so in the log, with the offsets, and counts
``anting_worker_restarts_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
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
from shared import tracing
from shared.deadletters import DeadLetterWriter, fit, from_record
from shared.events import record_event_bytes
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
from shared.metrics import (
    ENRICH_EVENTS,
    ENRICH_ORGANIZATIONS,
    STAGE_SECONDS,
    WORKER_RESTARTS,
    WRITE_FAILURES,
)
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, DEAD_LETTERS, ENRICHED_EVENTS
from shared.transactions import (
    FencedByGroupError,
    TransactionalProducer,
    fetch_stable_offsets,
    group_metadata,
    is_fenced,
)
from shared.write_failures import Coordinates, SendFailures, settle

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
# a dead letter the broker refused once already goes again with its value cut to this
BARE_LETTER_BYTES = 2048


class Sends:
    """The sends of a unit of work (a transaction, an at-least-once batch): each send's
    acknowledgement, and the input record it was written for, in the same order."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.origins: list[Coordinates] = []

    def add(self, ack: Ack, r: Record) -> None:
        self.acks.append(ack)
        self.origins.append((r.topic, r.partition, r.offset))

    async def settle(self) -> SendFailures:
        """Wait for every send; the failures, by input record (none retrieved twice)."""
        acks, origins = self.acks, self.origins
        self.acks, self.origins = [], []
        return await settle(acks, origins)

    def forget(self) -> None:
        """Retrieve the outcome of every send once it settles (an aborted unit's), so that
        asyncio does not log each failure as never retrieved."""
        for ack in self.acks:
            ack.add_done_callback(_retrieve)
        self.acks, self.origins = [], []


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
        # input records whose output the broker refused for itself, and how often. Once
        # is not yet the record's fault: the broker refuses a whole *batch* over the
        # topic's limit, neighbours included (Java's producer splits such a batch, KIP-126;
        # aiokafka does not), so the record is written again, on a producer whose batches
        # fit the limit read again. Refused twice, it is dead-lettered with the reason.
        self.refused: dict[Coordinates, BaseException] = {}
        self.refusals: Counter[Coordinates] = Counter()

    def note_refused(self, failures: SendFailures) -> None:
        """Remember the records the broker refused for themselves (see :attr:`refused`)."""
        for origin, exc in failures.records.items():
            self.refused[origin] = exc
            self.refusals[origin] += 1

    async def read_limits(self) -> None:
        """Read ``max.message.bytes`` of ``enriched-events`` and ``dead-letters`` from the
        broker, so a record too large for its topic is dead-lettered before it is sent
        (a send the broker refuses would fail the whole transaction, again and again)."""
        limits = await max_message_bytes(self.settings, [self.out_topic, self.dlq.topic])
        self.max_out_bytes = limits[self.out_topic]
        self.dlq.max_bytes = limits[self.dlq.topic]

    async def _dead_letter(self, producer: AIOKafkaProducer, r: Record, exc: BaseException,
                           outcome: Outcome, sends: Sends) -> None:
        letter = from_record(r, stage=STAGE, error=exc)
        if self.refusals.get((r.topic, r.partition, r.offset), 0) > 2:
            # its dead letter was refused too (dead-letters' limit lowered as well): the
            # coordinates and the reason go, the value is cut (dlq.value.truncated says so)
            letter = fit(letter, BARE_LETTER_BYTES)
        sends.add(await self.dlq.send(letter, producer), r)
        outcome.events[(_type_of(r.value), "dead_lettered")] += 1
        log.warning("record dead-lettered", extra={
            "topic": r.topic, "partition": r.partition, "offset": r.offset,
            "error": type(exc).__name__, "reason": str(exc)[:200]})

    async def process(self, producer: AIOKafkaProducer, records: list[Record], outcome: Outcome,
                      sends: Sends) -> None:
        """Queue one output per record (its acknowledgement into ``sends``). A record the
        broker refused before (:attr:`refused`) is dead-lettered with that reason. With
        tracing on, each record gets a ``process <topic>`` span (a child of its
        ``traceparent``) and its output a ``send enriched-events`` span under it, whose
        context the output carries."""
        index, version = self.catalog.index, self.catalog.version
        tracer = tracing.tracer(STAGE)  # None when off: then no span, no header rewritten
        span: tracing.Span | None = None
        for r in records:
            t0 = time.perf_counter()
            if tracer is not None:
                if span is not None:
                    span.end()
                span = tracing.start_process(tracer, r.topic, r.partition, r.offset, r.headers,
                                             self.settings.group)
            if self.refused:
                refused = self.refused.pop((r.topic, r.partition, r.offset), None)
                if refused is not None and self.refusals[(r.topic, r.partition, r.offset)] > 1:
                    if span is not None:
                        tracing.fail(span, refused)
                    await self._dead_letter(producer, r, refused, outcome, sends)
                    continue
            try:
                # either content mode of the CloudEvents Kafka binding; structured out
                raw = record_event_bytes(r.value, r.headers)
                etype, enriched = enrich_bytes(raw, index, version)
                value = enriched.dump()
            except (ValidationError, ValueError) as exc:
                if span is not None:
                    tracing.fail(span, exc)
                await self._dead_letter(producer, r, exc, outcome, sends)
                continue
            headers = _structured(r.headers)
            sent: tracing.Span | None = None
            try:
                size = record_size(r.key, value, headers)
                if size > self.max_out_bytes:
                    raise RecordTooLarge(
                        f"the enriched event is {size} bytes; {self.out_topic} takes at most "
                        f"{self.max_out_bytes} (max.message.bytes)")
                if tracer is not None:
                    sent = tracing.start_send(tracer, self.out_topic, headers, parent=span)
                # the output keeps the input's timestamp (as Kafka Streams does), so that
                # notify can measure accepted → delivered
                sends.add(await producer.send(
                    self.out_topic, value=value, key=r.key, headers=headers,
                    timestamp_ms=r.timestamp), r)
            except _UNWRITABLE as exc:
                # refused before it was queued: the transaction is untouched
                if span is not None:
                    tracing.fail(span, exc)
                if sent is not None:
                    tracing.fail(sent, exc)
                    sent.end()
                await self._dead_letter(producer, r, exc, outcome, sends)
                continue
            outcome.events[(etype, "enriched")] += 1
            outcome.resolved += enriched.resolved
            outcome.unresolved += enriched.unresolved
            if sent is None:
                _STAGE_SECONDS.observe(time.perf_counter() - t0)
            else:
                tracing.end_on_ack(sent, sends.acks[-1])
                _STAGE_SECONDS.observe(time.perf_counter() - t0, tracing.exemplar(span))
        if span is not None:
            span.end()


class _WorkerRebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the group's partition changes to the worker (its producers follow them)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self.worker.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.worker.assigned(set(assigned))


class Transaction:
    """The open transaction: what it read (next offset per partition), how many records,
    since when (``time.monotonic()``), and its outcome for the metrics."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.records = 0
        self.offsets: dict[TopicPartition, int] = {}
        self.outcome = Outcome()
        # its sends: every one is acknowledged before the transaction commits
        self.sends = Sends()


def _retrieve(fut: asyncio.Future[RecordMetadata]) -> None:
    if not fut.cancelled():
        fut.exception()


class Worker:
    """One enrich worker: a consumer in the group, its producer, the catalog."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.group = settings.group
        self.catalog = catalog
        self.enricher = Enricher(settings, catalog)
        self.exactly_once = settings.guarantee == "exactly_once"
        self.inputs = [settings.topic(ANNOUNCEMENTS), settings.topic(AGREEMENTS)]
        self.transactional_id = f"{self.group}-{settings.instance_id or uuid.uuid4().hex}"
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.txn: Transaction | None = None  # exactly once: the open transaction
        # assigned partitions whose start is read from the committed offsets first
        self.fresh: set[TopicPartition] = set()
        self.broken: BaseException | None = None  # a commit on revocation failed fatally
        self.lock = asyncio.Lock()
        self.running = False
        # where the batch being processed starts, and how often a session failed there
        self.attempt: dict[TopicPartition, int] = {}
        self.failed_at: dict[TopicPartition, int] = {}
        self.failures = 0
        # units of work whose writes failed since the last commit, and what /readyz says
        # while that or a session failing at the same offsets lasts
        self.write_failures = 0
        self.trouble: str | None = None
        # the broker refusing this worker (an ACL missing, a wrong password): readiness says
        # it, one line per 30 s says it, and sessions are retried with backoff meanwhile
        self.access = AccessStatus()
        self.backoff = Backoff(cap=self.access.cap)
        self.doing = Doing(reads=tuple(self.inputs),
                           writes=(settings.topic(ENRICHED_EVENTS), settings.topic(DEAD_LETTERS)),
                           group=self.group,
                           transactional_id=self.transactional_id if self.exactly_once else None)

    # --- rebalance ---------------------------------------------------------------

    async def revoked(self, tps: set[TopicPartition]) -> None:
        # the open transaction commits before the partitions go (as Kafka Streams does);
        # a worker that has lost them already (a zombie) is refused and aborts it
        async with self.lock:
            if self.txn is not None:
                try:
                    await self._commit()
                except FencedByGroupError:
                    await self._fenced_by_group()
                except Exception as exc:
                    self.broken = exc
            self.fresh -= tps

    def assigned(self, tps: set[TopicPartition]) -> None:
        # the start comes from the stable committed offset before the first batch; see _add
        self.fresh |= tps

    # --- session -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop``; a failed session is torn down and started again."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _RESTARTS.inc()
                line = await refusal(exc, self.settings.kafka, self.doing)
                if line is not None:
                    # nothing was committed past what the refused transaction read: the
                    # next session starts from the committed offsets once it is allowed
                    self.access.refused(line, "session")
                    await self.backoff.wait(stop)
                    continue
                if is_fenced(exc):
                    log.warning("enrich was fenced (its transaction timed out, or another worker "
                                "took its transactional id); starting a new session",
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
        naming the offsets, so an operator can find the record (``anting dlq list`` will
        not have it: it was never dead-lettered)."""
        at = dict(self.attempt)
        self.failures = self.failures + 1 if at and at == self.failed_at else 1
        self.failed_at = at
        where = ", ".join(f"{tp.topic}[{tp.partition}]@{off}" for tp, off in sorted(
            at.items(), key=lambda kv: (kv[0].topic, kv[0].partition))) or "(no batch)"
        if self.failures >= STUCK_AFTER:
            self.trouble = f"the session failed {self.failures} times in a row at {where}"
            log.error(f"enrich is stuck: the session failed {self.failures} times in a row at "
                      f"{where}; restarting from the committed offsets", exc_info=True,
                      extra={"offsets": where, "failures": self.failures})
        else:
            log.exception(f"enrich session failed at {where}; restarting from the committed offsets",
                          extra={"offsets": where})

    async def _session(self, stop: asyncio.Event) -> None:
        self.broken = None
        self.consumer = make_consumer(
            self.settings, group_id=self.group,
            fetch_max_wait_ms=self.settings.batch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.settings.session_timeout_ms // 10),
        )
        self.consumer.subscribe(self.inputs, listener=_WorkerRebalanceListener(self))
        try:  # a set-up failing while a broker is away closes what it made, as a session does
            await self.enricher.read_limits()
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
                if self.txn is not None:
                    await self._commit()
        finally:
            self.running = False
            await self._close()

    async def _close(self) -> None:
        if self.txn is not None:
            self.txn.sends.forget()
        if self.txn is not None and self.producer is not None:
            with contextlib.suppress(Exception):
                await self.producer.abort_transaction()
        self.txn = None
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
        """The running session's consumer (the batch methods run only inside a session)."""
        assert self.consumer is not None, "no session running"
        return self.consumer

    def _producer(self) -> AIOKafkaProducer:
        assert self.producer is not None, "no session running"
        return self.producer

    # --- exactly once --------------------------------------------------------------

    async def _exactly_once_step(self) -> None:
        """One poll into the open transaction (begun by the first records), and its commit
        when a bound is reached or the poll came back empty."""
        s = self.settings
        txn = self.txn
        if txn is None:
            wait_ms = s.batch_wait_ms
            room = s.batch_max_records
        else:
            left_ms = s.commit_interval_ms - (time.monotonic() - txn.started) * 1000
            wait_ms = int(max(0.0, min(s.commit_linger_ms, left_ms)))
            room = max(1, min(s.batch_max_records, s.commit_max_records - txn.records))
        batch = await self._consumer().getmany(timeout_ms=wait_ms, max_records=room)
        check_subscription(self._consumer())  # an empty poll may be a refused topic
        async with self.lock:
            if self.broken is not None:
                raise self.broken
            if batch:
                await self.catalog.catch_up()
                await self._add(batch)
            txn = self.txn
            if txn is not None and (
                    not batch or txn.records >= s.commit_max_records
                    or (time.monotonic() - txn.started) * 1000 >= s.commit_interval_ms):
                try:
                    committed = await self._commit()
                except FencedByGroupError:
                    await self._fenced_by_group()
                else:
                    if committed:
                        self._allowed()
            elif txn is None and not batch:
                self._allowed()

    async def _fenced_by_group(self) -> None:
        """A zombie's transaction was refused and aborted: the partitions are someone
        else's now. Each starts again from its committed offset (a rebalance reassigns
        them anyway), on a new producer: a batch of the aborted transaction that was
        waiting to be sent again (a produce timed out while the broker did not answer)
        is not flushed by aiokafka's abort, and sent later it joined the *next*
        transaction, which then committed that record a second time (seen under a broker
        paused past the session timeout). The new producer's epoch fences it."""
        log.warning("enrich lost its partitions while a transaction was open: the group "
                    "refused its offsets (KIP-447); the transaction is aborted, the worker rejoins")
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
                consumer, fresh, timeout=self.settings.transaction_timeout_ms / 1000 + 30)
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
        txn = self.txn
        if txn is None:
            await producer.begin_transaction()
            txn = self.txn = Transaction()
        for tp, records in batch.items():
            self.attempt.setdefault(tp, records[0].offset)
        for tp, records in batch.items():
            try:
                await self.enricher.process(producer, records, txn.outcome, txn.sends)
            except BaseException:
                await self._abort()
                raise
            txn.offsets[tp] = records[-1].offset + 1
            txn.records += len(records)

    async def _commit(self) -> bool:
        """Commit the open transaction with its offsets, fenced by the group generation,
        once every send in it is acknowledged. A failed send aborts it instead and the
        worker starts over from the committed offsets (:meth:`_written_again`): False.
        On any other failure it is aborted and the error raised."""
        txn = self.txn
        assert txn is not None
        producer = self._producer()
        try:
            failures = await txn.sends.settle()
            if failures:
                await self._written_again(failures)
                return False
            if txn.offsets:
                await producer.send_offsets_to_transaction(
                    txn.offsets, group_metadata(self._consumer()))
            await producer.commit_transaction()
        except BaseException:
            await self._abort()
            raise
        self.txn = None
        self.attempt = {}
        self.failures = 0
        self._went_on()
        txn.outcome.publish()
        return True

    async def _written_again(self, failures: SendFailures) -> None:
        """Sends of the open transaction failed: abort it (nothing of it commits), replace
        the producer, read the topics' limits again, and start every partition again from
        its committed offset; the records the broker refused for themselves are
        dead-lettered when they come round (``shared/write_failures.py``)."""
        self._refused_writes(failures)
        await self._abort()
        await self._replace_producer()
        await self._rewind()

    async def _rewind(self) -> None:
        """Every held partition back to its committed offset, once no transaction holds
        it (the aborted one's markers written): the consumer's position is past what
        the aborted transaction read."""
        consumer = self._consumer()
        held = list(consumer.assignment())
        committed = await fetch_stable_offsets(
            consumer, held, timeout=self.settings.transaction_timeout_ms / 1000 + 30)
        for tp in held:
            start = committed.get(tp)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
            self.fresh.discard(tp)

    def _went_on(self) -> None:
        """A unit of work committed: whatever kept failing before is over."""
        self.enricher.refusals.clear()
        self.write_failures = 0
        self.trouble = None

    def _refused_writes(self, failures: SendFailures) -> None:
        """Log and count a unit of work's failed sends; remember the records refused."""
        self.enricher.note_refused(failures)
        self.write_failures += 1
        if self.write_failures >= STUCK_AFTER:
            self.trouble = f"writes failed {self.write_failures} times in a row ({failures.kinds()})"
        if failures.records:
            WRITE_FAILURES.labels(STAGE, "record").inc(len(failures.records))
        if failures.producer:
            WRITE_FAILURES.labels(STAGE, "producer").inc(len(failures.producer))
        log.warning(f"enrich: writes refused ({failures.kinds()}); nothing of that work is "
                    "committed, it is written again on a new producer from the committed offsets"
                    + ("; a record refused for itself goes again in a batch within the limit read "
                       "again, and to dead-letters if refused twice" if failures.records else ""),
                    extra={"refused": failures.kinds()})

    def _new_producer(self) -> AIOKafkaProducer:
        """A producer whose batches fit the output topics' limits as last read (the broker
        refuses a batch larger than ``max.message.bytes`` whole; a record larger than the
        limit is dead-lettered before it is sent)."""
        limit = min(self.enricher.max_out_bytes, self.enricher.dlq.max_bytes) - RECORD_OVERHEAD_BYTES
        options = {**SAFE_PRODUCER, "request_timeout_ms": self.settings.kafka.request_timeout_ms,
                   "max_batch_size": max(1024, min(SAFE_PRODUCER["max_batch_size"], limit))}
        if self.exactly_once:
            # InitProducerId: a predecessor with the same transactional id is fenced and
            # its open transaction aborted
            producer: AIOKafkaProducer = TransactionalProducer(
                **self.settings.kafka.client_options(), **options,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self.settings.transaction_timeout_ms)
            return producer
        return make_producer(self.settings, max_batch_size=options["max_batch_size"])

    async def _replace_producer(self) -> None:
        """A new producer in place of one whose writes failed or whose transaction was
        aborted (a new producer id or epoch: its sequence numbers start again, and a
        late batch of the old one is fenced), and the topics' limits read again."""
        old = self.producer
        self.producer = None
        with contextlib.suppress(Exception):  # the last limits stand until the next refusal
            await self.enricher.read_limits()
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

    async def _abort(self) -> None:
        if self.txn is not None:
            self.txn.sends.forget()
        self.txn = None
        with contextlib.suppress(Exception):
            # bounded: a producer whose broker does not answer is replaced or closed next
            await asyncio.wait_for(self._producer().abort_transaction(), 10.0)

    # --- at least once ----------------------------------------------------------

    async def _at_least_once_step(self) -> None:
        batch = await self._consumer().getmany(
            timeout_ms=self.settings.batch_wait_ms, max_records=self.settings.batch_max_records)
        check_subscription(self._consumer())  # an empty poll may be a refused topic
        if not batch:
            self._allowed()
            return
        async with self.lock:
            self.attempt = {tp: rs[0].offset for tp, rs in batch.items() if rs}
            await self.catalog.catch_up()
            await self._at_least_once(batch)
            self.attempt = {}
            self.failures = 0
            self._allowed()

    async def _at_least_once(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Write the batch's outputs and commit its offsets once all are acknowledged; a
        failed send commits nothing: the producer is replaced and the batch read again
        from its first offsets (its refused records then dead-lettered)."""
        producer = self._producer()
        outcome = Outcome()
        sends = Sends()
        offsets = {}
        for tp, records in batch.items():
            if not records:
                continue
            await self.enricher.process(producer, records, outcome, sends)
            offsets[tp] = records[-1].offset + 1
        failures = await sends.settle()
        if failures:
            self._refused_writes(failures)
            await self._replace_producer()
            consumer = self._consumer()
            for tp, records in batch.items():
                if records:
                    consumer.seek(tp, records[0].offset)
            return
        await self._consumer().commit(offsets)
        self._went_on()
        outcome.publish()


__all__ = ["STAGE", "STRUCTURED", "STUCK_AFTER", "Ack", "Enricher", "Outcome", "Record",
           "RecordTooLarge", "Transaction", "Worker"]
