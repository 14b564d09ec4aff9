"""Where the stack is (shared/where.py): the environment wins over the profile `anting run`
writes, the profile over the defaults, and ANTING_PORT_OFFSET moves every default port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.enrich.settings import EnrichSettings
from services.ingest.settings import IngestSettings
from services.insights.settings import InsightsSettings
from services.notify.client import base_url
from services.notify.settings import NotifySettings
from shared.settings import KafkaSettings, SettingsError, load
from shared.where import (
    apply_profile,
    default_port,
    port_offset,
    profile_path,
    read_profile,
    remove_profile,
    service_url,
    write_profile,
)

PROFILE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:29092", "ANTING_TOPIC_PREFIX": "demo.",
           "ANTING_NOTIFY_URL": "http://127.0.0.1:28003", "ANTING_INSIGHTS_URL": "http://127.0.0.1:28004"}


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "stack.env"
    write_profile(path, PROFILE, os.getpid())
    return path


def test_defaults_without_environment_or_profile(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert apply_profile(env, tmp_path / "none.env") == {}
    assert service_url("notify", env) == "http://127.0.0.1:8003"
    assert [default_port(w, env) for w in ("kafka", "ingest", "enrich", "notify", "insights", "prometheus")] \
        == [9092, 8001, 8002, 8003, 8004, 9090]


def test_the_offset_moves_every_port(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"ANTING_PORT_OFFSET": "10000"}
    assert [default_port(w, env) for w in ("kafka", "ingest", "enrich", "notify", "insights", "prometheus")] \
        == [19092, 18001, 18002, 18003, 18004, 19090]
    assert service_url("insights", env) == "http://127.0.0.1:18004"
    # the services' own settings and the clients move with it; a port's own variable wins
    monkeypatch.setenv("ANTING_PORT_OFFSET", "10000")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    for var in ("ANTING_INGEST_PORT", "ANTING_ENRICH_PORT", "ANTING_INSIGHTS_PORT", "ANTING_NOTIFY_URL",
                "ANTING_NOTIFY_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTING_NOTIFY_PORT", "18333")
    assert load(KafkaSettings).bootstrap_servers == "localhost:19092"
    assert (load(IngestSettings).port, load(EnrichSettings).port, load(InsightsSettings).port) \
        == (18001, 18002, 18004)
    assert load(NotifySettings).port == 18333
    assert base_url() == "http://127.0.0.1:18333"


@pytest.mark.parametrize("bad", ["-1", "ten", "60000"])
def test_a_bad_offset_is_named(bad: str) -> None:
    with pytest.raises(SettingsError, match="ANTING_PORT_OFFSET"):
        port_offset({"ANTING_PORT_OFFSET": bad})


def test_the_profile_fills_what_the_environment_does_not_say(profile: Path) -> None:
    env: dict[str, str] = {}
    assert apply_profile(env, profile) == PROFILE
    assert service_url("notify", env) == "http://127.0.0.1:28003"
    # the profile's URLs name the stack: the offset is not applied on top of them
    assert service_url("ingest", env) == "http://127.0.0.1:8001"


def test_the_environment_wins_over_the_profile(profile: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092", "ANTING_NOTIFY_PORT": "18003"}
    taken = apply_profile(env, profile)
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "10.0.0.1:9092"
    assert "ANTING_NOTIFY_URL" not in taken  # what the URL is made of was said
    assert service_url("notify", env) == "http://127.0.0.1:18003"
    assert env["ANTING_INSIGHTS_URL"] == "http://127.0.0.1:28004"
    # a variable said empty is said: no prefix
    env = {"ANTING_TOPIC_PREFIX": ""}
    assert "ANTING_TOPIC_PREFIX" not in apply_profile(env, profile)
    assert env["ANTING_TOPIC_PREFIX"] == ""
    # the offset says where everything is: the profile's addresses give way to it
    env = {"ANTING_PORT_OFFSET": "500"}
    assert set(apply_profile(env, profile)) == {"ANTING_TOPIC_PREFIX"}
    assert service_url("notify", env) == "http://127.0.0.1:8503"


def test_a_profile_of_a_run_that_is_gone_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "stack.env"
    write_profile(path, PROFILE, dead.pid)
    assert read_profile(path) == {}
    remove_profile(path, os.getpid())  # not ours: left alone
    assert path.exists()
    remove_profile(path, dead.pid)
    assert not path.exists()


def test_the_profile_is_in_the_state_dir(tmp_path: Path) -> None:
    assert profile_path({"ANTING_RUN_STATE_DIR": str(tmp_path)}) == tmp_path.resolve() / "stack.env"
    assert profile_path({}).parent.name == ".local"


def test_the_cli_reads_the_profile(profile: Path, tmp_path: Path) -> None:
    """`anting where` (any command but `anting run`) takes the profile's addresses and says so."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTING_", "KAFKA_"))} | {"ANTING_RUN_STATE_DIR": str(tmp_path)}
    anting = str(Path(sys.executable).parent / "anting")
    out = subprocess.run([anting, "where"], env=env, capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()}
    assert rows["kafka"] == ["127.0.0.1:29092", f"(profile {profile})"]
    assert rows["notify"] == ["http://127.0.0.1:28003", f"(profile {profile})"]
    assert rows["ingest"] == ["http://127.0.0.1:8001", "(default)"]
    assert rows["prefix"] == ["demo.", f"(profile {profile})"]
    assert subprocess.run([anting, "where", "notify"], env=env | {"ANTING_NOTIFY_PORT": "18003"},
                          capture_output=True, text=True, check=True).stdout == "http://127.0.0.1:18003\n"
