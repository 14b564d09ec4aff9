"""`anting dlq list` and `anting dlq replay` against the real broker: the newest letters
first, the filters, where a bad line of a file came from, and a replay that sends each
letter once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import NewTopic

from devtools.testing import env_for, read_topic
from shared.deadletters import (
    REPLAYED_HEADER,
    DeadLetter,
    ReplayEntry,
    Selection,
    StoredLetter,
    dead_letter,
    offset_ranges,
    origin,
    parse_when,
    read_letters,
    replay,
    replayed_letters,
)
from shared.kafka import ensure_topics, make_admin, make_producer
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ALL_TOPICS, ANNOUNCEMENTS, DEAD_LETTERS, DEAD_LETTERS_REPLAYED

ANTING = str(Path(sys.executable).parent / "anting")
HOUR_MS = 3600 * 1000


async def _cli(settings: AntingSettings, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [ANTING, *args], env=env_for(settings, COLUMNS="250"), cwd=cwd,
        capture_output=True, text=True, timeout=90,
    )


def _json_lines(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


async def _write(settings: AntingSettings, letters: list[tuple[DeadLetter, int | None]],
                 partition: int | None = None) -> None:
    """Write dead letters straight to the topic, each with its timestamp (ms; None: now)."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for letter, ts in letters:
            await producer.send(settings.topic(DEAD_LETTERS), value=letter.value, key=letter.key,
                                headers=letter.headers, timestamp_ms=ts, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def _letter(settings: AntingSettings, n: int, stage: str = "enrich", topic: Any = ANNOUNCEMENTS) -> DeadLetter:
    return dead_letter(stage=stage, error=f"bad {n}", key=f"k{n}".encode(), value=f"value-{n}".encode(),
                       headers=[("traceparent", b"00-ab")], topic=settings.topic(topic),
                       partition=n % 3, offset=n)


@pytest.mark.kafka
async def test_list_shows_the_newest_first_beyond_the_limit(topics: AntingSettings) -> None:
    """With 150 letters and --limit 20, the 20 newest are listed, newest first; --reverse
    gives the oldest; --from-offset with --reverse reads on from that offset, like kcat -o."""
    await _write(topics, [(_letter(topics, n), None) for n in range(150)])
    newest = await _cli(topics, "dlq", "list", "--limit", "20", "--json")
    assert newest.returncode == 0, newest.stderr
    docs = _json_lines(newest.stdout)
    assert [d["offset"] for d in docs] == list(range(149, 129, -1))
    assert set(docs[0]) == {"offset", "key", "value", "headers"}  # the shape scripts read
    assert docs[0]["value"] == "value-149" and docs[0]["headers"]["dlq.error.message"] == "bad 149"

    oldest = await _cli(topics, "dlq", "list", "--limit", "3", "--reverse", "--json")
    assert [d["offset"] for d in _json_lines(oldest.stdout)] == [0, 1, 2]
    window = await read_letters(topics, Selection(from_offset=60, to_offset=64), limit=10)
    assert [s.offset for s in window] == [64, 63, 62, 61, 60]
    from_there = await _cli(topics, "dlq", "list", "--from-offset", "100", "--partition", "0",
                            "--reverse", "--limit", "2", "--json")
    assert [d["offset"] for d in _json_lines(from_there.stdout)] == [100, 101]

    table = await _cli(topics, "dlq", "list", "--limit", "5")
    assert table.returncode == 0, table.stderr
    assert "5 dead letter(s), newest first; there may be more" in table.stderr
    rows = [line for line in table.stdout.splitlines() if "value-" in line]
    assert [r.split()[1] for r in rows] == ["149", "148", "147", "146", "145"]
    assert f"{topics.topic(ANNOUNCEMENTS)}[2]@149" in table.stdout  # the from column


@pytest.mark.kafka
async def test_since_stage_and_topic_filters(topics: AntingSettings) -> None:
    """--since (a duration or an RFC 3339 time), --until, --stage and --topic (with or
    without the prefix) select by the letter's timestamp, stage and original topic."""
    now = int(time.time() * 1000)
    await _write(topics, [
        (_letter(topics, 0, "enrich", ANNOUNCEMENTS), now - 5 * HOUR_MS),
        (_letter(topics, 1, "notify", AGREEMENTS), now - 3 * HOUR_MS),
        (_letter(topics, 2, "enrich", AGREEMENTS), now - 30 * 60 * 1000),
        (_letter(topics, 3, "enrich", ANNOUNCEMENTS), now - 60 * 1000),
        (dead_letter(stage="ingest", error="bad line", key=None, value=b"{",
                     extra={"file": "inbox/a.ndjson", "line": "7"}), now),
    ])

    async def offsets(*args: str) -> list[int]:
        done = await _cli(topics, "dlq", "list", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [d["offset"] for d in _json_lines(done.stdout)]

    assert await offsets("--since", "2h") == [4, 3, 2]
    assert await offsets("--since", "4h", "--stage", "enrich") == [3, 2]
    assert await offsets("--topic", "announcements") == [3, 0]  # the prefix is optional
    assert await offsets("--topic", topics.topic(AGREEMENTS), "--reverse") == [1, 2]
    four_hours_ago = (datetime.now(UTC) - timedelta(hours=4)).isoformat(timespec="seconds")
    assert await offsets("--since", four_hours_ago, "--until", "10m", "--stage", "enrich") == [2]
    assert await offsets("--stage", "nobody") == []

    bad = await _cli(topics, "dlq", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr and "RFC 3339" in bad.stderr
    no_offset = await _cli(topics, "dlq", "list", "--since", "2024-05-01T10:00:00")
    assert no_offset.returncode == 2 and "offset" in no_offset.stderr


@pytest.mark.kafka
async def test_from_column_shows_file_and_line(topics: AntingSettings, tmp_path: Path) -> None:
    """A bad line `anting publish` dead-letters shows as file:line in the table, a bad item
    of a JSON array as file[item], not as an empty topic position."""
    good = {"specversion": "1.0", "id": "ok-1", "source": "/t", "type": "conference.announcement",
            "data": {"headline": "Forum opens", "kind": "forum"}}
    (tmp_path / "bad.ndjson").write_bytes(orjson.dumps(good) + b"\n{not json\n")
    (tmp_path / "items.json").write_bytes(orjson.dumps([good, {"specversion": "1.0"}]))
    for name in ("bad.ndjson", "items.json"):
        published = await _cli(topics, "publish", name, cwd=tmp_path)
        assert published.returncode == 1, published.stdout + published.stderr  # 1: some rejected

    listed = await _cli(topics, "dlq", "list", "--json")
    headers = {d["headers"]["dlq.file"]: d["headers"] for d in _json_lines(listed.stdout)}
    assert len(headers) == 2
    table = await _cli(topics, "dlq", "list", "--stage", "ingest")
    assert table.returncode == 0, table.stderr
    for file, h in headers.items():
        # whatever dlq.file holds (the name as given, or its base name), with line or item
        shown = f"{file}:{h['dlq.line']}" if "dlq.line" in h else f"{file}[{h['dlq.item']}]"
        assert shown in table.stdout, table.stdout
    assert "bad.ndjson:2" in table.stdout and "items.json[2]" in table.stdout
    assert "[]@" not in table.stdout


@pytest.mark.kafka
async def test_replay_twice_sends_once(topics: AntingSettings) -> None:
    """Replay needs a selection; it sends each selected letter back once, records it on
    dead-letters-replayed, and the second replay sends nothing and says why; letters that
    cannot go back (a file's line, a value cut to fit) are skipped with the reason."""
    cut = _letter(topics, 9)
    cut = DeadLetter(cut.key, b"val", [*cut.headers, ("dlq.value.truncated", b"2000000")])
    await _write(topics, [
        (_letter(topics, 0), None), (_letter(topics, 1), None),
        (dead_letter(stage="enrich", error="bad line", key=None, value=b"{",
                     extra={"file": "a.ndjson", "line": "3"}), None),
        (cut, None),
        (_letter(topics, 2, stage="notify"), None),
    ])
    refused = await _cli(topics, "dlq", "replay")
    assert refused.returncode == 2 and "--all" in refused.stderr

    dry = await _cli(topics, "dlq", "replay", "--stage", "enrich", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would replay 2" in dry.stderr and "nothing sent" in dry.stderr
    assert await replayed_letters(topics) == {}

    first = await _cli(topics, "dlq", "replay", "--stage", "enrich")
    assert first.returncode == 0, first.stderr
    assert "replayed 2, skipped 2" in first.stderr, first.stderr
    assert "a.ndjson:3" in first.stdout  # the skipped line of a file, by its from column
    looked = await replay(topics, Selection(stage="enrich"), dry_run=True)
    assert [(e.offset, e.reason.split(":")[0]) for e in looked.skipped] == [
        (2, "no original topic"), (3, "its value was cut to fit dead-letters (2000000 bytes originally)")]
    second = await _cli(topics, "dlq", "replay", "--stage", "enrich")
    assert second.returncode == 0, second.stderr
    assert "replayed 0" in second.stderr and "2 replayed before, not sent again" in second.stderr
    assert "0@0-1" in second.stderr

    sent = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    assert sorted(r.value for r in sent) == [b"value-0", b"value-1"]  # once each
    assert all(not k.startswith("dlq.") for r in sent for k, _ in r.headers)
    assert ("traceparent", b"00-ab") in sent[0].headers
    markers = await replayed_letters(topics)
    assert set(markers) == {(0, 0), (0, 1)}
    assert markers[(0, 1)]["stage"] == "enrich" and markers[(0, 1)]["topic"] == topics.topic(ANNOUNCEMENTS)

    # --again sends the chosen ones once more; --all reaches the other stage
    again = await replay(topics, Selection(stage="enrich", from_offset=1), again=True)
    assert [(e.offset, e.reason) for e in again.replayed] == [(1, "")]
    everything = await replay(topics, Selection())
    assert [e.offset for e in everything.replayed] == [4]
    assert [e.offset for e in everything.replayed_before] == [0, 1]
    assert len(await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=4, timeout=20)) == 4


@pytest.mark.kafka
async def test_replay_limit_takes_the_oldest_and_the_next_run_goes_on(topics: AntingSettings) -> None:
    """--limit sends the oldest selected letters; the next replay sends the following ones."""
    await _write(topics, [(_letter(topics, n), None) for n in range(7)])
    one = await replay(topics, Selection(stage="enrich"), limit=3)
    two = await replay(topics, Selection(stage="enrich"), limit=3)
    three = await replay(topics, Selection(stage="enrich"), limit=3)
    assert [e.offset for e in one.replayed] == [0, 1, 2]
    assert [e.offset for e in two.replayed] == [3, 4, 5] and len(two.replayed_before) == 3
    assert [e.offset for e in three.replayed] == [6]
    assert len(await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=7, timeout=20)) == 7


@pytest.mark.kafka
async def test_newest_first_across_partitions(settings: AntingSettings) -> None:
    """On a dead-letters topic of three partitions, the newest letters by timestamp come
    first whatever their partition, and the table names partition@offset."""
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.topic(DEAD_LETTERS), 3, 1)])
    finally:
        await admin.close()
    await ensure_topics(settings, [t for t in ALL_TOPICS if t is not DEAD_LETTERS])
    now = int(time.time() * 1000)
    for n in reversed(range(12)):  # letter n in partition n % 3, written n minutes ago
        await _write(settings, [(_letter(settings, n), now - n * 60_000)], partition=n % 3)
    newest = await read_letters(settings, limit=5)
    assert [s.letter.value for s in newest] == [f"value-{n}".encode() for n in range(5)]
    oldest = await read_letters(settings, limit=2, newest_first=False)
    assert [s.letter.value for s in oldest] == [b"value-11", b"value-10"]
    only = await read_letters(settings, Selection(partition=1), limit=2)
    assert [s.letter.value for s in only] == [b"value-1", b"value-4"]
    table = await _cli(settings, "dlq", "list", "--limit", "3")
    assert all(f"{p}@3 " in table.stdout for p in range(3)), table.stdout


