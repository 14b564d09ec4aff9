"""`anting … --help` names value types as click does (TEXT, INTEGER, PATH, [a|b]), shows
none beside a flag, and TEXT beside a repeatable option: never typer's `<bool>` or `<list[str]>`."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from services.cli import app


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``anting``, as the words that name it."""
    out = [path]
    for name, sub in getattr(command, "commands", {}).items():
        out += _command_paths(sub, (*path, name))
    return out


ALL = _command_paths(get_command(app))


def _help(*words: str) -> str:
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("words", ALL, ids=lambda w: " ".join(w) or "anting")
def test_help_shows_no_typer_type_labels(words: tuple[str, ...]) -> None:
    """No `<bool>`, `<list[…]>`, `<str>` or `<int>` in any command's help."""
    assert not re.search(r"<(bool|str|int|float|path|list\[[^\]]*\])>", _help(*words))


def test_flags_show_no_type_and_repeatable_options_show_text() -> None:
    """A flag's row is its name and help alone; a repeatable option and a list argument show TEXT."""
    rows = {line.split()[1]: line for line in _help("subscriptions", "add").splitlines()
            if re.match(r"[│|]\s+\*?\s*--", line)}
    assert re.search(r"--help\s+Show this message", rows["--help"])
    assert re.search(r"--email\s+TEXT\s+deliver by email", rows["--email"])
    assert re.search(r"--digest\s+INTEGER\s", rows["--digest"])
    publish = _help("publish")
    assert re.search(r"--once\s+with --watch", publish)
    assert re.search(r"files\.\.\.\s+TEXT\s", publish)
    assert re.search(r"--watch\s+PATH\s", publish)
    assert re.search(r"--format\s+\[json\|table\]", _help("subscriptions", "list"))
