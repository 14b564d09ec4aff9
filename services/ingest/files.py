"""Publishing files and streams (``anting publish``): a JSON object, a JSON array or
NDJSON, line by line, batched, with bad lines sent to ``dead-letters`` (with the file's
path as given and the line number) while the rest goes on. A UTF-8 byte order mark at
the start of a file is skipped (editors on Windows write one).

Records are pipelined: the producer batches them (linger), and the acknowledgements
are awaited one chunk at a time, oldest first, so "every line up to N is acknowledged"
is always known (``on_acked``), which watch mode journals to resume after a crash.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from services.ingest.codec import (
    BOM,
    MAX_RECORD_BYTES,
    Unencodable,
    encode,
    to_record,
    type_label,
)
from shared.deadletters import DeadLetterWriter, dead_letter
from shared.events import EVENT_ADAPTER, encode_json, error_paths, read_json
from shared.kafka import make_producer
from shared.metrics import INGEST_EVENTS
from shared.settings import AntingSettings

__all__ = [
    "CHUNK",
    "FILE_PRODUCER",
    "IN_FLIGHT",
    "EventTooLarge",
    "InvalidEvent",
    "Item",
    "ItemPublisher",
    "MalformedJSON",
    "OnAcked",
    "Position",
    "Summary",
    "document_items",
    "iter_items",
    "publish_file",
    "publish_items",
    "read_lines",
    "starts_document",
    "whole_json",
]

# lines per acknowledged chunk, and chunks in flight before waiting for the oldest
CHUNK = 2000
IN_FLIGHT = 4
# the producer settings measured best for bulk files (fewer, larger requests)
FILE_PRODUCER: dict[str, Any] = {"linger_ms": 20, "max_batch_size": 1024 * 1024,
                                 "request_timeout_ms": 30000}


class InvalidEvent(ValueError):
    """A line that is JSON but not a valid event (message: the field paths)."""


class MalformedJSON(ValueError):
    """A line that is not JSON."""


class EventTooLarge(ValueError):
    """A valid event that is larger than a Kafka record may be."""


@dataclass
class Summary:
    """What publishing one file did."""

    name: str
    accepted: int = 0
    rejected: int = 0
    skipped: int = 0  # lines before the resume point (already published by an earlier run)
    last_line: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    # byte offset just past the last acknowledged line, for lines from read_lines (else 0)
    offset: int = 0
    # an article file: its document id once published, or why it was refused (nothing
    # published; services/ingest/document_files.py)
    document_id: str | None = None
    refused: str | None = None

    def add(self, other: Summary) -> None:
        """Count ``other`` (a later pass over the same file) into this summary."""
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.skipped += other.skipped
        self.last_line = max(self.last_line, other.last_line)
        self.by_type.update(other.by_type)
        self.bytes_read += other.bytes_read
        self.offset = max(self.offset, other.offset)
        self.document_id = other.document_id or self.document_id
        self.refused = other.refused or self.refused

    @property
    def total(self) -> int:
        """Events judged: accepted and rejected (skipped ones not counted)."""
        return self.accepted + self.rejected


# not frozen: a frozen dataclass pays object.__setattr__ per field, once per event
@dataclass(slots=True)
class Item:
    """One unit of a file: its 1-based line (or array item) number and raw bytes."""

    number: int
    raw: bytes
    size: int  # bytes of the file it stands for (progress)
    unit: str = "line"
    end: int = 0  # from read_lines: the byte offset just past this line (where to resume)


def starts_document(first: bytes) -> bool:
    """Whether a file whose first non-blank line is ``first`` is one JSON document (an
    array, or an object spread over several lines) rather than NDJSON."""
    stripped = first.strip()
    if stripped.startswith(b"["):
        return True
    if stripped.startswith(b"{"):
        try:
            read_json(stripped)
        except ValueError:
            return True  # "{" alone on a line: a pretty-printed object, or garbage
    return False


def document_items(body: bytes) -> list[Item] | None:
    """The events of a whole JSON document: an array's items (numbered from 1, unit
    ``item``) or one object (line 1); None when ``body`` is not one JSON array or object."""
    if body.startswith(BOM):
        body = body[len(BOM):]
    try:
        doc = read_json(body)
    except ValueError:
        return None
    if isinstance(doc, list):
        return [Item(i, encode_json(obj), len(body) if i == len(doc) else 0, "item")
                for i, obj in enumerate(doc, 1)]
    if isinstance(doc, dict):
        return [Item(1, body.strip(), len(body))]
    return None


def iter_items(stream: IO[bytes]) -> Iterator[Item]:
    """NDJSON line by line (streamed); a file whose first line starts a JSON array, or a
    multi-line (pretty-printed) single object, is read whole. A UTF-8 byte order mark at
    the start is skipped."""
    lines = iter(stream)
    head: list[bytes] = []
    first = b""
    for line in lines:
        if not head and line.startswith(BOM):
            line = line[len(BOM):]
        head.append(line)
        if line.strip():
            first = line
            break
    if not first:
        return
    if starts_document(first):
        body = b"".join(head) + b"".join(lines)
        items = document_items(body)
        if items is not None:
            yield from items
            return
        # not one JSON document: judge it line by line like NDJSON
        for n, line in enumerate(body.splitlines(keepends=True), 1):
            if line.strip():
                yield Item(n, line.rstrip(b"\r\n"), len(line))
        return
    # blank lines count as lines (so numbers match an editor's) but carry no event
    for n, line in enumerate(itertools.chain(head, lines), 1):
        if line.strip():
            yield Item(n, line.rstrip(b"\r\n"), len(line))


@dataclass
class Position:
    """How far :func:`read_lines` read a file: the byte offset just past a whole line,
    that line's number, whether that line was taken without its newline (the file's last
    line, a whole JSON value), and the incomplete line found after it (not taken)."""

    offset: int = 0
    line: int = 0
    open: bool = False
    rest: bytes = b""


def whole_json(line: bytes) -> bool:
    """Whether ``line`` is a whole JSON object or array (a line cut short never is)."""
    try:
        return isinstance(read_json(line), dict | list)
    except ValueError:
        return False


def read_lines(stream: IO[bytes], pos: Position, *, take_last: bool = False) -> Iterator[Item]:
    """The whole lines of an NDJSON file from ``pos.offset`` (numbered from ``pos.line`` + 1),
    advancing ``pos`` as they are read, as a tail does: a last line without its newline
    may still be being written, so it is left in ``pos.rest`` — unless ``take_last`` (the
    file has stopped changing) and it is a whole JSON object or array. A line whose
    newline arrives after it was taken that way is not counted twice. A UTF-8 byte order
    mark at offset 0 is skipped. Blank lines are counted but yield nothing."""
    stream.seek(pos.offset)
    pos.rest = b""
    for line in stream:
        if pos.open:
            pos.open = False
            if line in (b"\n", b"\r\n"):  # the newline of the line taken without it
                pos.offset += len(line)
                continue
        if not line.endswith(b"\n"):
            if not (take_last and line.strip() and whole_json(line)):
                pos.rest = line
                return
            pos.open = True
        start = pos.offset
        pos.line += 1
        pos.offset += len(line)
        if start == 0 and line.startswith(BOM):
            line = line[len(BOM):]
        if line.strip():
            yield Item(pos.line, line.rstrip(b"\r\n"), len(line), end=pos.offset)


def _compact(exc: ValidationError) -> str:
    return "; ".join(f"{e['path']}: {e['message']}" for e in error_paths(exc))[:1500]


OnAcked = Callable[[Summary], Awaitable[None] | None]


@dataclass
class _Chunk:
    """The items sent since the previous chunk closed, until every one is acknowledged:
    their acknowledgement futures (records and dead letters), the events accepted and
    rejected by type, and the bytes of the file they stand for. ``last_line`` and
    ``end`` are where the file stood when the chunk closed (line number, byte offset)."""

    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    size: int = 0
    items: int = 0
    last_line: int = 0
    end: int = 0


class ItemPublisher:
    """Publishes the items of one file (or stream) in chunks of ``chunk`` items whose
    acknowledgements are awaited oldest first, with at most :data:`IN_FLIGHT` chunks
    waiting, so that "every item up to N is acknowledged" is always known: each time a
    chunk is, its counts go into :attr:`summary` (and the metrics) and
    ``on_acked(summary)`` runs. A bad item becomes a dead letter (``dlq.file`` is
    ``name``, ``dlq.line`` or ``dlq.item`` its number). Items numbered up to
    ``start_after`` are counted as skipped, not sent.

    Use: ``await add(item)`` for each item in order, then ``await finish()`` (the
    summary). Raises what the producer raises (a broker that failed)."""

    def __init__(self, settings: AntingSettings, producer: AIOKafkaProducer, *, name: str,
                 start_after: int = 0, on_acked: OnAcked | None = None,
                 chunk: int = CHUNK) -> None:
        self.settings = settings
        self.producer = producer
        self.name = name
        self.start_after = start_after
        self.on_acked = on_acked
        self.chunk = chunk
        self.summary = Summary(name)
        self.dlq = DeadLetterWriter(producer, settings)
        self.open = _Chunk()  # the chunk items are added to
        self.waiting: deque[_Chunk] = deque()  # closed, oldest first, not yet acknowledged
        # the last item added: its number (line or array item) and the byte offset past it
        self.last_line = start_after
        self.end = 0

    async def add(self, item: Item) -> None:
        """Send ``item`` (or its dead letter); once a chunk is full, close it, and wait for
        the oldest chunks while more than :data:`IN_FLIGHT` are waiting."""
        await self._send(item)
        self.open.items += 1
        if self.open.items >= self.chunk:
            self._close()
            while len(self.waiting) > IN_FLIGHT:
                await self._settle_oldest()

    async def finish(self) -> Summary:
        """Close the open chunk, wait for every chunk, and return the summary."""
        self._close()
        while self.waiting:
            await self._settle_oldest()
        return self.summary

    async def _send(self, item: Item) -> None:
        chunk = self.open
        chunk.size += item.size
        self.last_line = item.number
        self.end = item.end
        if item.number <= self.start_after:
            self.summary.skipped += 1
            return
        error: Exception | None = None
        try:
            event = EVENT_ADAPTER.validate_json(item.raw)
            value = encode(event)
            if len(value) > MAX_RECORD_BYTES:
                error = EventTooLarge(f"event is {len(value)} bytes; the limit is "
                                      f"{MAX_RECORD_BYTES}")
        except Unencodable as exc:
            error = InvalidEvent(f"$: {exc}")
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
                error = MalformedJSON(_compact(exc))
            else:
                error = InvalidEvent(_compact(exc))
        if error is not None:
            letter = dead_letter(stage="ingest", error=error, key=None, value=item.raw,
                                 extra={"file": self.name, item.unit: str(item.number)})
            chunk.futures.append(await self.dlq.send(letter))
            try:
                chunk.rejected[type_label(read_json(item.raw))] += 1
            except ValueError:
                chunk.rejected["unknown"] += 1
            return
        rec = to_record(event, self.settings, value=value)
        chunk.futures.append(await self.producer.send(rec.topic, rec.value, key=rec.key,
                                                      headers=rec.headers))
        chunk.accepted[rec.event_type] += 1

    def _close(self) -> None:
        """Put the open chunk in line, marked with where the file stands, and open a new one."""
        self.open.last_line, self.open.end = self.last_line, self.end
        self.waiting.append(self.open)
        self.open = _Chunk()

    async def _settle_oldest(self) -> None:
        chunk = self.waiting.popleft()
        await asyncio.gather(*chunk.futures)
        summary = self.summary
        summary.last_line = chunk.last_line
        summary.offset = chunk.end
        summary.accepted += sum(chunk.accepted.values())
        summary.by_type.update(chunk.accepted)
        summary.rejected += sum(chunk.rejected.values())
        summary.bytes_read += chunk.size
        for t, k in chunk.accepted.items():
            INGEST_EVENTS.labels(t, "accepted").inc(k)
        for t, k in chunk.rejected.items():
            INGEST_EVENTS.labels(t, "rejected").inc(k)
        if self.on_acked is not None:
            result = self.on_acked(summary)
            if result is not None:
                await result


async def publish_items(
    settings: AntingSettings,
    producer: AIOKafkaProducer,
    items: Iterable[Item] | AsyncIterator[Item],
    *,
    name: str,
    start_after: int = 0,
    on_acked: OnAcked | None = None,
    stop: asyncio.Event | None = None,
    chunk: int = CHUNK,
) -> Summary:
    """Publish ``items`` with an :class:`ItemPublisher` and return its summary; bad ones
    become dead letters (``dlq.file`` is ``name``). ``on_acked(summary)`` runs each time
    every item up to ``summary.last_line`` (and, for lines from :func:`read_lines`, up to
    byte ``summary.offset``) is acknowledged by the broker (in order). Items numbered up
    to ``start_after`` are skipped. Once ``stop`` is set, no item after the current one
    is sent, and what was sent is still awaited."""
    publisher = ItemPublisher(settings, producer, name=name, start_after=start_after,
                              on_acked=on_acked, chunk=chunk)
    if isinstance(items, AsyncIterator):
        async for item in items:
            await publisher.add(item)
            if stop is not None and stop.is_set():
                break
    else:
        for item in items:
            await publisher.add(item)
            if stop is not None and stop.is_set():
                break
    return await publisher.finish()


async def publish_file(
    settings: AntingSettings,
    path: Path | str,
    *,
    producer: AIOKafkaProducer | None = None,
    name: str | None = None,
    start_after: int = 0,
    on_acked: OnAcked | None = None,
    stop: asyncio.Event | None = None,
    chunk: int = CHUNK,
) -> Summary:
    """Publish one file (``-`` for stdin) and return its summary; with no ``producer``
    one is made for this call and flushed and closed after it. Dead letters name the file
    by ``name``, else by ``path`` as given (``<stdin>`` for stdin).

    From Python (e.g. a benchmark)::

        summary = asyncio.run(publish_file(settings, "events.ndjson"))
    """
    own = producer is None
    if producer is None:
        producer = make_producer(settings, **FILE_PRODUCER)
        await producer.start()
    label = name or ("<stdin>" if str(path) == "-" else str(path))
    try:
        if str(path) == "-":
            stream: IO[bytes] = sys.stdin.buffer
            return await publish_items(settings, producer, iter_items(stream), name=label,
                                       start_after=start_after, on_acked=on_acked,
                                       stop=stop, chunk=chunk)
        # a local file read line by line: short blocking reads between sends
        with open(path, "rb") as f:  # noqa: ASYNC230
            return await publish_items(settings, producer, iter_items(f), name=label,
                                       start_after=start_after, on_acked=on_acked,
                                       stop=stop, chunk=chunk)
    finally:
        if own:
            await producer.stop()
