"""``anting publish --watch DIR``: publish every file dropped into a folder, then move it
to ``DIR/.done/`` (all lines accepted) or ``DIR/.failed/`` (some lines rejected — they
are in ``dead-letters`` — or the file could not be read).

Restarts neither lose nor republish a file. A journal per file in ``DIR/.journal/``
records the last line the broker acknowledged (written with fsync and an atomic
rename after every acknowledged chunk). After a crash the file is resumed after that
line; a file already recorded as finished is only moved. At most the one chunk that
was in flight when the process died may be sent again (never lost): the events carry
stable ids, so consumers can tell. A graceful stop (SIGTERM/Ctrl-C) finishes the chunk
in flight and journals it, so nothing is sent twice.

Why a journal and not a transactional producer: transactions would make each chunk
atomic, but the "which line is done" marker would still live outside Kafka (the
same crash window), and every consumer would have to read ``read_committed`` — kcat
and most tools do not by default. A journal keeps the topics plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.ingest.files import FILE_PRODUCER, Summary, publish_file
from shared.kafka import make_producer
from shared.settings import AntingSettings

log = logging.getLogger(__name__)

DONE, FAILED, JOURNAL = ".done", ".failed", ".journal"
# names still being written by convention; write elsewhere and rename in, or use these
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".swp")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Journal:
    """The durable progress of one file: which file (size, mtime) and the last acked line."""

    path: Path
    size: int
    mtime_ns: int
    line: int = 0
    finished: bool = False
    rejected: int = 0

    @classmethod
    def for_file(cls, folder: Path, file: Path) -> Journal:
        st = file.stat()
        journal = cls(folder / JOURNAL / f"{file.name}.json", st.st_size, st.st_mtime_ns)
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, orjson.JSONDecodeError):
            doc = orjson.loads(journal.path.read_bytes())
            # the same file as last time: resume; a new file under the same name: start over
            if (doc["size"], doc["mtime_ns"]) == (journal.size, journal.mtime_ns):
                journal.line = int(doc["line"])
                journal.finished = bool(doc["finished"])
                journal.rejected = int(doc.get("rejected", 0))
        return journal

    def save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps({"size": self.size, "mtime_ns": self.mtime_ns,
                                  "line": self.line, "finished": self.finished,
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
    """Files ready to publish: regular, not hidden, not named as still being written."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(PARTIAL_SUFFIXES)
    )


async def publish_one(
    settings: AntingSettings, producer: AIOKafkaProducer, folder: Path, file: Path,
    stop: asyncio.Event | None = None,
) -> tuple[Summary | None, Path | None]:
    """Publish one file of the folder from where its journal says, then move it aside.
    Returns (summary, where it went); where is None when stopped part-way."""
    journal = Journal.for_file(folder, file)
    summary: Summary | None = None
    if not journal.finished:
        if journal.line:
            log.info("resuming file", extra={"file": file.name, "after_line": journal.line})

        rejected_before = journal.rejected

        def record(s: Summary) -> None:
            journal.line = s.last_line
            journal.rejected = rejected_before + s.rejected
            journal.save()

        try:
            summary = await publish_file(settings, file, producer=producer, name=file.name,
                                         start_after=journal.line, on_acked=record, stop=stop)
        except OSError as exc:
            log.error("cannot read file", extra={"file": file.name, "error": str(exc)})
            journal.remove()
            return None, _move_aside(folder, file, FAILED)
        if stop is not None and stop.is_set():
            return summary, None
        journal.finished = True
        journal.rejected = rejected_before + summary.rejected
        journal.save()
    where = _move_aside(folder, file, FAILED if journal.rejected else DONE)
    journal.remove()
    return summary, where


def _prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # journals of files no longer there (moved aside before the journal was removed)
    for j in (folder / JOURNAL).glob("*.json") if (folder / JOURNAL).is_dir() else ():
        if not (folder / j.name.removesuffix(".json")).exists():
            j.unlink(missing_ok=True)


async def watch(
    settings: AntingSettings,
    folder: Path,
    *,
    stop: asyncio.Event,
    interval: float = 0.5,
    once: bool = False,
    on_file: Callable[[Path, Summary | None, Path], Any] | None = None,
) -> None:
    """Poll ``folder`` until ``stop`` is set (or, with ``once``, until it is empty).

    A file is taken once its size and mtime stayed the same over one poll interval,
    so a file still being copied in is not read half-written.
    """
    _prepare(folder)
    producer = make_producer(settings, **FILE_PRODUCER)
    await producer.start()
    seen: dict[Path, tuple[int, int]] = {}
    try:
        while not stop.is_set():
            ready = []
            for file in candidates(folder):
                with contextlib.suppress(FileNotFoundError):
                    st = file.stat()
                    sig = (st.st_size, st.st_mtime_ns)
                    journal_exists = (folder / JOURNAL / f"{file.name}.json").exists()
                    if seen.get(file) == sig or journal_exists or once:
                        ready.append(file)
                    seen[file] = sig
            for file in ready:
                if stop.is_set():
                    break
                summary, where = await publish_one(settings, producer, folder, file, stop)
                seen.pop(file, None)
                if where is not None:
                    log.info("file published", extra={
                        "file": file.name, "moved_to": str(where.parent.name),
                        "accepted": summary.accepted if summary else 0,
                        "rejected": summary.rejected if summary else 0})
                    if on_file is not None:
                        on_file(file, summary, where)
            if once and not ready:
                break
            if not ready:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
    finally:
        await producer.stop()
