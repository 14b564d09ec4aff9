"""`anting dlq list` shows every dead letter safely, whatever bytes its key, value and
headers hold, and a dead letter too large for its topic is cut to fit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from devtools import REPO_ROOT
from devtools.testing import env_for
from shared.deadletters import DeadLetter, fit, show_bytes
from shared.kafka import make_producer, record_size
from shared.settings import AntingSettings
from shared.topics import DEAD_LETTERS

ANTING = str(Path(sys.executable).parent / "anting")

HEADERS: list[tuple[str, bytes | None]] = [
    ("x-null", None),  # kcat -H "x-null"
    ("x-latin1", "café".encode("latin-1")),  # not UTF-8
    ("x-escape", b"\x1b[31mred\x1b[0m"),  # a terminal escape sequence
    ("x-markup", b"[bold red]not markup[/]"),
    ("dlq.stage", b"enrich"),
    ("dlq.original.topic", b"agreements"),
    ("dlq.error.class", b"ValidationError"),
    ("dlq.error.message", b"id: must not contain control characters\nsecond line"),
]


async def _cli(settings: AntingSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [ANTING, *args], env=env_for(settings, COLUMNS="200"), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )


@pytest.mark.kafka
async def test_dlq_list_shows_null_and_non_utf8_headers(topics: AntingSettings) -> None:
    """A header with a null value or bytes that are not UTF-8 is shown, not a crash:
    null as JSON null, other bytes as \\xNN escapes; the table prints no escape sequence."""
    producer = make_producer(topics)
    await producer.start()
    try:
        await producer.send_and_wait(topics.topic(DEAD_LETTERS), key=b"\xff\xfe", value=b"caf\xe9 \x00",
                                     headers=HEADERS)
    finally:
        await producer.stop()
    listed = await _cli(topics, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = orjson.loads(listed.stdout.splitlines()[0])
    assert doc["headers"]["x-null"] is None
    assert doc["headers"]["x-latin1"] == "caf\\xe9"
    assert doc["key"] == "\\xff\\xfe" and doc["value"] == "caf\\xe9 \x00"
    table = await _cli(topics, "dlq", "list")
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "ValidationError" in table.stdout
    assert "1 dead letter" in table.stderr  # the count goes to stderr, the table to stdout


def test_show_bytes_loses_nothing() -> None:
    """UTF-8 is shown as is, other bytes as escapes that name them, and None stays None."""
    assert show_bytes(None) is None
    assert show_bytes("安亭".encode()) == "安亭"
    assert show_bytes(b"\xc3\x28") == "\\xc3("
    assert DeadLetter(None, None, [("h", None)]).header("h") is None


def test_a_dead_letter_too_large_for_its_topic_is_cut_to_fit() -> None:
    """The value is cut so the letter fits, and dlq.value.truncated gives the original length."""
    value = b"x" * 2_000_000
    letter = DeadLetter(b"k", value, [("dlq.stage", b"enrich"), ("traceparent", b"00-ab")])
    cut = fit(letter, 1_048_576)
    assert record_size(cut.key, cut.value, cut.headers) <= 1_048_576
    assert cut.header("dlq.value.truncated") == str(len(value))
    assert cut.value == value[: len(cut.value or b"")] and len(cut.value or b"") > 1_000_000
    small = DeadLetter(b"k", b"v", [])
    assert fit(small, 1_048_576) is small
