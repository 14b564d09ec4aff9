"""Dead letters: a record a stage cannot process goes to ``dead-letters`` with its
original key, value and headers plus the ``dlq.*`` headers of DESIGN.md, and the
stream goes on. ``anting dlq list|replay`` reads them back.

Reading back (:func:`read_letters`) takes no consumer group and commits nothing. The
newest letters come first by default: each partition is read backwards from its end,
one window of offsets at a time (end − N, then further back), until enough letters
match the :class:`Selection`, and the partitions are merged by record timestamp. A
topic that keeps 90 days of letters is never read from offset 0 just to show the
last few. ``since``/``until`` become offsets with ListOffsets by timestamp, so a time
range is read, not scanned for.

Replay (:func:`replay`) sends selected letters back to their original topic and
records each one on ``dead-letters-replayed`` (keyed by the letter's partition and
offset, compacted) in the same Kafka transaction as the record it sends: a consumer
reading ``read_committed`` (every Anting stage) sees both or neither, and a second
replay skips what the first one sent. Its transactional id is fixed per topic prefix,
so a replay started while another runs fences the older one, and it reads what was
replayed only after that, when the older one's records are committed or aborted.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError

from shared.events import error_paths, readable_header_name
from shared.kafka import PRODUCER_MAX_REQUEST_BYTES, record_size
from shared.metrics import DEAD_LETTERS
from shared.settings import AntingSettings
from shared.topics import DEAD_LETTERS as DEAD_LETTERS_TOPIC
from shared.topics import DEAD_LETTERS_REPLAYED

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
    if isinstance(error, ValidationError):
        # the field paths and messages ingest answers with, not pydantic's own dump
        paths = error_paths(error)
        error_class, message = type(error).__name__, "; ".join(
            f"{e['path']}: {e['message']}" for e in paths) or str(error)
    elif isinstance(error, BaseException):
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
    # a header name that was not UTF-8 goes out as Java's client reads it (U+FFFD for each
    # such byte): a producer cannot write a lone surrogate; the reason names the bytes
    original: Headers = [(readable_header_name(k), v) for k, v in headers if not k.startswith("dlq.")]
    return DeadLetter(key, value, original + [(k, v.encode()) for k, v in dlq.items()])


def from_record(record: ConsumerRecord[bytes, bytes], *, stage: str, error: BaseException | str) -> DeadLetter:
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

    def __init__(self, producer: AIOKafkaProducer | None, settings: AntingSettings,
                 max_bytes: int = PRODUCER_MAX_REQUEST_BYTES) -> None:
        self.producer = producer
        self.topic = settings.topic(DEAD_LETTERS_TOPIC)
        self.max_bytes = max_bytes

    async def send(self, letter: DeadLetter,
                   producer: AIOKafkaProducer | None = None) -> asyncio.Future[RecordMetadata]:
        """Queue the dead letter (on ``producer`` if given, e.g. the transactional
        producer of the batch); returns the delivery future (await it for the ack)."""
        letter = fit(letter, self.max_bytes)
        DEAD_LETTERS.labels(
            letter.header("dlq.stage") or "", letter.header("dlq.original.topic") or ""
        ).inc()
        sender = producer or self.producer
        if sender is None:
            raise RuntimeError("no producer: give one to send() or to the writer")
        ack: asyncio.Future[RecordMetadata] = await sender.send(
            self.topic, value=letter.value, key=letter.key, headers=letter.headers)
        return ack

    async def send_and_wait(self, letter: DeadLetter) -> Any:
        return await (await self.send(letter))




# ------------------------------------------------------------------ reading back

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``text``: a duration back from ``now`` (``90s``, ``30m``,
    ``2h``, ``7d``, ``1w``, or a sum such as ``1h30m``) or an RFC 3339 date-time with an
    offset (``2024-05-01T10:00:00+08:00``, ``2024-05-01T02:00:00Z``). Returns an aware
    datetime; raises ValueError saying what is accepted."""
    t = text.strip()
    if _DURATION.fullmatch(t):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(t))
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(t.upper())  # RFC 3339 allows a lowercase t and z
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30m, 2h, 7d) nor an RFC 3339 time "
                         "(2024-05-01T10:00:00Z)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add Z or one such as +08:00")
    return when


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def origin(letter: DeadLetter) -> str:
    """Where a dead letter came from, for people: ``topic[partition]@offset`` (or just the
    topic when the stage did not say where in it, as notify's dead deliveries do),
    ``file:line`` or ``file[item]`` for a bad unit of a file ``anting publish`` read
    (headers ``dlq.file`` and ``dlq.line`` or ``dlq.item``, shown as they are), else ""."""
    topic = letter.header("dlq.original.topic")
    if topic:
        partition = letter.header("dlq.original.partition")
        offset = letter.header("dlq.original.offset")
        return f"{topic}[{partition}]@{offset}" if partition and offset else topic
    file = letter.header("dlq.file")
    if file is not None:
        line, item = letter.header("dlq.line"), letter.header("dlq.item")
        if line:
            return f"{file}:{line}"
        if item:
            return f"{file}[{item}]"
        return file
    return ""


