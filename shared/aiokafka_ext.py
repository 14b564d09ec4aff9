r"""aiokafka 0.14, extended: what Anting needs from it that its public API does not offer.
This is the one module that uses aiokafka's private names (pinned: aiokafka 0.14.0;
``grep -rn "\._[a-z]" shared services`` on aiokafka objects finds them here only), each
use named and explained where it is made, so an upgrade has one place to check:

1. **KIP-447 transactions** (most of the module, written to be offered upstream), below.
2. **Lenient record decoding** (:func:`install_lenient_records`): a header name that is not
   UTF-8 no longer stops every reader of its partition.
3. **The client underneath** (:func:`client_of`, :func:`refresh_metadata`,
   :func:`unauthorized_topics`) and **closing a producer no broker answers**
   (:func:`close_unflushed`).

**KIP-447 on aiokafka: transactional offset commits fenced by the consumer group.**

aiokafka 0.14 commits a transaction's offsets with ``TxnOffsetCommit`` v0: the group
id and nothing else, so the group coordinator cannot tell a zombie (a consumer that
lost its partitions in a rebalance but does not know it yet) from the partitions'
owner, and only a transactional id per input partition fences it (Kafka before 2.5,
KIP-98). KIP-447 (Kafka 2.5; Java's
``KafkaProducer.sendOffsetsToTransaction(offsets, ConsumerGroupMetadata)``) sends the
consumer's group metadata with the offsets (``TxnOffsetCommit`` v3+: generation id,
member id, group instance id), and the group coordinator refuses a commit from an
old generation (``ILLEGAL_GENERATION``, ``UNKNOWN_MEMBER_ID``, ``FENCED_INSTANCE_ID``):
one transactional producer per consumer is enough. Its other half: a new owner reads
the committed offsets with ``OffsetFetch`` v7+ ``require_stable``, which the broker
answers with ``UNSTABLE_OFFSET_COMMIT`` while a transaction with offsets for the
partition is still open, so it starts only after that transaction ended.

This part is the whole of it, written to be offered upstream:

- the two requests as aiokafka protocol structs (flexible versions: compact strings
  and arrays, tagged fields): :class:`TxnOffsetCommitRequest_v3`,
  :class:`OffsetFetchRequest_v7`;
- :class:`ConsumerGroupMetadata` and :func:`group_metadata` (Java's
  ``KafkaConsumer.groupMetadata()``);
- :class:`TransactionalProducer`: an ``AIOKafkaProducer`` whose
  ``send_offsets_to_transaction`` also takes a :class:`ConsumerGroupMetadata`;
- :func:`fetch_stable_offsets`: committed offsets that wait for pending transactions.

aiokafka has no public hook for either request, so three private names are used,
here only: the consumer's ``_coordinator`` (generation, member id, coordinator
node) and ``_client``, and the producer's ``_sender`` (whose class is swapped for a
subclass that sends v3 when it has the metadata). Pinned: aiokafka 0.14.0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, cast

import aiokafka.consumer.fetcher as _fetcher
import aiokafka.errors as Errors
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import ConnectionGroup, CoordinationType
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    IncompatibleBrokerVersion,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
)
from aiokafka.producer.sender import BaseHandler, Sender
from aiokafka.producer.transaction_manager import TransactionManager, TransactionState
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchPy,
    _DefaultRecordPy,
)
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import decode_varint
from aiokafka.structs import OffsetAndMetadata

from shared.events import UNDECODABLE

log = logging.getLogger(__name__)


def _private(obj: object) -> Any:
    """``obj`` as the untyped thing its private state is: aiokafka's stubs (``typings/``)
    type its public API only, and every private name is reached through here, in this
    module."""
    return obj

__all__ = [
    "FENCED_INSTANCE_ID",
    "ILLEGAL_GENERATION",
    "UNKNOWN_MEMBER_ID",
    "UNSTABLE_OFFSET_COMMIT",
    "ConsumerGroupMetadata",
    "FencedByGroupError",
    "LenientMemoryRecords",
    "OffsetFetchRequest_v7",
    "StableOffsetFetch",
    "TransactionalProducer",
    "TxnOffsetCommitRequest_v3",
    "TxnOffsetCommitWithGroup",
    "client_of",
    "close_unflushed",
    "fetch_stable_offsets",
    "group_metadata",
    "install_lenient_records",
    "is_fenced",
    "refresh_metadata",
    "restart_offset_fetch",
    "unauthorized_topics",
]

# error codes (Kafka's Errors.java) aiokafka 0.14 has no class for, or that KIP-447 reads
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
FENCED_INSTANCE_ID = 82
UNSTABLE_OFFSET_COMMIT = 88
_FENCED_BY_GROUP = {ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID}
_ABORTABLE_ERROR = TransactionState.ABORTABLE_ERROR

#: what the group protocol says when a client is not (or no longer) a member
NO_GENERATION = -1
NO_MEMBER = ""


class FencedByGroupError(CommitFailedError):  # type: ignore[misc]
    """The group coordinator refused a transaction's offsets: the consumer that read them
    is no longer the partitions' owner (its generation is over; KIP-447). The transaction
    can only be aborted; the consumer must rejoin the group. Java raises
    ``CommitFailedException`` here."""

    def __init__(self, group: str, error_code: int) -> None:
        super().__init__(f"group {group!r} refused the transaction's offsets "
                         f"(error {error_code}): this consumer no longer owns the partitions")
        self.error_code = error_code


# --- the consumer's side ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerGroupMetadata:
    """Who consumed the offsets a transaction commits: Java's ``ConsumerGroupMetadata``.

    ``generation_id`` and ``member_id`` are those of the consumer's last JoinGroup;
    ``group_instance_id`` is its static membership id (KIP-345) or ``None``."""

    group_id: str
    generation_id: int
    member_id: str
    group_instance_id: str | None = None

    @property
    def in_group(self) -> bool:
        """Whether the metadata names a live generation (a consumer between a lost
        membership and the next join has none: offsets sent with it would not be fenced)."""
        return self.generation_id >= 0 and self.member_id != NO_MEMBER


def group_metadata(consumer: AIOKafkaConsumer) -> ConsumerGroupMetadata:
    """The group metadata of a started, subscribed ``consumer`` now (Java's
    ``KafkaConsumer.groupMetadata()``). Raises ``ValueError`` for a consumer without a
    group (``group_id=None`` or not started)."""
    coordinator = _private(consumer)._coordinator
    group_id = getattr(coordinator, "group_id", None)
    if not isinstance(group_id, str):
        raise ValueError("the consumer has no group (group_id=None, or not started)")
    return ConsumerGroupMetadata(
        group_id=group_id,
        generation_id=int(coordinator.generation),
        member_id=str(coordinator.member_id),
        group_instance_id=cast("str | None", getattr(coordinator, "_group_instance_id", None)),
    )


# --- TxnOffsetCommit v3 (flexible; KIP-447) ------------------------------------------


class TxnOffsetCommitResponse_v3(Response):  # type: ignore[misc]
    """``TxnOffsetCommitResponse`` v3: per partition, an error code."""

    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("error_code", Int16),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):  # type: ignore[misc]
    """``TxnOffsetCommitRequest`` v3 (Kafka 2.5, KIP-447): v2 plus the consumer's
    generation id, member id and group instance id, in the flexible encoding."""

    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("committed_offset", Int64),
                ("committed_leader_epoch", Int32),
                ("committed_metadata", CompactString("utf-8")),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitWithGroup(Request[TxnOffsetCommitRequest_v3]):  # type: ignore[misc]
    """Builds :class:`TxnOffsetCommitRequest_v3`; a broker without v3 (before 2.5)
    raises ``IncompatibleBrokerVersion`` when the request is prepared: there is no
    fencing to fall back to."""

    API_KEY: ClassVar[int] = 28

    def __init__(self, transactional_id: str, producer_id: int, producer_epoch: int,
                 group: ConsumerGroupMetadata,
                 offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        self.transactional_id = transactional_id
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.group = group
        self.offsets = dict(offsets)

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> TxnOffsetCommitRequest_v3:
        by_topic: dict[str, list[tuple[int, int, int, str, dict[int, bytes]]]] = collections.defaultdict(list)
        for tp, om in sorted(self.offsets.items()):
            by_topic[tp.topic].append((tp.partition, om.offset, -1, om.metadata, {}))
        g = self.group
        return request_struct_class(
            self.transactional_id, g.group_id, self.producer_id, self.producer_epoch,
            g.generation_id, g.member_id, g.group_instance_id,
            [(topic, parts, {}) for topic, parts in by_topic.items()], {})

    def prepare(self, versions: dict[int, tuple[int, int]]) -> TxnOffsetCommitRequest_v3:
        low, high = versions.get(self.API_KEY, (0, -1))
        if not low <= 3 <= high:
            raise IncompatibleBrokerVersion(
                f"the broker takes TxnOffsetCommit v{low}..v{high}; KIP-447 needs v3 (Kafka 2.5+)")
        return self.build(TxnOffsetCommitRequest_v3)


# --- OffsetFetch v7 (flexible; require_stable) -------------------------------------


class OffsetFetchResponse_v7(Response):  # type: ignore[misc]
    """``OffsetFetchResponse`` v7: per partition, the committed offset or an error
    (``UNSTABLE_OFFSET_COMMIT`` while a transaction holds offsets for it)."""

    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("committed_offset", Int64),
                ("committed_leader_epoch", Int32),
                ("metadata", CompactString("utf-8")),
                ("error_code", Int16),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # type: ignore[misc]
    """``OffsetFetchRequest`` v7 (Kafka 2.5, KIP-447): v6 plus ``require_stable``."""

    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partition_indexes", CompactArray(Int32)),
            ("tags", TaggedFields),
        )),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetch(Request[OffsetFetchRequest_v7]):  # type: ignore[misc]
    """Builds :class:`OffsetFetchRequest_v7` for ``partitions`` of ``group_id``."""

    API_KEY: ClassVar[int] = 9

    def __init__(self, group_id: str, partitions: list[TopicPartition], require_stable: bool = True) -> None:
        self.group_id = group_id
        self.partitions = partitions
        self.require_stable = require_stable

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        by_topic: dict[str, list[int]] = collections.defaultdict(list)
        for tp in self.partitions:
            by_topic[tp.topic].append(tp.partition)
        return request_struct_class(
            self.group_id, [(t, sorted(ps), {}) for t, ps in by_topic.items()], self.require_stable, {})

    def prepare(self, versions: dict[int, tuple[int, int]]) -> OffsetFetchRequest_v7:
        low, high = versions.get(self.API_KEY, (0, -1))
        if not low <= 7 <= high:
            raise IncompatibleBrokerVersion(
                f"the broker takes OffsetFetch v{low}..v{high}; require_stable needs v7 (Kafka 2.5+)")
        return self.build(OffsetFetchRequest_v7)


Offsets: TypeAlias = dict[TopicPartition, int | None]


async def fetch_stable_offsets(consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                               timeout: float = 60.0, backoff: float = 0.05) -> Offsets:
    """The committed offset of each of ``partitions`` for ``consumer``'s group (``None``:
    nothing committed), read with ``require_stable``: while a transaction with offsets
    for a partition is open (a previous owner's, a zombie's) the broker answers
    ``UNSTABLE_OFFSET_COMMIT`` and the fetch is retried every ``backoff`` seconds, so the
    answer never predates that transaction's end (Java's consumer does the same with
    ``isolation.level=read_committed``, KIP-447).

    Raises ``KafkaTimeoutError`` when a partition stays unstable ``timeout`` seconds (a
    transaction stays open at most its ``transaction.timeout.ms``), a ``KafkaError`` for
    any other error of the group or a partition."""
    coordinator = _private(consumer)._coordinator
    client = _private(consumer)._client
    group_id = getattr(coordinator, "group_id", None)
    if not isinstance(group_id, str):
        raise ValueError("the consumer has no group (group_id=None, or not started)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    result: Offsets = {}
    wanted = list(partitions)
    while wanted:
        await coordinator.ensure_coordinator_known()
        node = coordinator.coordinator_id
        try:
            response = await client.send(node, StableOffsetFetch(group_id, wanted),
                                         group=ConnectionGroup.COORDINATION)
        except (Errors.NodeNotReadyError, Errors.RequestTimedOutError):
            coordinator.coordinator_dead()
            await asyncio.sleep(backoff)
            continue
        unstable: list[TopicPartition] = []
        retry = False
        error = Errors.for_code(response.error_code)
        if error in (Errors.NotCoordinatorError, Errors.CoordinatorNotAvailableError):
            coordinator.coordinator_dead()
            retry = True
        elif error is Errors.CoordinatorLoadInProgressError:
            retry = True
        elif error is not Errors.NoError:
            raise error(f"OffsetFetch for group {group_id!r}")
        for topic, parts, _ in response.topics if not retry else ():
            for partition, offset, _epoch, _meta, code, _ in parts:
                tp = TopicPartition(topic, partition)
                if code == UNSTABLE_OFFSET_COMMIT:
                    unstable.append(tp)
                elif code:
                    raise Errors.for_code(code)(f"OffsetFetch {tp} for group {group_id!r}")
                else:
                    result[tp] = offset if offset >= 0 else None
        if not retry:
            wanted = unstable
        if wanted:
            if loop.time() >= deadline:
                raise KafkaTimeoutError(
                    f"offsets of {sorted(wanted)} still held by an open transaction after {timeout}s")
            await asyncio.sleep(backoff)
    return result


# --- the producer's side -----------------------------------------------------------


class _GroupRef(str):
    """A group id that carries the consumer's metadata through aiokafka's transaction
    manager (which queues ``(group_id, offsets, future)`` and compares group ids as
    strings) to :class:`_GroupAwareSender`."""

    metadata: ConsumerGroupMetadata

    def __new__(cls, metadata: ConsumerGroupMetadata) -> _GroupRef:
        ref = super().__new__(cls, metadata.group_id)
        ref.metadata = metadata
        return ref


def _abortable(txn: TransactionManager, exc: BaseException) -> None:
    """Put aiokafka's transaction manager in its abortable-error state, keeping what the
    transaction holds on the broker.

    aiokafka's own ``error_transaction`` forgets the partitions and the group added to
    the transaction, so the following ``abort_transaction`` thinks it empty and sends no
    ``EndTxn(ABORT)``: the broker's transaction stays open, the producer's next
    transaction joins it, and the aborted records commit with it (seen here: a fenced
    transaction's record became visible with the next commit). Java aborts on the
    broker in this state; so does this."""
    txn._transition_to(_ABORTABLE_ERROR)
    txn._pending_txn_partitions.clear()
    for _, _, fut in txn._pending_txn_offsets:
        if not fut.done():
            fut.set_exception(exc)
    txn._pending_txn_offsets.clear()
    waiter = txn._transaction_waiter
    if waiter is not None and not waiter.done():
        waiter.set_exception(exc)
        waiter.exception()  # read by commit_transaction's result(); dropped by an abort


class _TxnOffsetCommitHandler(BaseHandler):  # type: ignore[misc]
    """aiokafka's ``TxnOffsetCommitHandler`` with v3 and the errors of KIP-447, mapped as
    Java's ``TransactionManager.TxnOffsetCommitHandler`` maps them: a fenced group is an
    abortable error (:class:`FencedByGroupError`), a fenced producer a fatal one."""

    group = ConnectionGroup.COORDINATION

    def __init__(self, sender: Sender, offsets: dict[TopicPartition, OffsetAndMetadata],
                 group: ConsumerGroupMetadata) -> None:
        super().__init__(sender)
        self._offsets = offsets
        self._group = group

    def create_request(self) -> TxnOffsetCommitWithGroup:
        txn = self._sender._txn_manager
        return TxnOffsetCommitWithGroup(
            txn.transactional_id, txn.producer_id, txn.producer_epoch, self._group, self._offsets)

    def handle_response(self, resp: TxnOffsetCommitResponse_v3) -> float | None:
        txn = self._sender._txn_manager
        group_id = self._group.group_id
        for topic, partitions, _ in resp.topics:
            for partition, code, _ in partitions:
                tp = TopicPartition(topic, partition)
                error = Errors.for_code(code)
                if error is Errors.NoError:
                    txn.offset_committed(tp, self._offsets[tp].offset, group_id)
                elif code in _FENCED_BY_GROUP:
                    _abortable(txn, FencedByGroupError(group_id, code))
                    return None
                elif error in (Errors.CoordinatorNotAvailableError, Errors.NotCoordinatorError,
                               Errors.RequestTimedOutError):
                    self._sender._coordinator_dead(CoordinationType.GROUP)
                    return cast(float, self._default_backoff)
                elif error in (Errors.CoordinatorLoadInProgressError,
                               Errors.UnknownTopicOrPartitionError, Errors.ConcurrentTransactions):
                    return cast(float, self._default_backoff)
                elif error in (Errors.InvalidProducerEpoch, Errors.ProducerFenced):
                    raise ProducerFenced()
                elif error is Errors.GroupAuthorizationFailedError:
                    _abortable(txn, error(group_id))
                    return None
                else:
                    raise error(f"TxnOffsetCommit {tp} for group {group_id!r}")
        return None

    def handle_error(self) -> float:
        self._sender._coordinator_dead(CoordinationType.GROUP)
        return cast(float, self._default_backoff)


class _GroupAwareSender(Sender):  # type: ignore[misc]
    """aiokafka's ``Sender``, committing a transaction's offsets with
    :class:`TxnOffsetCommitRequest_v3` when they came with group metadata."""

    async def _do_txn_offset_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                                    group_id: str) -> Any:
        if not isinstance(group_id, _GroupRef):
            return await super()._do_txn_offset_commit(offsets, group_id)
        if not offsets:
            return None
        try:
            node_id = await self._find_coordinator(CoordinationType.GROUP, group_id)
        except Errors.GroupAuthorizationFailedError as exc:
            _abortable(self._txn_manager, exc)
            return None
        return await _TxnOffsetCommitHandler(self, offsets, group_id.metadata).do(node_id)


class TransactionalProducer(AIOKafkaProducer):
    """An ``AIOKafkaProducer`` (same arguments; give it a ``transactional_id``) whose
    :meth:`send_offsets_to_transaction` takes the consumer's group metadata, as Java's
    ``sendOffsetsToTransaction(offsets, ConsumerGroupMetadata)`` does (KIP-447)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        # the one change to aiokafka's sender: TxnOffsetCommit v3 for offsets with metadata
        _private(self)._sender.__class__ = _GroupAwareSender

    def _read_transaction_error(self) -> None:
        """Read the error aiokafka set on the transaction's waiter (a fenced producer, a
        refused ``AddPartitionsToTxn``): an abort or a stop replaces the waiter without
        reading it, and asyncio would log it as never retrieved."""
        waiter = _private(self)._txn_manager._transaction_waiter
        if waiter is not None and waiter.done() and not waiter.cancelled():
            waiter.exception()

    async def stop(self) -> None:
        """Stop as aiokafka does, the transaction's error read first (see above)."""
        self._read_transaction_error()
        await super().stop()

    async def abort_transaction(self) -> None:
        """Abort as aiokafka does, the transaction's error read first (see above)."""
        self._read_transaction_error()
        await super().abort_transaction()

    async def send_offsets_to_transaction(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata],
        group_id: ConsumerGroupMetadata | str,
    ) -> None:
        """Add ``offsets`` (the next offset to read, per partition) to the open transaction.

        With :class:`ConsumerGroupMetadata` (from :func:`group_metadata`, right before the
        call) the group coordinator checks the generation and the member, and refuses the
        offsets of a consumer that has lost the partitions: the returned coroutine raises
        :class:`FencedByGroupError` and the transaction can only be aborted. A consumer
        out of the group (no live generation) raises :class:`FencedByGroupError` at once
        instead of sending unfenced offsets. With a plain group id: aiokafka's v0 commit.

        Other errors as aiokafka's: ``ProducerFenced`` (fatal), ``IllegalOperation``
        (no transaction open)."""
        if isinstance(group_id, ConsumerGroupMetadata):
            if not group_id.in_group:
                raise FencedByGroupError(group_id.group_id, ILLEGAL_GENERATION)
            await super().send_offsets_to_transaction(dict(offsets), _GroupRef(group_id))
            return
        await super().send_offsets_to_transaction(dict(offsets), group_id)


