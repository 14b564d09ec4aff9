"""``anting publish --watch DIR``: publish the events of every file in a folder, then move
the file to ``DIR/.done/`` (all lines accepted) or ``DIR/.failed/`` (some lines rejected —
they are in ``dead-letters`` — or the file could not be read).

The rule, as log shippers and file-polling integrations have it (Filebeat reads a line
only once its newline is there; Camel's ``readLock=changed`` and Spring Integration's
last-modified filter take a file only once it stopped changing):

- Names starting with ``.`` or ending in ``.tmp``, ``.part``, ``.partial`` or ``.swp``
  are never read: write there, then rename into the name the watcher reads.
- NDJSON is read as a tail: a line is published as soon as its newline is written, so a
  file renamed in is published at once and a file still being appended to is published
  line by line. A last line without its newline is left alone while the file may grow.
- A JSON document (an array, or an object over several lines) is published once the
  whole file parses.
- A file is moved aside only when its size, mtime and inode have not changed for the
  settle time (``ANTING_INGEST_WATCH_SETTLE_SECONDS``, 5 s by default; a file found with
  an older mtime counts as quiet since then) and everything in it was published: all
  lines ended, or the last one is a whole JSON object without its newline. Its size is
  checked again just before the move; if it grew, reading goes on from the journal.
- A file that stays quiet with an incomplete last line (or a document that does not
  parse) is left where it is, with a warning; nothing of it is dead-lettered.
- An article (``.txt``, ``.md``, ``.html``: services/ingest/document_files.py) has no
  line that says it is whole: it is published once it has been unchanged for the
  settle time, as one document on ``documents``, then moved to ``.done/`` — or, refused
  (empty, binary, not UTF-8, too large), to ``.failed/`` with nothing published and
  the reason logged. A crash between the broker's acknowledgement and the move
  publishes it again at the next start, under the same id (a hash of its text).

What the rule cannot see: a writer that keeps the file open and pauses for longer than
the settle time between two lines may have the file moved under it, and what it writes
afterwards lands in ``.done/``. Write such files elsewhere and rename them in, or raise
the settle time above the writer's longest pause.

Restarts neither lose nor republish a line. A journal per file in ``DIR/.journal/``
records how far the broker acknowledged it (byte offset and line; for a JSON document,
the number of items), written with fsync and an atomic rename after every acknowledged
chunk, and identifies the file by inode and a hash of its first bytes. After a crash the
file is resumed from there; a new file under the same name starts over. At most the one
chunk that was in flight when the process died may be sent again (never lost): the
events carry stable ids, so consumers can tell. A graceful stop (SIGTERM/Ctrl-C)
finishes the chunk in flight and journals it, so nothing is sent twice.

Why a journal and not a transactional producer: transactions would make each chunk
atomic, but the "which line is done" marker would still live outside Kafka (the
same crash window), and every consumer would have to read ``read_committed`` — kcat
and most tools do not by default. A journal keeps the topics plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.ingest.codec import BOM
from services.ingest.document_files import (
    DOCUMENT_PRODUCER,
    DocumentOptions,
    document_media_type,
    publish_document_file,
)
from services.ingest.files import (
    FILE_PRODUCER,
    Position,
    Summary,
    document_items,
    publish_items,
    read_lines,
    starts_document,
)
from shared.kafka import make_producer
from shared.settings import AntingSettings, load

log = logging.getLogger(__name__)

__all__ = [
    "DONE",
    "FAILED",
    "HEAD_BYTES",
    "JOURNAL",
    "MIN_POLL",
    "PARTIAL_SUFFIXES",
    "Journal",
    "Signature",
    "WatchSettings",
    "candidates",
    "settle_seconds",
    "start_message",
    "watch",
]

DONE, FAILED, JOURNAL = ".done", ".failed", ".journal"
# names still being written by convention; write elsewhere and rename in, or use these
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".swp")
# bytes at the start of a file whose hash tells it from another file of the same name
HEAD_BYTES = 1024
# the quickest poll, however short the settle time (seconds)
MIN_POLL = 0.05


class WatchSettings(BaseSettings):
    """``ANTING_INGEST_WATCH_*``: how long a file must stay unchanged before it is moved."""

    model_config = SettingsConfigDict(env_prefix="ANTING_INGEST_WATCH_", extra="ignore")

    # above the pauses of writers that append a line every second or two: lines are
    # published as they arrive, so a longer settle time only delays the move
    settle_seconds: float = Field(5.0, ge=0, le=86400)


def settle_seconds() -> float:
    """The settle time from ``ANTING_INGEST_WATCH_SETTLE_SECONDS`` (seconds, default 5);
    exits with a message naming the variable when it is not a number ≥ 0."""
    return load(WatchSettings).settle_seconds


def start_message(folder: Path, settle: float, once: bool = False) -> str:
    """What ``anting publish --watch`` prints when it starts: the folder, which names it
    reads, the settle time and where files go."""
    until = "until each file is moved or waits for its end" if once else "until Ctrl-C"
    return (f"watching {folder}/ {until}: every file but .* and *{', *'.join(PARTIAL_SUFFIXES)}"
            "\nlines are published as they end, articles (.txt, .md, .html) whole; "
            f"a file moves to {folder / DONE}/ (or "
            f"{FAILED}/) once unchanged for {settle:g} s (ANTING_INGEST_WATCH_SETTLE_SECONDS)")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _head_hash(file: Path, length: int) -> str:
    with open(file, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


@dataclass
class Journal:
    """The durable progress of one file: which file it is (inode and a hash of its first
    bytes) and how far the broker acknowledged it. ``offset`` is the byte just past the
    last acknowledged line and ``line`` its number; with ``offset`` 0, ``line`` counts
    the lines (or a JSON array's items) to skip from the start."""

    path: Path
    ino: int = 0
    offset: int = 0
    line: int = 0
    open: bool = False  # the last line was taken without its newline
    rejected: int = 0

    @classmethod
    def for_file(cls, folder: Path, file: Path) -> Journal:
        """What was saved for this very file, else a fresh journal: a new file under the
        same name (another inode, other first bytes, or shorter than the offset) starts
        over. A journal of the earlier format (size and mtime) resumes by line count."""
        st = file.stat()
        journal = cls(folder / JOURNAL / f"{file.name}.json", st.st_ino)
        try:
            doc = orjson.loads(journal.path.read_bytes())
        except FileNotFoundError:
            return journal
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("unreadable journal ignored", extra={"file": str(file),
                                                            "error": str(exc)})
            return journal
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if "mtime_ns" in doc:  # the earlier format: the same file if size and mtime match
                if (doc["size"], doc["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
                    journal.line = int(doc["line"])
                    journal.rejected = int(doc.get("rejected", 0))
                return journal
            if (doc["ino"] == st.st_ino and int(doc["offset"]) <= st.st_size
                    and _head_hash(file, int(doc["head_len"])) == doc["head"]):
                journal.offset = int(doc["offset"])
                journal.line = int(doc["line"])
                journal.open = bool(doc.get("open", False))
                journal.rejected = int(doc.get("rejected", 0))
        return journal

    def save(self, file: Path) -> None:
        """Write the journal of ``file`` durably (fsync, atomic rename, fsync of the folder)."""
        self.path.parent.mkdir(exist_ok=True)
        head_len = min(HEAD_BYTES, file.stat().st_size)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"ino": self.ino, "head_len": head_len,
                                  "head": _head_hash(file, head_len), "offset": self.offset,
                                  "line": self.line, "open": self.open,
                                  "rejected": self.rejected}))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _move_aside(folder: Path, file: Path, sub: str) -> Path:
    target_dir = folder / sub
    target_dir.mkdir(exist_ok=True)
    target = target_dir / file.name
    n = 1
    while target.exists():
        target = target_dir / f"{file.stem}.{n}{file.suffix}"
        n += 1
    shutil.move(file, target)
    _fsync_dir(target_dir)
    _fsync_dir(folder)
    return target


