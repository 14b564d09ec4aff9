"""Records as Kafka's Java client reads them: a header *name* that is not UTF-8 does not
stop the consumer.

aiokafka (0.14) decodes header names with strict UTF-8 inside its record parser, so one
record whose header name has other bytes (``kcat -H $'x-\\xff=v'`` writes one; the broker
stores it as it came) raises ``UnicodeDecodeError`` from ``getmany`` on every poll, for
every reader of the partition (faust's included): the partition stops for good. Java's
client decodes such a name with replacement characters and goes on.

Here a batch whose C parse fails that way is parsed again by aiokafka's own Python parser
with header names decoded ``surrogateescape``: the undecodable bytes survive as lone
surrogates (``name.encode("utf-8", "surrogateescape")`` gives them back), every other
record of the batch is the same, and the consumer's position moves on as usual. Readers
of the contract refuse such a record (:func:`shared.events.record_event_bytes` raises
``NotACloudEvent``), so each stage dead-letters it by its coordinates and the stream goes
on (Kafka Streams' ``DeserializationExceptionHandler`` with ``LogAndContinue`` semantics,
the record kept). Batches that parse cleanly take the C path untouched: one Python
generator step per record is the whole cost.

:func:`install` puts this in place of the record reader of aiokafka's fetcher; every
client made by :mod:`shared.kafka` calls it. Private aiokafka names used, here only:
``aiokafka.consumer.fetcher.MemoryRecords`` (the fetcher's module global),
``_MemoryRecordsPy`` (batch slicing) and ``_DefaultRecordBatchPy`` (the Python parser,
whose ``_read_msg`` this module repeats with one change). Pinned: aiokafka 0.14.0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import aiokafka.consumer.fetcher as _fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchPy,
    _DefaultRecordPy,
)
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import decode_varint

from shared.events import UNDECODABLE

__all__ = ["LenientMemoryRecords", "install"]

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

    def __init__(self, batch: Any, data: memoryview) -> None:
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

    def next_batch(self, *args: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args)
        if data is not None and isinstance(batch, DefaultRecordBatch):
            return _Batch(batch, data)
        return batch


def install() -> None:
    """Make aiokafka's fetcher read record sets with :class:`LenientMemoryRecords`
    (idempotent; affects every consumer in the process, faust's too)."""
    if _fetcher.MemoryRecords is not LenientMemoryRecords:
        _fetcher.MemoryRecords = LenientMemoryRecords
