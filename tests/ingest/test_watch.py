"""Watch mode against the real broker: files are published and moved aside, and a
restart neither loses nor republishes a file (the journal says where to resume)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from services.ingest.watch import DONE, FAILED, JOURNAL, Journal, watch
from shared.settings import AntingSettings
from shared.testing import env_for, read_topic
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, DEAD_LETTERS
from tests.ingest.conftest import agreement, announcement

ANTING = str(Path(sys.executable).parent / "anting")


def drop(folder: Path, name: str, lines: list[bytes]) -> None:
    """Write elsewhere-named, then rename in: the way files should arrive."""
    tmp = folder / f"{name}.part"
    tmp.write_bytes(b"".join(line + b"\n" for line in lines))
    os.replace(tmp, folder / name)


def ids_of(records: list) -> list[str]:  # type: ignore[type-arg]
    return [orjson.loads(r.value)["id"] for r in records]


async def test_files_are_published_and_moved_aside(topics: AntingSettings, tmp_path: Path) -> None:
    """A good file goes to .done/, one with a rejected line to .failed/ (its bad line in
    dead-letters); no journal is left behind."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    drop(folder, "good.ndjson", [orjson.dumps(announcement("w1")), orjson.dumps(agreement("w2"))])
    drop(folder, "mixed.ndjson", [orjson.dumps(announcement("w3")), b"{nope"])
    await watch(topics, folder, stop=asyncio.Event(), once=True)
    assert sorted(p.name for p in (folder / DONE).iterdir()) == ["good.ndjson"]
    assert sorted(p.name for p in (folder / FAILED).iterdir()) == ["mixed.ndjson"]
    assert not list((folder / JOURNAL).glob("*"))
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    assert sorted(ids_of(anns)) == ["ann-w1", "ann-w3"]
    [letter] = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=20)
    assert dict(letter.headers)["dlq.line"] == b"2"


async def test_resume_after_crash_from_the_journal(topics: AntingSettings, tmp_path: Path) -> None:
    """A journal left by a crashed run (lines 1-6 acknowledged) makes the next run publish
    only lines 7-10; a journal marked finished only moves the file."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    drop(folder, "half.ndjson", [orjson.dumps(announcement(f"h{n}")) for n in range(1, 11)])
    journal = Journal.for_file(folder, folder / "half.ndjson")
    journal.line = 6
    journal.save()
    drop(folder, "finished.ndjson", [orjson.dumps(agreement("f1"))])
    journal = Journal.for_file(folder, folder / "finished.ndjson")
    journal.line, journal.finished = 1, True
    journal.save()

    await watch(topics, folder, stop=asyncio.Event(), once=True)
    assert sorted(p.name for p in (folder / DONE).iterdir()) == ["finished.ndjson", "half.ndjson"]
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=4, timeout=20)
    assert sorted(ids_of(anns)) == sorted(f"ann-h{n}" for n in range(7, 11))
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), idle=1.0, timeout=10)
    assert agrs == []


async def test_journal_of_another_file_with_the_same_name_is_ignored(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A journal written for a different file (other size/mtime) does not skip lines of a new one."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    drop(folder, "daily.ndjson", [orjson.dumps(announcement("d1"))])
    journal = Journal.for_file(folder, folder / "daily.ndjson")
    journal.size, journal.line, journal.finished = 999, 1, True
    journal.save()
    await watch(topics, folder, stop=asyncio.Event(), once=True)
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert ids_of(anns) == ["ann-d1"]


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.1)


async def test_killed_watcher_does_not_republish_after_restart(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """`anting publish --watch`: SIGKILL after a file was done, restart: the done file is not
    published again and a new file is; SIGTERM stops it cleanly."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    log = open(tmp_path / "watch.log", "ab")  # noqa: ASYNC230

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([ANTING, "publish", "--watch", str(folder)],
                                env=env_for(topics), stdout=log, stderr=subprocess.STDOUT)

    proc = start()
    try:
        drop(folder, "a.ndjson", [orjson.dumps(announcement(f"a{n}")) for n in range(50)])
        await asyncio.to_thread(_wait_for, folder / DONE / "a.ndjson")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start()
        drop(folder, "b.ndjson", [orjson.dumps(announcement(f"b{n}")) for n in range(50)])
        await asyncio.to_thread(_wait_for, folder / DONE / "b.ndjson")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=100, timeout=30)
    ids = ids_of(anns)
    assert len(ids) == 100, (tmp_path / "watch.log").read_text()
    assert sorted(ids) == sorted([f"ann-a{n}" for n in range(50)] + [f"ann-b{n}" for n in range(50)])
