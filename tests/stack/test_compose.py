"""docker-compose.yml and the Dockerfile hold together: `docker compose config` when the
compose plugin is there, and always a structural check of the file (never skipped)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SERVICE_PORTS = {"ingest": 8001, "enrich": 8002, "notify": 8003, "insights": 8004}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_command() -> list[str] | None:
    """`docker compose` when the plugin is installed, else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_compose_file_is_valid() -> None:
    """`docker compose config -q` accepts the file when compose is installed; either way
    every service has an image or a build and only keys this stack uses."""
    command = compose_command()
    if command is not None:
        result = subprocess.run(
            [*command, "-f", str(COMPOSE), "config", "-q"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )
        assert result.returncode == 0, result.stderr
    services = compose()["services"]
    allowed = {
        "image", "build", "command", "environment", "ports", "volumes", "depends_on",
        "healthcheck", "restart", "hostname",
    }
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
        assert set(svc) <= allowed, f"{name}: unexpected keys {set(svc) - allowed}"


def test_depends_on_conditions_are_satisfiable() -> None:
    """Every `service_healthy` dependency has a healthcheck; every `service_completed_successfully`
    one is a job that ends (a command, no always-restart)."""
    services = compose()["services"]
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = how["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy; it has no healthcheck"
            elif cond == "service_completed_successfully":
                assert "command" in services[dep]
                assert services[dep].get("restart", "no") in ("no", "on-failure")
            else:
                assert cond == "service_started"


def test_long_running_services_restart_and_report_health() -> None:
    """Everything but the init job has a restart policy and a healthcheck."""
    for name, svc in compose()["services"].items():
        if name == "init":
            continue
        assert svc.get("restart") in ("always", "unless-stopped"), name
        assert svc.get("healthcheck", {}).get("test"), name


def test_kafka_is_a_single_kraft_node_fit_for_transactions() -> None:
    """apache/kafka in KRaft mode with the internal topics (transactions too) at one replica."""
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert str(env[key]) == "1", key
    assert "EXTERNAL://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_the_three_services_run_from_the_one_image() -> None:
    """ingest, enrich and notify build the repo's Dockerfile, run `anting serve`, publish their
    port and check their own /readyz; the init job creates topics and loads the catalog."""
    services = compose()["services"]
    for name, port in SERVICE_PORTS.items():
        svc = services[name]
        assert svc["build"] == "." and svc["image"] == services["init"]["image"]
        assert svc["command"] == ["anting", "serve", name]
        assert f"{port}:{port}" in svc["ports"]
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
    init = " ".join(services["init"]["command"])
    assert "anting topics create" in init and "anting orgs load" in init
    notify = services["notify"]["environment"]
    assert notify["ANTING_SMTP_HOST"] == "mailpit"
    assert f"{notify['ANTING_SMTP_PORT']}:{notify['ANTING_SMTP_PORT']}" in services["mailpit"]["ports"]


def test_monitoring_mounts_the_repo_config() -> None:
    """Prometheus mounts ops/prometheus (config and rules), Grafana the provisioning and dashboards."""
    services = compose()["services"]
    for svc, needed in (
        ("prometheus", ["./ops/prometheus:/etc/prometheus"]),
        ("grafana", ["./ops/grafana/provisioning:/etc/grafana/provisioning",
                     "./ops/grafana/dashboards:/var/lib/grafana/dashboards"]),
    ):
        volumes = services[svc]["volumes"]
        for mount in needed:
            assert any(v.startswith(mount) for v in volumes), f"{svc} lacks {mount}"
            assert (REPO / mount.split(":")[0]).is_dir()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(compose()["volumes"])


def test_dockerfile_installs_the_locked_dependencies() -> None:
    """The image is python:3.11-slim with requirements.lock as constraints, and the
    .dockerignore keeps every file the Dockerfile copies."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "pip install -c requirements.lock ." in text
    assert re.search(r'^CMD \["anting", "serve"', text, re.M)
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    copied = [w for ln in text.splitlines() if ln.startswith("COPY") for w in ln.split()[1:-1]]
    assert copied
    for src in copied:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src.rstrip("/"), pat) for pat in ignored), f"{src} is ignored"