@dataclass(frozen=True)
class StoredLetter:
    """A dead letter as read back: its partition and offset in ``dead-letters`` and when
    it was written (the record's Kafka timestamp, milliseconds since the epoch)."""

    partition: int
    offset: int
    timestamp: int
    letter: DeadLetter

    @property
    def stage(self) -> str:
        return self.letter.header("dlq.stage") or ""

    @property
    def original_topic(self) -> str:
        return self.letter.header("dlq.original.topic") or ""

    @property
    def written_at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp / 1000, UTC)

    @property
    def origin(self) -> str:
        return origin(self.letter)


@dataclass(frozen=True)
class Selection:
    """Which dead letters: every criterion given must hold; none given, all of them.

    ``stage`` is ``dlq.stage``; ``topic`` the original topic, with or without the topic
    prefix; ``since``/``until`` bound the letter's Kafka timestamp (when it was written,
    both inclusive); ``partition`` and ``from_offset``/``to_offset`` (inclusive) are the
    letter's own place in ``dead-letters``."""

    stage: str | None = None
    topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def narrows(self) -> bool:
        """True when a criterion beyond the partition is given (replay needs one)."""
        return any(v is not None for v in (
            self.stage, self.topic, self.since, self.until, self.from_offset, self.to_offset))

    def matches(self, stored: StoredLetter, prefix: str = "") -> bool:
        """Whether ``stored`` is selected (``prefix``: the settings' topic prefix)."""
        if self.stage is not None and stored.stage != self.stage:
            return False
        if self.topic is not None and stored.original_topic not in (self.topic, prefix + self.topic):
            return False
        if self.since is not None and stored.timestamp < _ms(self.since):
            return False
        return self.until is None or stored.timestamp <= _ms(self.until)


async def topic_partitions(settings: AntingSettings) -> dict[str, list[int]]:
    """Every topic's partitions, ``{name: [partition, ...]}``, from the metadata of all
    topics (a request naming a topic that does not exist could create it)."""
    from shared.kafka import make_admin

    admin = make_admin(settings)
    await admin.start()
    try:
        described: list[dict[str, Any]] = await admin.describe_topics(None)
    finally:
        await admin.close()
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"])
            for t in described if not t["error_code"]}


