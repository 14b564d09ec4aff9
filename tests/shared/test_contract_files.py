"""Committed artefacts that must follow the code: JSON Schemas, settings errors, CLI help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.schemas import SCHEMA_DIR, render_all
from shared.settings import AntingSettings, SettingsError, load


def test_committed_schemas_are_current() -> None:
    """docs/schemas/ equals what `anting schema` writes now (run it after changing a model)."""
    rendered = render_all()
    committed = {p.name: p.read_bytes() for p in SCHEMA_DIR.glob("*.schema.json")}
    stale = sorted(n for n in rendered if committed.get(n) != rendered[n])
    extra = sorted(set(committed) - set(rendered))
    assert not stale and not extra, f"stale: {stale}, unknown: {extra}; run `anting schema`"


def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad setting fails at start-up with a message naming the environment variable."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON")
    with pytest.raises(SettingsError) as info:
        load(AntingSettings)
    assert "KAFKA_SECURITY_PROTOCOL" in str(info.value)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "no-port-here")
    with pytest.raises(SettingsError) as info:
        load(AntingSettings)
    assert "KAFKA_BOOTSTRAP_SERVERS" in str(info.value)


def test_sasl_ssl_settings_reach_the_client_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """SASL/SCRAM credentials and SSL come from the environment into every client."""
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "anting")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    opts = load(AntingSettings).kafka.client_options()
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("anting", "s3cret")
    assert opts["ssl_context"] is not None


def test_cli_help_lists_the_commands() -> None:
    """`anting --help` answers and names the root commands."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "anting"), "--help"], capture_output=True, text=True,
        check=True,
    ).stdout
    for command in ("serve", "topics", "schema", "kafka", "dlq"):
        assert command in out
