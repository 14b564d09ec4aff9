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

    def add(self, other: Summary) -> None:
        """Count ``other`` (a later pass over the same file) into this summary."""
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.skipped += other.skipped
        self.last_line = max(self.last_line, other.last_line)
        self.by_type.update(other.by_type)
        self.bytes_read += other.bytes_read
        self.offset = max(self.offset, other.offset)

    @property
    def total(self) -> int:
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
    """Publish ``items``; bad ones become dead letters (``dlq.file`` is ``name``).
    ``on_acked(summary)`` runs each time every item up to ``summary.last_line`` (and, for
    lines from :func:`read_lines`, up to byte ``summary.offset``) is acknowledged by the
    broker (in order). Items numbered up to ``start_after`` are skipped."""
    summary = Summary(name)
    dlq = DeadLetterWriter(producer, settings)
    window: deque[tuple[int, int, list[asyncio.Future[Any]], Counter[str], Counter[str], int]] = (
        deque())
    futures: list[asyncio.Future[Any]] = []
    types: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    size = 0
    last = start_after
    last_end = 0

    async def settle_oldest() -> None:
        line, end, futs, acc, rej, nbytes = window.popleft()
        await asyncio.gather(*futs)
        summary.last_line = line
        summary.offset = end
        summary.accepted += sum(acc.values())
        summary.by_type.update(acc)
        summary.rejected += sum(rej.values())
        summary.bytes_read += nbytes
        for t, k in acc.items():
            INGEST_EVENTS.labels(t, "accepted").inc(k)
        for t, k in rej.items():
            INGEST_EVENTS.labels(t, "rejected").inc(k)
        if on_acked is not None:
            result = on_acked(summary)
            if result is not None:
                await result

    def close_chunk() -> None:
        nonlocal futures, types, rejected, size
        window.append((last, last_end, futures, types, rejected, size))
        futures, types, rejected, size = [], Counter(), Counter(), 0

    async def handle(item: Item) -> None:
        nonlocal size, last, last_end
        size += item.size
        last = item.number
        last_end = item.end
        if item.number <= start_after:
            summary.skipped += 1
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
                                 extra={"file": name, item.unit: str(item.number)})
            futures.append(await dlq.send(letter))
            try:
                rejected[type_label(read_json(item.raw))] += 1
            except ValueError:
                rejected["unknown"] += 1
            return
        rec = to_record(event, settings, value=value)
        futures.append(await producer.send(rec.topic, rec.value, key=rec.key,
                                           headers=rec.headers))
        types[rec.event_type] += 1

    in_chunk = 0

    async def after(item: Item) -> bool:
        nonlocal in_chunk
        in_chunk += 1
        if in_chunk >= chunk:
            in_chunk = 0
            close_chunk()
            while len(window) > IN_FLIGHT:
                await settle_oldest()
        return stop is not None and stop.is_set()

    if isinstance(items, AsyncIterator):
        async for item in items:
            await handle(item)
            if await after(item):
                break
    else:
        for item in items:
            await handle(item)
            if await after(item):
                break
    close_chunk()
    while window:
        await settle_oldest()
    return summary


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