class _Reader:
    """One consumer with no group and no commits over one topic (``read_committed``: an
    aborted transaction's records are no letters): its partitions, the offsets a
    selection spans, and the records of a window of offsets."""

    def __init__(self, settings: AntingSettings, topic: str) -> None:
        from shared.kafka import make_consumer

        self.topic = topic
        self.settings = settings
        self.consumer = make_consumer(settings, group_id=None)
        self.partitions: list[TopicPartition] = []
        self.all_topics: set[str] = set()

    async def __aenter__(self) -> _Reader:
        await self.consumer.start()
        try:
            await self._may_read()
            every = await topic_partitions(self.settings)
            self.all_topics = set(every)
            self.partitions = [TopicPartition(self.topic, p) for p in every.get(self.topic, ())]
        except BaseException:
            await self.consumer.stop()
            raise
        return self

    async def _may_read(self) -> None:
        """Raise ``TopicAuthorizationFailedError`` unless this principal may Read the topic.

        A topic the principal may not Describe is simply absent from the metadata of all
        topics, exactly like one that does not exist: without asking, a refusal would
        read as "no letters". A topic that does not exist is no refusal (it holds none)."""
        from aiokafka.errors import (
            IncompatibleBrokerVersion,
            KafkaError,
            TopicAuthorizationFailedError,
            UnknownTopicOrPartitionError,
        )

        from shared.aiokafka_ext import client_of
        from shared.kafka_access import topic_operations

        try:
            allowed = (await topic_operations(client_of(self.consumer), [self.topic]))[self.topic]
        except IncompatibleBrokerVersion:  # before Kafka 2.3 it cannot say; a fetch will
            return
        if isinstance(allowed, UnknownTopicOrPartitionError):
            return
        if isinstance(allowed, KafkaError):
            raise allowed
        if "Read" not in allowed:
            raise TopicAuthorizationFailedError(self.topic)

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def bounds(self, sel: Selection) -> dict[TopicPartition, tuple[int, int]]:
        """``{partition: (first, end)}``: the offsets ``first <= offset < end`` that can hold
        selected letters, per partition (none for a partition with nothing to read)."""
        tps = [tp for tp in self.partitions if sel.partition is None or tp.partition == sel.partition]
        if not tps:
            return {}
        lo: dict[TopicPartition, int] = dict(await self.consumer.beginning_offsets(tps))
        hi: dict[TopicPartition, int] = dict(await self.consumer.end_offsets(tps))
        if sel.since is not None:
            # the first offset whose timestamp is at or after `since`: every one before is older
            found = await self.consumer.offsets_for_times({tp: _ms(sel.since) for tp in tps})
            for tp in tps:
                lo[tp] = max(lo[tp], found[tp].offset) if found.get(tp) is not None else hi[tp]
        if sel.until is not None:
            found = await self.consumer.offsets_for_times({tp: _ms(sel.until) + 1 for tp in tps})
            for tp in tps:
                if found.get(tp) is not None:
                    hi[tp] = min(hi[tp], found[tp].offset)
        if sel.from_offset is not None:
            lo = {tp: max(v, sel.from_offset) for tp, v in lo.items()}
        if sel.to_offset is not None:
            hi = {tp: min(v, sel.to_offset + 1) for tp, v in hi.items()}
        return {tp: (lo[tp], hi[tp]) for tp in tps if lo[tp] < hi[tp]}

    async def records(self, tp: TopicPartition, lo: int, hi: int, stall: float = 30.0) -> AsyncGenerator[Any, None]:
        """The records at offsets ``lo <= offset < hi`` of ``tp``, in offset order. Transaction
        markers and aborted records take offsets but are not returned; the position still
        moves past them. Raises TimeoutError when the position stays put for ``stall`` s."""
        self.consumer.assign([tp])
        self.consumer.seek(tp, lo)
        at, moved = lo, time.monotonic()
        while True:
            position = await self.consumer.position(tp)
            if position >= hi:
                return
            if position != at:
                at, moved = position, time.monotonic()
            elif time.monotonic() - moved > stall:
                raise TimeoutError(f"{tp.topic}[{tp.partition}] gave nothing past offset {position} "
                                   f"in {stall:.0f}s")
            batch = await self.consumer.getmany(tp, timeout_ms=500, max_records=500)
            for r in batch.get(tp, ()):
                if r.offset >= hi:
                    return
                if r.offset >= lo:
                    yield r

    async def letters(self, tp: TopicPartition, lo: int, hi: int) -> AsyncGenerator[StoredLetter, None]:
        """:meth:`records` as dead letters."""
        async for r in self.records(tp, lo, hi):
            yield StoredLetter(r.partition, r.offset, r.timestamp,
                               DeadLetter(r.key, r.value, list(r.headers or ())))


