"""Publishing files and streams (``anting publish``): a JSON object, a JSON array or
NDJSON, line by line, batched, with bad lines sent to ``dead-letters`` (with file name
and line number) while the rest goes on.

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

from services.ingest.handlers import (
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


def iter_items(stream: IO[bytes]) -> Iterator[Item]:
    """NDJSON line by line (streamed); a file whose first line starts a JSON array, or a
    multi-line (pretty-printed) single object, is read whole."""
    lines = iter(stream)
    head: list[bytes] = []
    first = b""
    for line in lines:
        head.append(line)
        if line.strip():
            first = line
            break
    if not first:
        return
    stripped = first.strip()
    whole_doc = stripped.startswith(b"[")
    if not whole_doc and stripped.startswith(b"{"):
        try:
            read_json(stripped)
        except ValueError:
            whole_doc = True  # "{" alone on a line: a pretty-printed object, or garbage
    if whole_doc:
        body = b"".join(head) + b"".join(lines)
        try:
            doc = read_json(body)
        except ValueError:
            doc = None
        if isinstance(doc, list):
            for i, obj in enumerate(doc, 1):
                yield Item(i, encode_json(obj), len(body) if i == len(doc) else 0, "item")
            return
        if isinstance(doc, dict):
            yield Item(1, body.strip(), len(body))
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
    """Publish ``items``; bad ones become dead letters. ``on_acked(summary)`` runs each time
    every item up to ``summary.last_line`` is acknowledged by the broker (in order)."""
    summary = Summary(name)
    dlq = DeadLetterWriter(producer, settings)
    window: deque[tuple[int, list[asyncio.Future[Any]], Counter[str], Counter[str], int]] = deque()
    futures: list[asyncio.Future[Any]] = []
    types: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    size = 0
    last = start_after

    async def settle_oldest() -> None:
        line, futs, acc, rej, nbytes = window.popleft()
        await asyncio.gather(*futs)
        summary.last_line = line
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
        window.append((last, futures, types, rejected, size))
        futures, types, rejected, size = [], Counter(), Counter(), 0

    async def handle(item: Item) -> None:
        nonlocal size, last
        size += item.size
        last = item.number
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
    one is made for this call and flushed and closed after it.

    From Python (e.g. a benchmark)::

        summary = asyncio.run(publish_file(settings, "events.ndjson"))
    """
    own = producer is None
    if producer is None:
        producer = make_producer(settings, **FILE_PRODUCER)
        await producer.start()
    label = name or ("<stdin>" if str(path) == "-" else Path(path).name)
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