def is_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` says this worker lost its partitions or its transactional id to
    another (the transaction can only be aborted; the session should rejoin)."""
    return isinstance(exc, FencedByGroupError | ProducerFenced | Errors.InvalidProducerEpoch) or (
        isinstance(exc, KafkaError) and getattr(exc, "errno", None) in _FENCED_BY_GROUP)


# --- lenient record decoding ------------------------------------------------------
#
# Records as Kafka's Java client reads them: a header *name* that is not UTF-8 does not
# stop the consumer.
#
# aiokafka (0.14) decodes header names with strict UTF-8 inside its record parser, so one
# record whose header name has other bytes (``kcat -H $'x-\\xff=v'`` writes one; the broker
# stores it as it came) raises ``UnicodeDecodeError`` from ``getmany`` on every poll, for
# every reader of the partition (faust's included): the partition stops for good. Java's
# client decodes such a name with replacement characters and goes on.
#
# Here a batch whose C parse fails that way is parsed again by aiokafka's own Python parser
# with header names decoded ``surrogateescape``: the undecodable bytes survive as lone
# surrogates (``name.encode("utf-8", "surrogateescape")`` gives them back), every other
# record of the batch is the same, and the consumer's position moves on as usual. Readers
# of the contract refuse such a record (:func:`shared.events.record_event_bytes` raises
# ``NotACloudEvent``), so each stage dead-letters it by its coordinates and the stream goes
# on (Kafka Streams' ``DeserializationExceptionHandler`` with ``LogAndContinue`` semantics,
# the record kept). Batches that parse cleanly take the C path untouched: one Python
# generator step per record is the whole cost.
#
# :func:`install` puts this in place of the record reader of aiokafka's fetcher; every
# client made by :mod:`shared.kafka` calls it. Private aiokafka names used, here only:
# ``aiokafka.consumer.fetcher.MemoryRecords`` (the fetcher's module global),
# ``_MemoryRecordsPy`` (batch slicing) and ``_DefaultRecordBatchPy`` (the Python parser,
# whose ``_read_msg`` this module repeats with one change). Pinned: aiokafka 0.14.0.


class _LenientBatchPy(_DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's Python batch parser, with header names decoded ``surrogateescape``.
    ``_read_msg`` is aiokafka's (0.14.0), with that one change."""

    def _read_msg(self, decode_varint: Callable[[bytearray, int], tuple[int, int]] = decode_varint) -> Any:
        buffer = self._buffer
        pos: int = self._pos  # type: ignore[has-type]
        length, pos = decode_varint(buffer, pos)
        start_pos = pos
        _, pos = decode_varint(buffer, pos)  # attributes: unused
        ts_delta, pos = decode_varint(buffer, pos)
        timestamp = self.max_timestamp if self.timestamp_type == self.LOG_APPEND_TIME \
            else self.first_timestamp + ts_delta
        offset_delta, pos = decode_varint(buffer, pos)
        offset = self.base_offset + offset_delta
        key_len, pos = decode_varint(buffer, pos)
        key = None
        if key_len >= 0:
            key = bytes(buffer[pos:pos + key_len])
            pos += key_len
        value_len, pos = decode_varint(buffer, pos)
        value = None
        if value_len >= 0:
            value = bytes(buffer[pos:pos + value_len])
            pos += value_len
        header_count, pos = decode_varint(buffer, pos)
        if header_count < 0:
            raise CorruptRecordException(f"Found invalid number of record headers {header_count}")
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(header_count):
            h_key_len, pos = decode_varint(buffer, pos)
            if h_key_len < 0:
                raise CorruptRecordException(f"Invalid negative header key size {h_key_len}")
            h_key = bytes(buffer[pos:pos + h_key_len]).decode("utf-8", UNDECODABLE)  # the change
            pos += h_key_len
            h_value_len, pos = decode_varint(buffer, pos)
            h_value = None
            if h_value_len >= 0:
                h_value = bytes(buffer[pos:pos + h_value_len])
                pos += h_value_len
            headers.append((h_key, h_value))
        if pos - start_pos != length:
            raise CorruptRecordException(
                f"Invalid record size: expected to read {length} bytes in record payload, "
                f"but instead read {pos - start_pos}")
        self._pos = pos
        return _DefaultRecordPy(offset, timestamp, self.timestamp_type, key, value, headers)


class _Batch:
    """A v2 batch as aiokafka parses it (C), parsed again leniently from the record where
    a header name is not UTF-8. Everything but iteration is the C batch's."""

    __slots__ = ("_batch", "_data")

    def __init__(self, batch: DefaultRecordBatch, data: memoryview) -> None:
        self._batch = batch
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        return self._records()

    def __next__(self) -> Any:  # a control batch's marker is read with next() alone
        return next(self._batch)

    def validate_crc(self) -> bool:
        return bool(self._batch.validate_crc())

    def _records(self) -> Iterator[Any]:
        last = -1
        try:
            for record in self._batch:
                last = record.offset
                yield record
        except UnicodeDecodeError:
            for record in _LenientBatchPy(self._data):
                if record.offset > last:
                    yield record


class LenientMemoryRecords(_MemoryRecordsPy):  # type: ignore[misc]
    """A fetch response's record set: aiokafka's batch slicing, each v2 batch wrapped in
    :class:`_Batch`."""

    def next_batch(self, *args: int) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args)
        if data is not None and isinstance(batch, DefaultRecordBatch):
            return _Batch(batch, data)
        return batch


def install_lenient_records() -> None:
    """Make aiokafka's fetcher read record sets with :class:`LenientMemoryRecords`
    (idempotent; affects every consumer in the process, faust's too). Private: the
    fetcher's module global ``MemoryRecords``."""
    if _fetcher.MemoryRecords is not LenientMemoryRecords:
        _fetcher.MemoryRecords = LenientMemoryRecords


# --- the client underneath, and closing -----------------------------------------------


def client_of(consumer: AIOKafkaConsumer) -> Any:
    """The ``AIOKafkaClient`` a started consumer talks through (its private ``_client``; a
    producer's is public as ``producer.client``), for requests aiokafka has no call for
    (``Metadata`` v8's authorized operations, a metadata refresh)."""
    return _private(consumer)._client


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch the metadata of every topic into ``consumer``'s cache now.

    aiokafka (0.14) has no public call that does this: ``partitions_for_topic`` reads the
    cache only (``None`` for a topic created after the consumer started, until the next
    periodic refresh, ``metadata_max_age_ms``: 5 minutes), ``topics()`` fetches every
    topic's metadata into a new object the cache never sees, and ``assign``/``subscribe``
    refresh by naming their topics in the request, which a broker with
    ``auto.create.topics.enable`` (Kafka's default) answers by creating a missing topic
    with the broker's defaults. ``force_metadata_update`` is what aiokafka's own
    ``start()`` calls; asking for all topics creates none."""
    await _private(consumer)._client.force_metadata_update()


def restart_offset_fetch(consumer: AIOKafkaConsumer) -> bool:
    """Start again the group coordinator's committed-offset fetch for the current
    assignment when it has ended with an error; ``True`` when it did.

    aiokafka (0.14) fetches a new assignment's committed offsets in one background task
    (``_commit_refresh_routine``). An error it does not count as retriable ends that task
    for good — among them the broker refusing ``OffsetFetch`` for a topic (a Read ACL
    taken away; aiokafka wraps ``TOPIC_AUTHORIZATION_FAILED`` in a plain ``KafkaError``)
    — and the coordinator then raises the task's error on every poll until the member
    is given another assignment, even once the ACL is back. The Java client tries the
    fetch again on the next poll; so does this, called on each retry of a refused poll.
    Private: ``_coordinator``, ``_commit_refresh_task``, ``_subscription``."""
    coordinator: Any = getattr(_private(consumer), "_coordinator", None)
    task = getattr(coordinator, "_commit_refresh_task", None)
    if task is None or not task.done() or task.cancelled() or task.exception() is None:
        return False
    assignment = _private(consumer)._subscription.subscription
    assignment = getattr(assignment, "assignment", None)
    if assignment is None or not assignment.active:
        return False
    coordinator.start_commit_offsets_refresh_task(assignment)
    return True


def unauthorized_topics(consumer: AIOKafkaConsumer) -> set[str]:
    """The topics the consumer's last metadata marked unauthorized (aiokafka keeps them
    only on its private ``_client.cluster`` and raises nothing for them)."""
    return set(_private(consumer)._client.cluster.unauthorized_topics)


async def close_unflushed(producer: AIOKafkaProducer, timeout: float = 2.0) -> None:
    """Close a producer without its flush: its sender task and the client's connections,
    and the task an interrupted ``stop()`` began to flush the accumulator (it would wait
    for batches no sender delivers; once collected asyncio logs it as "Task was destroyed
    but it is pending!"). For a producer whose ``stop()`` timed out because no broker
    answers: once interrupted, aiokafka's (0.14) ``stop()`` leaves the sender reconnecting
    for ever. Private: ``_sender``, ``_message_accumulator``. Never raises."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            await asyncio.wait_for(sender.close(), timeout)
        accumulator = getattr(producer, "_message_accumulator", None)
        for task in asyncio.all_tasks():
            coro = task.get_coro()
            frame = getattr(coro, "cr_frame", None)
            if (not task.done() and getattr(coro, "__qualname__", "") == "MessageAccumulator.close"
                    and frame is not None and frame.f_locals.get("self") is accumulator):
                task.cancel()
        await asyncio.wait_for(producer.client.close(), timeout)
