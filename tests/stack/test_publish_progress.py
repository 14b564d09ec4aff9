"""`anting publish`'s progress bar stays one line on an 80-column terminal, whatever the
file name and the counts, and still shows the end of the file's name."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from services.ingest import publish_cli
from services.ingest.files import Summary

SAMPLE = "services/ingest/samples/world-metaverse-conference.ndjson"


def _render(width: int, name: str, summary: Summary, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out = io.StringIO()
    monkeypatch.setattr(publish_cli, "console",
                        Console(file=out, width=width, force_terminal=True, color_system=None))
    progress = publish_cli._progress(quiet=False)
    task = progress.add_task(name, total=123_456_789, counts=publish_cli._counts(summary))
    progress.update(task, completed=23_456_789)
    publish_cli.console.print(progress.get_renderable())
    return out.getvalue().rstrip("\n").split("\n")


@pytest.mark.parametrize("width", [80, 60])
@pytest.mark.parametrize(("name", "accepted", "rejected"), [
    (SAMPLE, 9, 0), ("events.ndjson", 1_234_567, 123_456), ("x" * 300, 20_000, 3), ("-", 5, 0),
])
def test_one_line_at_80_columns(width: int, name: str, accepted: int, rejected: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Long names, long counts: one line no wider than the terminal."""
    summary = Summary(name)
    summary.accepted, summary.rejected = accepted, rejected
    lines = _render(width, name, summary, monkeypatch)
    assert len(lines) == 1 and len(lines[0]) <= width, lines


def test_the_sample_shows_its_name_bytes_and_counts_at_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped sample at 80 columns: the end of its name, the bytes read and the count."""
    summary = Summary(SAMPLE)
    summary.accepted = 9
    (line,) = _render(80, SAMPLE, summary, monkeypatch)
    assert "world-metaverse-conference.ndjson" in line
    assert "23.5/123.5 MB" in line and "9 ok" in line and "rejected" not in line
