"""Prometheus for ``anting run``: its config derived from ops/prometheus, its command
line, and where its alerts page is.

``ops/prometheus/prometheus.yml`` is written for compose (one scrape job per service,
on the service's host name); ``anting run`` derives its own copy from it, each job
pointed at this machine's ports, so that file stays the one source of the jobs and
the alert rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools import REPO_ROOT

__all__ = ["ALERT_RULES", "PROMETHEUS_CONFIG", "alerts_page", "prometheus_argv", "prometheus_config"]

PROMETHEUS_CONFIG = REPO_ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERT_RULES = REPO_ROOT / "ops" / "prometheus" / "alerts.yml"


def prometheus_config(out_dir: Path, targets: Mapping[str, str], scrape_interval: float) -> Path:
    """Write ops/prometheus/prometheus.yml with each job named in ``targets`` (job name →
    ``host:port``) scraping that address alone, every ``scrape_interval`` seconds (rules
    evaluated as often), the alert rules by absolute path and no Alertmanager, to
    ``out_dir/prometheus.yml`` (``out_dir`` created); returns that path. Jobs not in
    ``targets`` are kept as they are."""
    import yaml

    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config.setdefault("global", {})["scrape_interval"] = f"{scrape_interval:g}s"
    config["global"]["evaluation_interval"] = f"{scrape_interval:g}s"
    config["rule_files"] = [str(ALERT_RULES)]
    config.pop("alerting", None)  # no Alertmanager here; alerts show on /alerts
    for job in config.get("scrape_configs", []):
        name = job.get("job_name")
        if name in targets:
            job["static_configs"] = [{"targets": [targets[name]], "labels": {"service": name}}]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_argv(binary: str, config: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of a Prometheus on 127.0.0.1:``port`` with this ``config``, its
    TSDB in ``data_dir/tsdb`` kept two days, logging warnings and worse, storing exemplars."""
    return [
        binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
        # the latency histograms carry trace ids as exemplars when tracing is on
        "--enable-feature=exemplar-storage",
    ]


def alerts_page(prometheus_url: str) -> str:
    """Where this Prometheus shows its alerts: ``/alerts``, or ``/classic/alerts`` when the
    binary has no React UI (Debian's package builds Prometheus without it, and answers 404
    on ``/alerts``). One loopback request, once, when ``make run`` says where to look;
    ``/alerts`` when Prometheus does not answer (2 s)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{prometheus_url}/alerts", timeout=2):
            return f"{prometheus_url}/alerts"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"{prometheus_url}/classic/alerts"
    except OSError:
        pass
    return f"{prometheus_url}/alerts"