Keep = Callable[[StoredLetter], bool]


async def _newest(reader: _Reader, tp: TopicPartition, lo: int, hi: int, want: int, keep: Keep) -> list[StoredLetter]:
    """The newest ``want`` kept letters of ``tp`` in ``[lo, hi)``, newest first: windows of
    offsets read backwards from ``hi``, the first ``want`` wide (all it takes when every
    letter is kept), each further one twice as wide as the one before (a filter that
    keeps few letters reaches far back in few reads)."""
    found: list[StoredLetter] = []
    step = max(want, 16)
    top = hi
    while top > lo and len(found) < want:
        bottom = max(lo, top - step)
        newest: deque[StoredLetter] = deque(maxlen=want - len(found))
        async for stored in reader.letters(tp, bottom, top):
            if keep(stored):
                newest.append(stored)
        found.extend(reversed(newest))
        top, step = bottom, step * 2
    return found


async def _oldest(reader: _Reader, tp: TopicPartition, lo: int, hi: int, want: int, keep: Keep) -> list[StoredLetter]:
    """The oldest ``want`` kept letters of ``tp`` in ``[lo, hi)``, oldest first."""
    found: list[StoredLetter] = []
    letters = reader.letters(tp, lo, hi)
    try:
        async for stored in letters:
            if keep(stored):
                found.append(stored)
                if len(found) >= want:
                    break
    finally:
        await letters.aclose()
    return found


async def read_letters(
    settings: AntingSettings, selection: Selection = Selection(), *, limit: int = 100,
    newest_first: bool = True,
) -> list[StoredLetter]:
    """Up to ``limit`` dead letters that ``selection`` keeps: the newest first, or with
    ``newest_first=False`` the oldest first (by record timestamp across partitions; by
    offset within one). What the topic holds now, committed: it waits for nothing, and
    a topic that does not exist holds no letters. Raises what the Kafka client raises
    (``KafkaConnectionError`` without a broker), TimeoutError on a partition that stops
    answering."""
    def keep(stored: StoredLetter) -> bool:
        return selection.matches(stored, settings.topic_prefix)

    picked: list[StoredLetter] = []
    async with _Reader(settings, settings.topic(DEAD_LETTERS_TOPIC)) as reader:
        for tp, (lo, hi) in (await reader.bounds(selection)).items():
            read = _newest if newest_first else _oldest
            picked += await read(reader, tp, lo, hi, limit, keep)
    picked.sort(key=lambda s: (s.timestamp, s.partition, s.offset), reverse=newest_first)
    return picked[:limit]


async def read_dead_letters(
    settings: AntingSettings, *, limit: int = 100, idle_ms: int = 1500
) -> list[tuple[int, DeadLetter]]:
    """``(offset, letter)`` of the newest ``limit`` dead letters, newest first (see
    :func:`read_letters` for a selection, the partition and the timestamp). ``idle_ms``
    is accepted for older callers and not needed: the end offsets say when all is read."""
    return [(s.offset, s.letter) for s in await read_letters(settings, limit=limit)]


# ------------------------------------------------------------------------- replay

REPLAY_CHUNK = 100  # letters per transaction: what a crash can leave unsent, to send again

#: The header replay puts on each record it sends back: ``<stage> <partition>@<offset>`` of
#: the letter it came from. Not a ``dlq.*`` name, so a stage that fails on the record again
#: keeps it on the new letter (:func:`dead_letter` leaves out only ``dlq.*`` headers), and
#: the next replay knows that letter as one a replay already sent round.
REPLAYED_HEADER = "anting.replayed"


@dataclass(frozen=True)
class ReplayEntry:
    """One selected letter and what replay did with it: ``reason`` says why it was not
    sent ("" when it was); ``replayed_at`` when an earlier replay sent it (RFC 3339)."""

    partition: int
    offset: int
    timestamp: int
    stage: str
    origin: str
    topic: str
    reason: str = ""
    replayed_at: str = ""