@pytest.mark.kafka
async def test_no_dead_letters_topic_is_no_letters(settings: AntingSettings) -> None:
    """Without a dead-letters topic the list is empty and nothing is created by asking."""
    assert await read_letters(settings) == []
    admin = make_admin(settings)
    await admin.start()
    try:
        assert settings.topic(DEAD_LETTERS) not in await admin.list_topics()
        assert settings.topic(DEAD_LETTERS_REPLAYED) not in await admin.list_topics()
    finally:
        await admin.close()


def test_parse_when_takes_durations_and_rfc3339() -> None:
    """Durations count back from now; RFC 3339 times need an offset; anything else is refused."""
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("1h30m", now) == now - timedelta(minutes=90)
    assert parse_when("7d", now) == now - timedelta(days=7)
    assert parse_when("2024-05-01T10:00:00+08:00") == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    assert parse_when("2024-05-01t02:00:00z") == datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
    for bad in ("2024-05-01T10:00:00", "yesterday", "2x", ""):
        with pytest.raises(ValueError):
            parse_when(bad, now)


def test_origin_names_topic_position_or_file_line() -> None:
    """The from column: topic[partition]@offset, the topic alone, file:line, file[item], or nothing."""
    def letter(**extra: str) -> DeadLetter:
        return dead_letter(stage="s", error="e", key=None, value=None, extra=extra)

    assert origin(dead_letter(stage="s", error="e", key=None, value=None, topic="t",
                              partition=1, offset=5)) == "t[1]@5"
    assert origin(dead_letter(stage="s", error="e", key=None, value=None, topic="notify-retries")) == "notify-retries"
    assert origin(letter(file="inbox/x.ndjson", line="3")) == "inbox/x.ndjson:3"
    assert origin(letter(file="x.json", item="2")) == "x.json[2]"
    assert origin(DeadLetter(None, b"raw", [])) == ""


