"""Watch mode against the real broker: files are published and moved aside, and a
restart neither loses nor republishes a file (the journal says where to resume); a file
still being written is published line by line as lines end, and moved only once it has
been unchanged for the settle time and nothing of it is left unread."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from devtools.testing import env_for, read_topic
from services.ingest.files import Summary
from services.ingest.watch import DONE, FAILED, JOURNAL, Journal, watch
from shared.settings import AntingSettings
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
    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.2)
    assert sorted(p.name for p in (folder / DONE).iterdir()) == ["good.ndjson"]
    assert sorted(p.name for p in (folder / FAILED).iterdir()) == ["mixed.ndjson"]
    assert not list((folder / JOURNAL).glob("*"))
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    assert sorted(ids_of(anns)) == ["ann-w1", "ann-w3"]
    [letter] = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=20)
    assert dict(letter.headers)["dlq.line"] == b"2"
    assert dict(letter.headers)["dlq.file"] == str(folder / "mixed.ndjson").encode()


async def test_resume_after_crash_from_the_journal(topics: AntingSettings, tmp_path: Path) -> None:
    """A journal left by a crashed run (lines 1-6 acknowledged, up to their byte offset)
    makes the next run publish only lines 7-10; a journal of the earlier format (size and
    mtime) saying the file was finished only moves the file."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    lines = [orjson.dumps(announcement(f"h{n}")) for n in range(1, 11)]
    drop(folder, "half.ndjson", lines)
    journal = Journal.for_file(folder, folder / "half.ndjson")
    journal.offset = sum(len(line) + 1 for line in lines[:6])
    journal.line = 6
    journal.save(folder / "half.ndjson")
    drop(folder, "finished.ndjson", [orjson.dumps(agreement("f1"))])
    st = (folder / "finished.ndjson").stat()
    (folder / JOURNAL / "finished.ndjson.json").write_bytes(orjson.dumps(
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "line": 1, "finished": True}))

    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.2)
    assert sorted(p.name for p in (folder / DONE).iterdir()) == ["finished.ndjson", "half.ndjson"]
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=4, timeout=20)
    assert sorted(ids_of(anns)) == sorted(f"ann-h{n}" for n in range(7, 11))
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), idle=1.0, timeout=10)
    assert agrs == []


async def test_journal_of_another_file_with_the_same_name_is_ignored(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A journal written for an earlier file of the same name (another inode, other first
    bytes) does not skip lines of the new one."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    drop(folder, "daily.ndjson", [orjson.dumps(announcement("d0"))])
    journal = Journal.for_file(folder, folder / "daily.ndjson")
    journal.offset, journal.line = (folder / "daily.ndjson").stat().st_size, 1
    journal.save(folder / "daily.ndjson")
    drop(folder, "daily.ndjson", [orjson.dumps(announcement("d1"))])
    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.2)
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
                                env=env_for(topics, ANTING_INGEST_WATCH_SETTLE_SECONDS="1"),
                                stdout=log, stderr=subprocess.STDOUT)

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
    output = (tmp_path / "watch.log").read_text()
    assert len(ids) == 100, output
    assert sorted(ids) == sorted([f"ann-a{n}" for n in range(50)] + [f"ann-b{n}" for n in range(50)])
    # what it watches is said at start, before any file arrives
    assert output.count(f"watching {folder}/") == 2, output
    assert "for 1 s" in output, output


Move = tuple[float, str, Summary | None, Path]


def recorder(moves: list[Move]) -> Callable[[Path, Summary | None, Path], Any]:
    """An on_file callback noting (wall time, name, summary, where) of every move."""
    def on_file(file: Path, summary: Summary | None, where: Path) -> None:
        moves.append((time.time(), file.name, summary, where))
    return on_file


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``check()`` holds, polling every 50 ms."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        await asyncio.sleep(0.05)


async def test_slowly_written_file_is_published_line_by_line_and_moved_when_done(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A writer that keeps its file open and appends a line every 0.5 s (settle 1.5 s): each
    line is published once, while the file is still being written, and the file is moved
    to .done/ only after the last line, holding every line."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    moves: list[Move] = []
    stop = asyncio.Event()
    task = asyncio.create_task(watch(topics, folder, stop=stop, settle=1.5, interval=0.1,
                                     on_file=recorder(moves)))
    lines = [orjson.dumps(announcement(f"s{n}")) + b"\n" for n in range(8)]
    try:
        with open(folder / "a.ndjson", "ab", buffering=0) as f:  # noqa: ASYNC230
            for line in lines:
                assert moves == [], "moved while its writer was still appending"
                f.write(line)
                last_write = time.time()
                await asyncio.sleep(0.5)
        await until(lambda: bool(moves), 20, "the move to .done/")
    finally:
        stop.set()
        await task
    [(moved_at, name, summary, where)] = moves
    assert (name, where) == ("a.ndjson", folder / DONE / "a.ndjson")
    assert summary is not None and (summary.accepted, summary.rejected) == (8, 0)
    assert moved_at - last_write >= 1.4, "moved before it had been unchanged for the settle time"
    assert where.read_bytes() == b"".join(lines)
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=8, timeout=20)
    assert sorted(ids_of(anns)) == sorted(f"ann-s{n}" for n in range(8))
    # the first line was out long before the file was finished
    assert min(r.timestamp for r in anns) / 1000 < last_write - 2.5
    assert await read_topic(topics, topics.topic(DEAD_LETTERS), idle=1.0, timeout=10) == []
    assert not list((folder / JOURNAL).glob("*"))