@dataclass
class ReplayReport:
    """What :func:`replay` did: the letters sent (or, in a dry run, that would be), those
    skipped with the reason, and those an earlier replay sent already, each list oldest
    first."""

    dry_run: bool = False
    replayed: list[ReplayEntry] = field(default_factory=list)
    skipped: list[ReplayEntry] = field(default_factory=list)
    replayed_before: list[ReplayEntry] = field(default_factory=list)


class ReplayFailed(RuntimeError):
    """Replay stopped part way (``report`` says what was sent before; nothing of the
    transaction in flight was, as it is aborted)."""

    def __init__(self, message: str, report: ReplayReport) -> None:
        super().__init__(message)
        self.report = report


Progress = Callable[[str, int, int], None]


def _marker_key(partition: int, offset: int) -> bytes:
    return f"{partition}@{offset}".encode()


async def replayed_letters(settings: AntingSettings) -> dict[tuple[int, int], dict[str, Any]]:
    """What ``dead-letters-replayed`` records, as ``{(partition, offset): record}`` (the
    record: JSON ``partition``, ``offset``, ``timestamp`` (the letter's, ms), ``stage``,
    ``topic``, ``replayed_at``, ``by``); the last record of a letter wins and a null value
    removes it. Committed records up to the end now; none when the topic is absent."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    async with _Reader(settings, settings.topic(DEAD_LETTERS_REPLAYED)) as reader:
        for tp, (lo, hi) in (await reader.bounds(Selection())).items():
            async for r in reader.records(tp, lo, hi):
                try:
                    partition, offset = (int(x) for x in (r.key or b"").decode().split("@"))
                except ValueError:
                    continue  # not written by replay: nothing to skip for it
                if r.value is None:
                    out.pop((partition, offset), None)
                    continue
                try:
                    out[(partition, offset)] = orjson.loads(r.value)
                except orjson.JSONDecodeError:
                    continue
    return out


def _why_not(stored: StoredLetter, topics: set[str], own: str, again: bool = False) -> str:
    """Why ``stored`` cannot be sent back ("" when it can); unless ``again``, a letter the
    same stage wrote for a record a replay had sent (it failed again: sending it round once
    more would only make another letter)."""
    topic = stored.original_topic
    if not topic:
        if stored.letter.header("dlq.file") is not None:
            return "no original topic: a bad unit of a file; correct it and publish the file again"
        return "no original topic (dlq.original.topic is empty)"
    cut = stored.letter.header("dlq.value.truncated")
    if cut is not None:
        return (f"its value was cut to fit dead-letters ({cut} bytes originally): "
                "sending it would publish another record")
    if topic == own:
        return "its original topic is dead-letters itself"
    if topic not in topics:
        return f"original topic {topic} does not exist"
    came = (stored.letter.header(REPLAYED_HEADER) or "").split(" ")
    if not again and len(came) == 2 and came[0] == stored.stage:
        return (f"failed again after a replay: its record was sent round from letter {came[1]}; "
                "fix the cause, then --again sends it once more")
    return ""


def _entry(stored: StoredLetter, reason: str = "", replayed_at: str = "") -> ReplayEntry:
    return ReplayEntry(stored.partition, stored.offset, stored.timestamp, stored.stage,
                       stored.origin, stored.original_topic, reason, replayed_at)


def _order(e: ReplayEntry) -> tuple[int, int, int]:
    return (e.timestamp, e.partition, e.offset)


async def _select(
    reader: _Reader, settings: AntingSettings, selection: Selection, limit: int, again: bool,
    done: dict[tuple[int, int], dict[str, Any]], progress: Progress | None,
) -> ReplayReport:
    """Pass one: the oldest ``limit`` selected letters that can be sent (in ``replayed``),
    and, up to the newest of those, the ones skipped and the ones replayed before."""
    report = ReplayReport()
    bounds = await reader.bounds(selection)
    total, scanned = sum(hi - lo for lo, hi in bounds.values()), 0
    for tp, (lo, hi) in bounds.items():
        sendable = 0
        letters = reader.letters(tp, lo, hi)
        try:
            async for stored in letters:
                if progress is not None:
                    progress("reading", scanned + stored.offset - lo + 1, total)
                if not selection.matches(stored, settings.topic_prefix):
                    continue
                before = done.get((stored.partition, stored.offset))
                if before is not None and before.get("timestamp") == stored.timestamp and not again:
                    report.replayed_before.append(_entry(stored, replayed_at=str(before.get("replayed_at", ""))))
                elif reason := _why_not(stored, reader.all_topics, reader.topic, again):
                    report.skipped.append(_entry(stored, reason))
                else:
                    report.replayed.append(_entry(stored))
                    sendable += 1
                    if sendable >= limit:
                        break
        finally:
            await letters.aclose()
        scanned += hi - lo
    report.replayed.sort(key=_order)
    if len(report.replayed) > limit:
        report.replayed = report.replayed[:limit]
    if len(report.replayed) == limit:
        # what lies beyond the last letter sent was not looked at, as far as the caller knows
        last = _order(report.replayed[-1])
        report.skipped = [e for e in report.skipped if _order(e) <= last]
        report.replayed_before = [e for e in report.replayed_before if _order(e) <= last]
    report.skipped.sort(key=_order)
    report.replayed_before.sort(key=_order)
    return report


def _replayer() -> str:
    """Who replays, for the record: user@host as far as the system says."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers: the host still says something
        user = "?"
    return f"{user}@{socket.gethostname()}"