def test_selection_and_offset_ranges() -> None:
    """A selection matches stage, topic with or without prefix, and time; ranges compress offsets."""
    stored = StoredLetter(0, 5, 1_000_000, dead_letter(stage="enrich", error="e", key=None,
                                                       value=None, topic="p.announcements"))
    assert Selection(stage="enrich", topic="announcements").matches(stored, "p.")
    assert not Selection(topic="agreements").matches(stored, "p.")
    assert not Selection(since=datetime.fromtimestamp(1001, UTC)).matches(stored)
    assert not Selection(partition=0).narrows() and Selection(stage="x").narrows()
    entries = [ReplayEntry(0, o, 0, "", "", "") for o in (1, 2, 3, 7, 9, 10)] + [ReplayEntry(1, 4, 0, "", "", "")]
    assert offset_ranges(entries) == "0@1-3,7,9-10 1@4"


@pytest.mark.kafka
async def test_a_letter_that_failed_again_after_a_replay_is_not_sent_round_again(topics: AntingSettings) -> None:
    """A replayed record carries anting.replayed (stage, letter); when the stage dead-letters
    it again, the new letter keeps that header and the next replay skips it, saying why and
    sending nothing, until --again; the record --again sends names the newer letter, once."""
    await _write(topics, [(_letter(topics, 0), None)])
    first = await _cli(topics, "dlq", "replay", "--stage", "enrich")
    assert first.returncode == 0 and "replayed 1" in first.stderr, first.stderr
    [sent] = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert (REPLAYED_HEADER, b"enrich 0@0") in sent.headers

    # enrich fails on it again: its letter keeps the record's headers but the dlq.* ones
    failed = dead_letter(stage="enrich", error="still bad", key=sent.key, value=sent.value,
                         headers=sent.headers, topic=sent.topic, partition=sent.partition, offset=sent.offset)
    await _write(topics, [(failed, None)])
    second = await _cli(topics, "dlq", "replay", "--stage", "enrich")
    assert second.returncode == 0, second.stderr
    said = " ".join(second.stderr.split())
    assert "replayed 0, skipped 1 (1 failed again after a replay)" in said, said
    assert "1 replayed before, not sent again" in said
    assert "sent round from letter 0@0" in " ".join(second.stdout.split())
    assert len(await read_topic(topics, topics.topic(ANNOUNCEMENTS), idle=1.0)) == 1  # nothing sent

    again = await replay(topics, Selection(stage="enrich", from_offset=1), again=True)
    assert [(e.offset, e.reason) for e in again.replayed] == [(1, "")]
    records = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=2, timeout=20)
    assert [v for k, v in records[-1].headers if k == REPLAYED_HEADER] == [b"enrich 0@1"]
