"""Errors a user can act on: without Java `make setup`, `make run`, `anting run` and
`anting kafka` print the one message saying what to install (exit 2, no traceback), and
`anting orgs put` names each invalid field of a record on a line of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.localkafka import MISSING_TOOLS_HELP, free_port

REPO = Path(__file__).resolve().parents[2]
ANTING = str(Path(sys.executable).parent / "anting")


def _without_java(tmp_path: Path) -> dict[str, str]:
    """This environment with a PATH that has no java and no mvn, and no broker named."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "MAKEFLAGS")}
    empty = tmp_path / "bin"
    empty.mkdir()
    env["PATH"] = str(empty)
    env["COLUMNS"] = "300"  # the message on one line, as wide terminals show it
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("argv", [
    [ANTING, "kafka", "--fetch-only"],
    ["/usr/bin/env", "ANTING_RUN_PROMETHEUS=false", ANTING, "run", "--kafka-port", "0"],
    ["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(ANTING).parent}", "setup"],
    ["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(ANTING).parent}", "run"],
], ids=["anting kafka", "anting run", "make setup", "make run"])
def test_without_java_one_message_and_exit_2(argv: list[str], tmp_path: Path) -> None:
    """The message says what to install or set instead; nothing else explains it, no traceback."""
    if "--kafka-port" in argv:
        argv[argv.index("--kafka-port") + 1] = str(free_port())
    if argv[0] == "make":
        argv[0] = "/usr/bin/make"
    result = _run(argv, _without_java(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert output.count("Anting needs a Kafka broker") == 1, output
    assert MISSING_TOOLS_HELP.split(". ")[1] in " ".join(output.split()), output  # what to install
    assert "found: no java on PATH" in output, output


def test_orgs_put_names_each_invalid_field_on_its_own_line() -> None:
    """A bad record: `path: message` per problem, exit 2, nothing written, no pydantic dump."""
    record = '{"id": "Bad Id", "kind": "nope", "aliases": [1]}'
    result = _run([ANTING, "orgs", "put", record], dict(os.environ))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "invalid organization (4 problems; the record's fields: docs/DESIGN.md):"
    assert lines[1:] == [
        "  id: String should match pattern '^[a-z0-9][a-z0-9-]*[a-z0-9]$'",
        "  name: Field required",
        "  aliases.0: Input should be a valid string",
        "  kind: Input should be 'government', 'academic', 'association', 'alliance', "
        "'enterprise', 'venue' or 'media'",
    ]
    assert "errors.pydantic.dev" not in result.stderr and "input_value" not in result.stderr


def test_orgs_put_of_an_unreadable_file_says_so() -> None:
    """`@file` that cannot be read: one line naming it, exit 2."""
    result = _run([ANTING, "orgs", "put", "@/nonexistent/org.json"], dict(os.environ))
    assert result.returncode == 2
    assert result.stderr == "cannot read /nonexistent/org.json: No such file or directory\n"


def test_a_refused_webhook_names_the_setting_and_whether_it_is_set_here() -> None:
    """A loopback webhook refused where ANTING_NOTIFY_ALLOW_NETWORKS is unset says both; where it
    is set (without loopback) the setting is named but its networks are not shown."""
    from ipaddress import ip_network

    from services.notify.ssrf import literal_refusal

    assert literal_refusal("http://127.0.0.1:8080/hook", []) == (
        "127.0.0.1 is loopback: not a public address, and not in ANTING_NOTIFY_ALLOW_NETWORKS "
        "(unset here)")
    why = literal_refusal("http://127.0.0.1:8080/hook", [ip_network("10.0.0.0/8")])
    assert why is not None and why.endswith("not in ANTING_NOTIFY_ALLOW_NETWORKS")
    assert "10.0.0.0" not in why