async def _send(
    reader: _Reader, producer: AIOKafkaProducer, settings: AntingSettings, chosen: list[ReplayEntry],
    report: ReplayReport, progress: Progress | None,
) -> None:
    """Pass two: read each chosen letter again and send it with its marker, REPLAY_CHUNK
    letters per transaction; ``report.replayed`` holds what is committed."""
    markers = settings.topic(DEAD_LETTERS_REPLAYED)
    by = _replayer()
    wanted: dict[int, dict[int, ReplayEntry]] = {}
    for e in chosen:
        wanted.setdefault(e.partition, {})[e.offset] = e
    pending: list[ReplayEntry] = []
    sent: set[tuple[int, int]] = set()

    async def commit() -> None:
        await producer.commit_transaction()
        report.replayed.extend(pending)
        sent.update((e.partition, e.offset) for e in pending)
        pending.clear()
        if progress is not None:
            progress("sending", len(report.replayed), len(chosen))

    try:
        for partition, entries in sorted(wanted.items()):
            tp = TopicPartition(reader.topic, partition)
            async for r in reader.records(tp, min(entries), max(entries) + 1):
                entry = entries.get(r.offset)
                if entry is None or r.timestamp != entry.timestamp:
                    continue
                if not pending:
                    await producer.begin_transaction()
                headers = [(k, v) for k, v in (r.headers or ())
                           if not k.startswith("dlq.") and k != REPLAYED_HEADER]
                headers.append((REPLAYED_HEADER, f"{entry.stage} {entry.partition}@{entry.offset}".encode()))
                await producer.send(entry.topic, value=r.value, key=r.key, headers=headers)
                await producer.send(markers, key=_marker_key(entry.partition, entry.offset), value=orjson.dumps({
                    "partition": entry.partition, "offset": entry.offset, "timestamp": entry.timestamp,
                    "stage": entry.stage, "topic": entry.topic,
                    "replayed_at": datetime.now(UTC).isoformat(timespec="milliseconds"), "by": by,
                }))
                pending.append(entry)
                if len(pending) >= REPLAY_CHUNK:
                    await commit()
        if pending:
            await commit()
    except BaseException as exc:
        if pending:
            pending.clear()
            try:
                await asyncio.shield(producer.abort_transaction())
            except Exception:  # the broker aborts it anyway when the transaction times out
                pass
        if isinstance(exc, Exception):
            raise ReplayFailed(f"replay stopped after {len(report.replayed)} letter(s): "
                               f"{type(exc).__name__}: {exc}", report) from exc
        raise
    for e in chosen:
        if (e.partition, e.offset) not in sent:
            report.skipped.append(ReplayEntry(
                e.partition, e.offset, e.timestamp, e.stage, e.origin, e.topic,
                "gone from dead-letters before it could be sent"))
    report.skipped.sort(key=_order)