async def test_pause_mid_line_is_waited_for_not_dead_lettered(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A writer pausing for twice the settle time in the middle of a line (NDJSON), or in the
    middle of a JSON array without a final newline: nothing is dead-lettered, nothing
    moved during the pause; afterwards every event is published once and both files go
    to .done/ whole."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    moves: list[Move] = []
    stop = asyncio.Event()
    task = asyncio.create_task(watch(topics, folder, stop=stop, settle=0.8, interval=0.1,
                                     on_file=recorder(moves)))
    line1, line2, line3 = (orjson.dumps(announcement(f"p{n}")) + b"\n" for n in (1, 2, 3))
    array = orjson.dumps([agreement("p4"), agreement("p5")])
    try:
        with open(folder / "pause.ndjson", "ab", buffering=0) as nd, \
                open(folder / "pause.json", "ab", buffering=0) as doc:  # noqa: ASYNC230
            nd.write(line1 + line2[:40])
            doc.write(array[:60])
            await asyncio.sleep(2.0)
            assert moves == [], "moved with an incomplete last line"
            nd.write(line2[40:] + line3)
            doc.write(array[60:])
        await until(lambda: len(moves) == 2, 20, "both moves to .done/")
    finally:
        stop.set()
        await task
    assert sorted((name, where.parent.name) for _, name, _, where in moves) == [
        ("pause.json", DONE), ("pause.ndjson", DONE)]
    assert (folder / DONE / "pause.ndjson").read_bytes() == line1 + line2 + line3
    assert (folder / DONE / "pause.json").read_bytes() == array
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=3, timeout=20)
    assert sorted(ids_of(anns)) == ["ann-p1", "ann-p2", "ann-p3"]
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), expect=2, timeout=20)
    assert sorted(ids_of(agrs)) == ["agr-p4", "agr-p5"]
    assert await read_topic(topics, topics.topic(DEAD_LETTERS), idle=1.0, timeout=10) == []


async def test_write_then_rename_is_published_at_once(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A file written under a .part name and renamed in is published at once (its events are
    out long before the settle time), and moved once the settle time has passed."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    moves: list[Move] = []
    stop = asyncio.Event()
    task = asyncio.create_task(watch(topics, folder, stop=stop, settle=4.0, interval=0.1,
                                     on_file=recorder(moves)))
    try:
        await asyncio.sleep(0.3)  # the watcher is polling
        (folder / "r.ndjson.part").write_bytes(orjson.dumps(announcement("r0")) + b"\n")
        await asyncio.sleep(1.0)
        assert moves == [] and (folder / "r.ndjson.part").exists(), "a .part file was taken"
        dropped = time.time()
        drop(folder, "r.ndjson", [orjson.dumps(announcement(f"r{n}")) for n in range(1, 6)])
        await until(lambda: bool(moves), 20, "the move to .done/")
    finally:
        stop.set()
        await task
    [(moved_at, name, _, _)] = moves
    assert name == "r.ndjson" and moved_at - dropped >= 3.5
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=5, timeout=20)
    assert sorted(ids_of(anns)) == [f"ann-r{n}" for n in range(1, 6)]
    assert max(r.timestamp for r in anns) / 1000 - dropped < 2.0, "not published at once"


async def test_once_leaves_an_unfinished_file_and_a_later_run_goes_on(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """--once with a file whose last line is cut short: the whole lines are published, the
    file stays in place with its journal, nothing is dead-lettered; once the line is
    finished, the next run publishes only it and moves the file."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    lines = [orjson.dumps(announcement(f"o{n}")) + b"\n" for n in range(3)]
    (folder / "o.ndjson").write_bytes(lines[0] + lines[1] + lines[2][:25])
    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.3)
    assert (folder / "o.ndjson").exists() and not (folder / DONE).exists()
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    assert sorted(ids_of(anns)) == ["ann-o0", "ann-o1"]
    with open(folder / "o.ndjson", "ab") as f:  # noqa: ASYNC230
        f.write(lines[2][25:])
    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.3)
    assert (folder / DONE / "o.ndjson").read_bytes() == b"".join(lines)
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=3, timeout=20)
    assert sorted(ids_of(anns)) == ["ann-o0", "ann-o1", "ann-o2"]
    assert await read_topic(topics, topics.topic(DEAD_LETTERS), idle=1.0, timeout=10) == []
