"""Publishing files against the real broker: good lines on the topics, bad lines in
dead-letters with file and line, the CLI's exit codes, the formats a file may take."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from devtools.testing import env_for, read_topic
from services.ingest.files import iter_items, publish_file
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, DEAD_LETTERS
from tests.ingest.conftest import agreement, announcement

ANTING = str(Path(sys.executable).parent / "anting")


def bad_line(n: int) -> bytes:
    """Three kinds of bad line, in turn: not JSON, a schema violation, an unknown type."""
    kind = n % 3
    if kind == 0:
        return b'{"specversion": "1.0", "id": "broken-%d", ' % n
    if kind == 1:
        ev = announcement(f"bad-{n}")
        ev["data"]["headline"] = ""
        return orjson.dumps(ev)
    return orjson.dumps({**agreement(f"bad-{n}"), "type": "com.example.unknown"})


async def test_ten_thousand_lines_with_one_percent_bad(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """10,000 NDJSON lines, 1% bad: exactly the good ones on the topics (by id), exactly the
    bad ones in dead-letters with their file name and line number."""
    path = tmp_path / "big.ndjson"
    good_ann: set[str] = set()
    good_agr: set[str] = set()
    bad_lines: dict[int, bytes] = {}
    lines: list[bytes] = []
    for n in range(1, 10_001):
        if n % 100 == 37:
            line = bad_line(n)
            bad_lines[n] = line
        elif n % 4 == 0:
            ev = agreement(n)
            good_agr.add(ev["id"])
            line = orjson.dumps(ev)
        else:
            ev = announcement(n)
            ev["subject"] = f"subject-{n % 50}"
            good_ann.add(ev["id"])
            line = orjson.dumps(ev)
        lines.append(line + b"\n")
    path.write_bytes(b"".join(lines))
    assert len(bad_lines) == 100

    summary = await publish_file(topics, path)
    assert (summary.accepted, summary.rejected) == (9_900, 100)
    assert summary.by_type == Counter({"conference.announcement": len(good_ann),
                                       "agreement.signed": len(good_agr)})

    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=len(good_ann), timeout=60)
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), expect=len(good_agr), timeout=60)
    ann_ids = [orjson.loads(r.value or b"")["id"] for r in anns]
    agr_ids = [orjson.loads(r.value or b"")["id"] for r in agrs]
    assert len(ann_ids) == len(good_ann) and set(ann_ids) == good_ann
    assert len(agr_ids) == len(good_agr) and set(agr_ids) == good_agr

    dlq = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=100, timeout=30)
    assert len(dlq) == 100
    by_line = {int(dict(r.headers)["dlq.line"]): r for r in dlq}
    assert set(by_line) == set(bad_lines)
    for n, rec in by_line.items():
        headers = dict(rec.headers)
        assert rec.value == bad_lines[n]
        assert headers["dlq.file"] == str(path).encode()  # the path as given
        assert headers["dlq.stage"] == b"ingest"
        expected = {0: b"MalformedJSON", 1: b"InvalidEvent", 2: b"InvalidEvent"}[n % 3]
        assert headers["dlq.error.class"] == expected
    messages = {n % 3: dict(r.headers)["dlq.error.message"] for n, r in by_line.items()}
    assert messages[1].startswith(b"data.headline:")
    assert messages[2].startswith(b"type:")


def test_file_formats_and_line_numbers() -> None:
    """NDJSON keeps editor line numbers (blank lines count); a JSON array yields its items;
    a pretty-printed single object is one event."""
    nd = b"\n" + orjson.dumps(announcement(1)) + b"\n\n" + orjson.dumps(agreement(2)) + b"\n"
    assert [i.number for i in iter_items(io.BytesIO(nd))] == [2, 4]
    arr = orjson.dumps([announcement(1), agreement(2), {"x": 1}], option=orjson.OPT_INDENT_2)
    items = list(iter_items(io.BytesIO(arr)))
    assert [(i.number, i.unit) for i in items] == [(1, "item"), (2, "item"), (3, "item")]
    assert orjson.loads(items[1].raw)["id"] == "agr-2"
    pretty = orjson.dumps(announcement(3), option=orjson.OPT_INDENT_2)
    [one] = list(iter_items(io.BytesIO(pretty)))
    assert orjson.loads(one.raw)["id"] == "ann-3"
    assert list(iter_items(io.BytesIO(b"\n  \n"))) == []


def _run(args: list[str], settings: AntingSettings, stdin: bytes | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ANTING, "publish", "--quiet", *args], input=stdin,
                          env=env_for(settings), capture_output=True, timeout=120)


async def test_cli_exit_codes_stdin_and_summary(topics: AntingSettings, tmp_path: Path) -> None:
    """`anting publish`: 0 when all accepted (files and stdin), 1 when some were rejected,
    2 for a file that cannot be read; the summary says how many."""
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps([announcement("c1"), agreement("c2")]))
    stdin = orjson.dumps(announcement("c3")) + b"\n"

    def run(args: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _run(args, topics, stdin)

    ok = await asyncio.to_thread(run, [str(good), "-"], stdin)
    assert ok.returncode == 0, ok.stderr.decode()
    assert b"3 accepted, 0 rejected" in ok.stderr

    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(orjson.dumps(agreement("c4")) + b"\nnot json\n")
    some = await asyncio.to_thread(run, [str(mixed)])
    assert some.returncode == 1, some.stderr.decode()
    assert b"1 accepted, 1 rejected" in some.stderr

    missing = await asyncio.to_thread(run, [str(tmp_path / "nope.ndjson")])
    assert missing.returncode == 2
    assert b"nope.ndjson" in missing.stderr

    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), expect=2, timeout=20)
    assert sorted(orjson.loads(r.value or b"")["id"] for r in anns) == ["ann-c1", "ann-c3"]
    assert sorted(orjson.loads(r.value or b"")["id"] for r in agrs) == ["agr-c2", "agr-c4"]
    [letter] = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=20)
    headers: dict[str, Any] = dict(letter.headers)
    assert (headers["dlq.file"], headers["dlq.line"]) == (str(mixed).encode(), b"2")