async def replay(
    settings: AntingSettings, selection: Selection, *, limit: int = 1000, again: bool = False,
    dry_run: bool = False, progress: Progress | None = None,
) -> ReplayReport:
    """Send the oldest ``limit`` dead letters ``selection`` keeps back to their original
    topic (original key, value and headers, ``dlq.*`` left out), each recorded on
    ``dead-letters-replayed`` in the same transaction, and carrying :data:`REPLAYED_HEADER`;
    letters an earlier replay sent, and letters a stage wrote for a record a replay sent
    (it failed again), are skipped unless ``again``. Letters that cannot be sent are
    skipped with the reason:
    no original topic (a bad line of a file), a value cut to fit, an original topic
    that does not exist. ``dry_run`` sends and records nothing. ``progress(phase, done,
    total)`` is called while reading (offsets) and sending (letters).

    Raises :class:`ReplayFailed` (with what was sent) when sending fails part way, and
    what the Kafka client raises before anything is sent (no broker, a fenced producer)."""
    from shared.kafka import ensure_topics, make_producer

    producer = None
    if not dry_run:
        await ensure_topics(settings, [DEAD_LETTERS_REPLAYED])
        producer = make_producer(settings, transactional_id=f"{settings.topic_prefix}anting-dlq-replay")
        await producer.start()  # fences a replay still running with the same id
    try:
        # read only now: whatever a fenced replay committed is in, what it had open is aborted
        done = await replayed_letters(settings)
        async with _Reader(settings, settings.topic(DEAD_LETTERS_TOPIC)) as reader:
            report = await _select(reader, settings, selection, limit, again, done, progress)
            report.dry_run = dry_run
            if producer is not None:
                chosen, report.replayed = report.replayed, []
                await _send(reader, producer, settings, chosen, report, progress)
    finally:
        if producer is not None:
            await producer.stop()
    return report


async def replay_dead_letters(
    settings: AntingSettings, *, stage: str | None = None, limit: int = 1000, everything: bool = False,
) -> tuple[int, int]:
    """:func:`replay` of one stage's letters (or, with ``everything``, all of them);
    returns (sent, skipped), not counting letters replayed before. Raises ValueError
    when neither a stage nor ``everything`` is given."""
    selection = Selection(stage=stage)
    if not selection.narrows() and not everything:
        raise ValueError("say which dead letters to replay: a stage, or everything=True")
    report = await replay(settings, selection, limit=limit)
    return len(report.replayed), len(report.skipped)


def offset_ranges(entries: Iterable[ReplayEntry]) -> str:
    """Entries' coordinates as compact ranges, e.g. ``0@3-7,9 1@2``: partition@offsets."""
    by_partition: dict[int, list[int]] = {}
    for e in entries:
        by_partition.setdefault(e.partition, []).append(e.offset)
    parts = []
    for partition, offsets in sorted(by_partition.items()):
        offsets.sort()
        runs: list[str] = []
        start = prev = offsets[0]
        for o in [*offsets[1:], None]:
            if o is not None and o == prev + 1:
                prev = o
                continue
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            if o is not None:
                start = prev = o
        parts.append(f"{partition}@{','.join(runs)}")
    return " ".join(parts)


__all__ = ["MAX_MESSAGE", "REPLAYED_HEADER", "REPLAY_CHUNK", "DeadLetter", "DeadLetterWriter", "Headers", "Keep",
           "Progress", "ReplayEntry", "ReplayFailed", "ReplayReport", "Selection", "StoredLetter",
           "dead_letter", "fit", "from_record", "offset_ranges", "origin", "parse_when",
           "read_dead_letters", "read_letters", "replay", "replay_dead_letters",
           "replayed_letters", "show_bytes", "topic_partitions"]
