"""Dead letters: a record a stage cannot process goes to ``dead-letters`` with its
original key, value and headers plus the ``dlq.*`` headers of DESIGN.md, and the
stream goes on. ``anting dlq list|replay`` reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.kafka import PRODUCER_MAX_REQUEST_BYTES, record_size
from shared.metrics import DEAD_LETTERS
from shared.settings import AntingSettings
from shared.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC

Headers = list[tuple[str, bytes | None]]
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class DeadLetter:
    """What goes to ``dead-letters``: send it with any producer, transactional or not."""

    key: bytes | None
    value: bytes | None
    headers: Headers

    def header(self, name: str) -> str | None:
        """The last header of that name as text (see :func:`show_bytes`); None if absent
        or null."""
        found: str | None = None
        for k, v in self.headers:
            if k == name:
                found = show_bytes(v)
        return found


def show_bytes(raw: bytes | None) -> str | None:
    """Bytes from a record (key, value, header) as text that loses nothing: UTF-8 as is,
    any other byte as a ``\\xNN`` escape; None stays None (a header may have a null
    value: kcat ``-H "name"``)."""
    if raw is None:
        return None
    return raw.decode("utf-8", errors="backslashreplace")


def dead_letter(
    *,
    stage: str,
    error: BaseException | str,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] = (),
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    extra: dict[str, str] | None = None,
) -> DeadLetter:
    """Build the dead letter; ``extra`` adds ``dlq.<name>`` headers (e.g. file, line)."""
    if isinstance(error, BaseException):
        error_class, message = type(error).__name__, str(error)
    else:
        error_class, message = "Rejected", error
    dlq: dict[str, str] = {
        "dlq.stage": stage,
        "dlq.original.topic": topic or "",
        "dlq.original.partition": "" if partition is None else str(partition),
        "dlq.original.offset": "" if offset is None else str(offset),
        "dlq.error.class": error_class,
        "dlq.error.message": message[:MAX_MESSAGE],
        "dlq.failed_at": datetime.now(UTC).isoformat(),
    }
    for name, val in (extra or {}).items():
        dlq[f"dlq.{name}"] = val
    original: Headers = [(k, v) for k, v in headers if not k.startswith("dlq.")]
    return DeadLetter(key, value, original + [(k, v.encode()) for k, v in dlq.items()])


def from_record(record: Any, *, stage: str, error: BaseException | str) -> DeadLetter:
    """A dead letter for an aiokafka ``ConsumerRecord``."""
    return dead_letter(
        stage=stage, error=error, key=record.key, value=record.value,
        headers=list(record.headers or ()), topic=record.topic,
        partition=record.partition, offset=record.offset,
    )


def fit(letter: DeadLetter, max_bytes: int) -> DeadLetter:
    """The letter itself if it fits in a record of ``max_bytes``; else the letter with its
    value cut to fit and a ``dlq.value.truncated`` header giving the original value's
    length (a record can be too large for ``dead-letters`` for the very reason it was
    dead-lettered). If the headers alone are too large, the original headers go too and
    only the ``dlq.*`` ones stay."""
    if record_size(letter.key, letter.value, letter.headers) <= max_bytes:
        return letter
    headers = letter.headers
    if record_size(letter.key, None, headers) > max_bytes // 2:
        headers = [(k, v) for k, v in headers if k.startswith("dlq.")]
    headers = [*headers, ("dlq.value.truncated", str(len(letter.value or b"")).encode())]
    room = max(0, max_bytes - record_size(letter.key, None, headers))
    return DeadLetter(letter.key, (letter.value or b"")[:room], headers)


class DeadLetterWriter:
    """Sends dead letters with the caller's producer (inside its transaction, if any).

    ``max_bytes`` is the largest record ``dead-letters`` takes (a stage that reads the
    topic's ``max.message.bytes`` at start sets it); larger letters are cut to fit
    (:func:`fit`), so writing a dead letter never fails for its size.
    """

    def __init__(self, producer: Any, settings: AntingSettings,
                 max_bytes: int = PRODUCER_MAX_REQUEST_BYTES) -> None:
        self.producer = producer
        self.topic = settings.topic(DEAD_LETTERS_TOPIC)
        self.max_bytes = max_bytes

    async def send(self, letter: DeadLetter, producer: Any = None) -> Any:
        """Queue the dead letter (on ``producer`` if given, e.g. the transactional
        producer of the batch); returns the delivery future (await it for the ack)."""
        letter = fit(letter, self.max_bytes)
        DEAD_LETTERS.labels(
            letter.header("dlq.stage") or "", letter.header("dlq.original.topic") or ""
        ).inc()
        return await (producer or self.producer).send(
            self.topic, value=letter.value, key=letter.key, headers=letter.headers
        )

    async def send_and_wait(self, letter: DeadLetter) -> Any:
        return await (await self.send(letter))


async def read_dead_letters(
    settings: AntingSettings, *, limit: int = 100, idle_ms: int = 1500
) -> list[tuple[int, DeadLetter]]:
    """Read up to ``limit`` dead letters from the beginning (no consumer group, no commits)."""
    from shared.kafka import make_consumer

    consumer = make_consumer(settings, settings.topic(DEAD_LETTERS_TOPIC), group_id=None)
    await consumer.start()
    out: list[tuple[int, DeadLetter]] = []
    try:
        while len(out) < limit:
            batch = await consumer.getmany(timeout_ms=idle_ms, max_records=limit - len(out))
            if not batch:
                break
            for records in batch.values():
                for r in records:
                    out.append((r.offset, DeadLetter(r.key, r.value, list(r.headers or ()))))
    finally:
        await consumer.stop()
    return out[:limit]


async def replay_dead_letters(
    settings: AntingSettings, *, stage: str | None = None, limit: int = 1000
) -> tuple[int, int]:
    """Send dead letters back to their original topic; returns (sent, skipped)."""
    from shared.kafka import make_producer

    letters = await read_dead_letters(settings, limit=limit)
    producer = make_producer(settings)
    await producer.start()
    sent = skipped = 0
    try:
        for _, letter in letters:
            if stage and letter.header("dlq.stage") != stage:
                continue
            topic = letter.header("dlq.original.topic")
            if not topic:
                skipped += 1
                continue
            headers = [(k, v) for k, v in letter.headers if not k.startswith("dlq.")]
            await producer.send(topic, value=letter.value, key=letter.key, headers=headers)
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent, skipped