def candidates(folder: Path) -> list[Path]:
    """Files to read: regular, not hidden, not named as still being written."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(PARTIAL_SUFFIXES)
    )


def _prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # journals of files no longer there (moved aside before the journal was removed)
    for j in (folder / JOURNAL).glob("*.json") if (folder / JOURNAL).is_dir() else ():
        if not (folder / j.name.removesuffix(".json")).exists():
            j.unlink(missing_ok=True)


def _first_line(f: IO[bytes]) -> bytes | None:
    """The first non-blank line, whole or not yet (None while there is none)."""
    f.seek(0)
    for n, line in enumerate(f):
        if n == 0 and line.startswith(BOM):
            line = line[len(BOM):]
        if line.strip():
            return line
    return None


Signature = tuple[int, int, int]  # size, mtime (ns), inode


def _stat(file: Path) -> os.stat_result:
    # a local stat between awaits: too short to be worth a thread
    return file.stat()


def _signature(st: os.stat_result) -> Signature:
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class _Tracked:
    """What the watcher knows of one file in this run."""

    journal: Journal
    sig: Signature
    quiet_since: float  # monotonic time since which ``sig`` has not changed
    summary: Summary
    read_sig: Signature | None = None  # the signature when last read
    read_settled: bool = False
    complete: bool = False  # the last read took everything there was
    warned: bool = field(default=False)  # the "waiting for the rest" warning was logged


# what a visit of a file found
MOVED, WAITING, BUSY = "moved", "waiting", "busy"


class _Watcher:
    def __init__(self, settings: AntingSettings, producer: AIOKafkaProducer, folder: Path,
                 settle: float, stop: asyncio.Event,
                 on_file: Callable[[Path, Summary | None, Path], Any] | None,
                 documents: DocumentOptions) -> None:
        self.settings, self.producer, self.folder = settings, producer, folder
        self.settle, self.stop, self.on_file = settle, stop, on_file
        self.documents = documents
        # the producer of articles, made when the first one arrives (see files' DOCUMENT_PRODUCER)
        self.document_producer: AIOKafkaProducer | None = None
        self.tracked: dict[Path, _Tracked] = {}

    async def close(self) -> None:
        """Stop the producer of articles, if one was made."""
        if self.document_producer is not None:
            await self.document_producer.stop()
            self.document_producer = None

    async def publish_document(self, file: Path, t: _Tracked) -> str:
        """Publish an article that has been quiet for the settle time, then move it aside."""
        if self.document_producer is None:
            producer = make_producer(self.settings, **DOCUMENT_PRODUCER)
            await producer.start()
            self.document_producer = producer
        try:
            summary = await publish_document_file(self.settings, file, options=self.documents,
                                                  producer=self.document_producer)
        except TimeoutError:
            raise  # an OSError too, but the broker's, not the file's
        except OSError as exc:
            log.error("cannot read file", extra={"file": str(file), "error": str(exc)})
            self.tracked.pop(file, None)
            self._done(file, None, _move_aside(self.folder, file, FAILED))
            return MOVED
        if summary.refused:
            log.error("document refused, nothing published",
                      extra={"file": str(file), "reason": summary.refused})
        self.tracked.pop(file, None)
        self._done(file, summary, _move_aside(self.folder, file,
                                              FAILED if summary.refused else DONE))
        return MOVED

    async def poll(self) -> bool:
        """Visit every file once; True while some file is still changing (or new)."""
        files = candidates(self.folder)
        for gone in set(self.tracked) - set(files):
            del self.tracked[gone]
        busy = False
        for file in files:
            if self.stop.is_set():
                return True
            if await self.visit(file) == BUSY:
                busy = True
        return busy

    async def visit(self, file: Path) -> str:
        now = time.monotonic()
        try:
            st = _stat(file)
        except FileNotFoundError:
            self.tracked.pop(file, None)
            return MOVED
        sig = _signature(st)
        t = self.tracked.get(file)
        if t is None:
            # quiet since its mtime: a file that sat there before the watcher started
            # need not wait the settle time again
            age = max(0.0, time.time() - st.st_mtime_ns / 1e9)
            t = _Tracked(Journal.for_file(self.folder, file), sig, now - age, Summary(str(file)))
            self.tracked[file] = t
            if t.journal.line:
                log.info("resuming file", extra={"file": str(file), "after_line": t.journal.line})
        elif sig != t.sig:
            if sig[2] != t.sig[2] or st.st_size < t.journal.offset:
                log.warning("file replaced or truncated; reading it from the start",
                            extra={"file": str(file)})
                t.journal.remove()
                t.journal = Journal.for_file(self.folder, file)
                t.read_sig = None
            t.sig, t.quiet_since, t.warned = sig, now, False
        settled = now - t.quiet_since >= self.settle
        if document_media_type(file) is not None:
            if self.stop.is_set() or not settled:
                return BUSY
            return await self.publish_document(file, t)
        if sig != t.read_sig or (settled and not t.read_settled):
            t.read_sig, t.read_settled = sig, settled
            try:
                t.complete = await self.read(file, t, take_last=settled)
            except TimeoutError:
                raise  # an OSError too, but the broker's, not the file's
            except OSError as exc:
                log.error("cannot read file", extra={"file": str(file), "error": str(exc)})
                t.journal.remove()
                self.tracked.pop(file, None)
                self._done(file, None, _move_aside(self.folder, file, FAILED))
                return MOVED
        if self.stop.is_set() or not settled:
            return BUSY
        if not t.complete:
            if not t.warned:
                t.warned = True
                log.warning(
                    "file unchanged for the settle time but its last line is not complete "
                    "(or the JSON document does not parse); left in place until it is",
                    extra={"file": str(file), "published_through_line": t.journal.line,
                           "settle_seconds": self.settle})
            return WAITING
        # the size again, right before the move: a file that grew is read on, not moved
        try:
            again = _signature(_stat(file))
        except FileNotFoundError:
            self.tracked.pop(file, None)
            return MOVED
        if again != sig:
            t.sig, t.quiet_since, t.warned = again, time.monotonic(), False
            return BUSY
        where = _move_aside(self.folder, file, FAILED if t.journal.rejected else DONE)
        t.journal.remove()
        self.tracked.pop(file, None)
        self._done(file, t.summary, where)
        return MOVED

    def _done(self, file: Path, summary: Summary | None, where: Path) -> None:
        log.info("file published", extra={
            "file": str(file), "moved_to": where.parent.name,
            "accepted": summary.accepted if summary else 0,
            "rejected": summary.rejected if summary else 0})
        if self.on_file is not None:
            self.on_file(file, summary, where)

    async def read(self, file: Path, t: _Tracked, *, take_last: bool) -> bool:
        """Publish what is new in ``file`` from where its journal says; True when nothing
        is left unread (no incomplete last line, or the document parsed)."""
        journal = t.journal
        rejected_before = journal.rejected
        with open(file, "rb") as f:  # noqa: ASYNC230 - short blocking reads between sends
            first = _first_line(f) if journal.offset == 0 else None
            if first is not None and starts_document(first):
                f.seek(0)
                items = document_items(f.read())
                if items is None:
                    return False  # not (yet) one JSON document
                if journal.line >= len(items):
                    return True  # published before; read again only to see it is whole

                def record_items(s: Summary) -> None:
                    journal.line = max(journal.line, s.last_line)
                    journal.rejected = rejected_before + s.rejected
                    journal.save(file)

                summary = await publish_items(
                    self.settings, self.producer, items, name=str(file),
                    start_after=journal.line, on_acked=record_items, stop=self.stop)
                t.summary.add(summary)
                return True

            # NDJSON (or nothing whole yet): a tail from the journal's position; with
            # offset 0 and a line count (an older journal), lines up to it are skipped
            pos = Position(journal.offset, journal.line if journal.offset else 0, journal.open)

            def record(s: Summary) -> None:
                if not s.offset:  # a pass with no new line: nothing new to record
                    return
                journal.offset, journal.line = s.offset, s.last_line
                journal.open = pos.open and s.offset == pos.offset
                journal.rejected = rejected_before + s.rejected
                journal.save(file)

            summary = await publish_items(
                self.settings, self.producer, read_lines(f, pos, take_last=take_last),
                name=str(file), start_after=journal.line, on_acked=record, stop=self.stop)
        t.summary.add(summary)
        # every line read is acknowledged now, and blank lines after the last event are
        # passed too — but not blank lines alone at the start, which may yet be followed
        # by a JSON document
        started = journal.offset > 0 or summary.last_line > 0
        if started and (pos.offset, pos.open) != (journal.offset, journal.open):
            journal.offset, journal.line, journal.open = pos.offset, pos.line, pos.open
            journal.save(file)
        return not pos.rest.strip()


async def watch(
    settings: AntingSettings,
    folder: Path,
    *,
    stop: asyncio.Event,
    interval: float = 0.5,
    settle: float | None = None,
    once: bool = False,
    on_file: Callable[[Path, Summary | None, Path], Any] | None = None,
    on_start: Callable[[str], Any] | None = None,
    documents: DocumentOptions | None = None,
) -> None:
    """Poll ``folder`` every ``interval`` seconds until ``stop`` is set (or, with ``once``,
    until every file has been moved aside or waits for its incomplete end).

    Lines are published as they end; a file is moved once it has been unchanged for
    ``settle`` seconds (None: ``ANTING_INGEST_WATCH_SETTLE_SECONDS``) and all of it was
    published (see the module's docstring for the whole rule). ``on_file(file, summary,
    moved_to)`` runs after each move (``summary`` None for an unreadable file);
    ``on_start(message)`` once the broker connection is up. Article files are published
    as documents with ``documents`` (None: the defaults of ``POST /v1/documents``). Raises the producer's
    ``KafkaError`` when the broker fails, ``OSError`` for a folder it cannot use.
    """
    settle = settle_seconds() if settle is None else settle
    poll = max(MIN_POLL, min(interval, settle / 2)) if settle > 0 else interval
    _prepare(folder)
    producer = make_producer(settings, **FILE_PRODUCER)
    await producer.start()
    try:
        if on_start is not None:
            on_start(start_message(folder, settle, once))
        watcher = _Watcher(settings, producer, folder, settle, stop, on_file,
                           documents or DocumentOptions())
        try:
            while not stop.is_set():
                busy = await watcher.poll()
                if once and not busy:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), poll)
        finally:
            await watcher.close()
    finally:
        await producer.stop()
