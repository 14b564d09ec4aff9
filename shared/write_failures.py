"""What a write that failed means for a stage: the record's fault, or the producer's.

A produce fails for one of two kinds of reason, and each kind has one answer
(``docs/RELIABILITY.md``):

- **the record's** (:func:`refuses_the_record`): the broker or the client refuses this
  record whatever the producer (larger than the topic's ``max.message.bytes`` *now*, a
  batch the broker calls corrupt or invalid, a value the client cannot serialise). Sending
  it again fails again: the record goes to ``dead-letters`` with the reason and the stream
  goes on.
- **the producer's** (everything else: ``OutOfOrderSequenceNumber``, ``UnknownProducerId``,
  ``ProducerFenced``, ``InvalidProducerEpoch``, a request or delivery timeout, a broker
  gone): the write may succeed again, but not on this producer. An idempotent producer
  whose batch was refused has spent that batch's sequence numbers, so every later batch to
  the partition fails ``OutOfOrderSequenceNumber`` (aiokafka 0.14 does not reset them, as
  Java's producer does by bumping the epoch); the stage aborts what it had not committed,
  replaces the producer (a new producer id or epoch) and writes again from its committed
  offsets.

Either way nothing is acknowledged, committed or counted before the write that makes it
so. Error codes are Kafka's (``Errors.java``); aiokafka 0.14 has no class for
``INVALID_RECORD`` (87).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RECORD_ERROR_CODES", "Coordinates", "SendFailures", "refuses_the_record", "settle"]

#: Kafka error codes that refuse one record (or its batch) for what it is:
#: CORRUPT_MESSAGE 2, MESSAGE_TOO_LARGE 10, RECORD_LIST_TOO_LARGE 18, INVALID_RECORD 87
RECORD_ERROR_CODES = frozenset({2, 10, 18, 87})

#: where a record was read: (topic, partition, offset)
Coordinates = tuple[str, int, int]


def refuses_the_record(exc: BaseException) -> bool:
    """Whether ``exc`` (a send's failure) refuses the record itself, so that sending it
    again cannot succeed: one of :data:`RECORD_ERROR_CODES`, or the client refusing it
    before it was queued (``TypeError``/``ValueError``: not bytes, larger than the
    producer's ``max_request_size``)."""
    if getattr(exc, "errno", None) in RECORD_ERROR_CODES:
        return True
    return isinstance(exc, (TypeError, ValueError))


@dataclass
class SendFailures:
    """The sends of a unit of work that failed, by the input record each was written for.

    ``records``: the failures that belong to their record (:func:`refuses_the_record`),
    ``producer``: the others (the producer must be replaced). Both map an input's
    :data:`Coordinates` to the first error seen for it."""

    records: dict[Coordinates, BaseException] = field(default_factory=dict)
    producer: dict[Coordinates, BaseException] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.records or self.producer)

    def kinds(self) -> str:
        """The failures' kinds for a log line: ``MessageSizeTooLargeError at t[0]@12, ...``."""
        parts = [f"{type(exc).__name__} at {t}[{p}]@{o}"
                 for (t, p, o), exc in sorted({**self.producer, **self.records}.items())]
        return ", ".join(parts[:5]) + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")


async def settle(acks: Sequence[asyncio.Future[Any]], origins: Iterable[Coordinates]) -> SendFailures:
    """Wait until every send in ``acks`` is acknowledged or failed (each send's future,
    ``origins`` the input record each was written for, in the same order) and sort the
    failures; never raises for a failed send, and every failure is retrieved (asyncio logs
    none as never retrieved)."""
    failures = SendFailures()
    if not acks:
        return failures
    results = await asyncio.gather(*acks, return_exceptions=True)
    for origin, result in zip(origins, results, strict=True):
        if isinstance(result, BaseException):
            kind = failures.records if refuses_the_record(result) else failures.producer
            kind.setdefault(origin, result)
    return failures
