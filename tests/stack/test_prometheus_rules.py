"""The Prometheus config and alert rules are valid and fire as meant (promtool, never skipped)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.prometheus import ALERT_RULES, PROMETHEUS_CONFIG, prometheus_config
from devtools.stack import Options, scrape_targets

OPS = PROMETHEUS_CONFIG.parent
NEEDED_ALERTS = {
    "AntingStageDown", "AntingConsumerLagGrowing", "AntingDeadLetters",
    "AntingDeliveriesFailing", "AntingEndToEndLatencyHigh",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: install Debian's `prometheus` package (.ci/run does)"
    return subprocess.run([binary, *args], cwd=OPS, capture_output=True, text=True, timeout=60)


def test_prometheus_config_is_valid() -> None:
    """ops/prometheus/prometheus.yml passes `promtool check config` (with its rule file)."""
    result = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    """ops/prometheus/alerts.yml passes `promtool check rules`."""
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_as_meant() -> None:
    """The rules' unit tests pass: each alert fires on the series it is for and not before."""
    result = promtool("test", "rules", str(OPS / "alerts.test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_every_failure_named_in_the_design() -> None:
    """There is an alert for a stage down, lag growing, dead letters, failing deliveries, slow end to end."""
    rules = yaml.safe_load(ALERT_RULES.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert names >= NEEDED_ALERTS, NEEDED_ALERTS - names


def test_prometheus_scrapes_each_service_in_its_own_job() -> None:
    """The config has one scrape job per service, on the service's default port."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for name, port in (("ingest", 8001), ("enrich", 8002), ("notify", 8003), ("insights", 8004)):
        targets = [t for sc in jobs[name]["static_configs"] for t in sc["targets"]]
        assert targets == [f"{name}:{port}"]


def test_make_run_config_is_valid_and_points_at_local_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config `make run` derives (its ports, absolute rule path) passes promtool too."""
    monkeypatch.setenv("ANTING_ENRICH_PORT", "18802")
    opts = Options(scrape_interval=1)
    path = prometheus_config(tmp_path, scrape_targets(opts), opts.scrape_interval)
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["enrich"]["static_configs"][0]["targets"] == ["127.0.0.1:18802"]
    assert config["global"]["scrape_interval"] == "1s"
