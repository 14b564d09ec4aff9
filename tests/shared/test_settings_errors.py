"""A bad setting is reported under the variable the user typed, with the values it takes:
shared names keep their own names whatever a service's prefix, and a bad log level is a
message, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools import REPO_ROOT
from services.enrich.settings import EnrichSettings
from services.ingest.settings import IngestSettings
from services.insights.settings import InsightsSettings
from services.notify.settings import NotifySettings
from shared.settings import AntingSettings, SettingsError, load, variable_names

ANTING = str(Path(sys.executable).parent / "anting")
SERVICES = (IngestSettings, EnrichSettings, NotifySettings, InsightsSettings)


def _message(cls: type[AntingSettings]) -> str:
    with pytest.raises(SettingsError) as caught:
        load(cls)
    return str(caught.value)


@pytest.mark.parametrize("cls", [IngestSettings, NotifySettings])
def test_a_shared_variable_is_named_as_typed(cls: type[AntingSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    """ANTING_RATE_LIMIT=fast is reported as ANTING_RATE_LIMIT, not under the service's prefix."""
    monkeypatch.setenv("ANTING_RATE_LIMIT", "fast")
    said = _message(cls)
    assert "  ANTING_RATE_LIMIT: 'fast' is not a rate" in said, said
    assert "_ANTING_" not in said


def test_the_stream_token_lifetime_is_named_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream-token lifetime over its bound names ANTING_STREAM_TOKEN_TTL_SECONDS and the bound."""
    monkeypatch.setenv("ANTING_STREAM_TOKEN_TTL_SECONDS", "99999")
    said = _message(NotifySettings)
    assert "  ANTING_STREAM_TOKEN_TTL_SECONDS: Input should be less than or equal to 3600" in said, said


def test_a_prefixed_variable_keeps_its_prefix_and_lists_what_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """ANTING_ENRICH_GUARANTEE=maybe names the variable and both guarantees."""
    monkeypatch.setenv("ANTING_ENRICH_GUARANTEE", "maybe")
    said = _message(EnrichSettings)
    assert "  ANTING_ENRICH_GUARANTEE: " in said and "'exactly_once' or 'at_least_once'" in said, said


@pytest.mark.parametrize("cls", SERVICES)
def test_a_bad_log_level_names_the_levels(cls: type[AntingSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    """ANTING_LOG_LEVEL=LOUD lists the levels; any case of a level is taken."""
    monkeypatch.setenv("ANTING_LOG_LEVEL", "LOUD")
    said = _message(cls)
    assert "  ANTING_LOG_LEVEL: 'LOUD' is not a log level: one of DEBUG, INFO, WARNING, ERROR, CRITICAL" in said
    monkeypatch.setenv("ANTING_LOG_LEVEL", "debug")
    assert load(cls).log_level == "DEBUG"


@pytest.mark.parametrize("cls", SERVICES)
def test_every_field_has_the_variable_it_is_read_from(cls: type[AntingSettings]) -> None:
    """Every variable name a service's settings report is one it reads: its prefix and the
    field, or the alias alone; never the prefix glued to an alias."""
    names = variable_names(cls)
    assert names["log_level"] == "ANTING_LOG_LEVEL" and names["topic_prefix"] == "ANTING_TOPIC_PREFIX"
    prefix = str(cls.model_config["env_prefix"])
    for name, variable in names.items():
        assert variable.startswith(("ANTING_", "KAFKA_")) and variable.count("ANTING_") == 1, (name, variable)
        if prefix != "ANTING_" and variable.startswith(prefix):
            assert variable == (prefix + name).upper(), (name, variable)


def test_serve_with_a_bad_log_level_is_one_message_and_exit_2() -> None:
    """`ANTING_LOG_LEVEL=LOUD anting serve enrich` says which variable and exits 2, no traceback."""
    import os

    out = subprocess.run([ANTING, "serve", "enrich"], env={**os.environ, "ANTING_LOG_LEVEL": "LOUD"},
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "ANTING_LOG_LEVEL" in out.stderr and "Traceback" not in out.stderr, out.stderr
