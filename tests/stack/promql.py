"""What the dashboard and the alert rules query: every PromQL expression, and the
metric names in it (for checking them against what the services export)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "ops" / "grafana" / "dashboards" / "anting.json"
ALERTS = REPO / "ops" / "prometheus" / "alerts.yml"

# series Prometheus makes itself, not a service
BUILT_IN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan",
}
IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard_expressions(path: Path = DASHBOARD) -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    yield str(t["expr"])
            yield from walk(p.get("panels", []))

    return list(walk(json.loads(path.read_text())["panels"]))


def alert_expressions(path: Path = ALERTS) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [str(r["expr"]) for g in doc["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, grouping
    lists, keywords, durations and Grafana variables left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for m in IDENT.finditer(text):
        rest = text[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or aggregation
        if m.group().lower() in KEYWORDS:
            continue
        if m.start() > 0 and (text[m.start() - 1].isdigit() or text[m.start() - 1] == "."):
            continue  # the tail of a number such as 1e3
        names.add(m.group())
    return names


def queried_names() -> dict[str, set[str]]:
    """Every metric name queried, with where: {'dashboard': {...}, 'alerts': {...}}."""
    return {
        "dashboard": set().union(*(metric_names(e) for e in dashboard_expressions())),
        "alerts": set().union(*(metric_names(e) for e in alert_expressions())),
    }


def sample_names(exposition: str) -> set[str]:
    """Every sample name in a Prometheus text exposition."""
    return {
        s.name for fam in text_string_to_metric_families(exposition) for s in fam.samples
    }


def declared_sample_names() -> set[str]:
    """The sample names shared/metrics.py's objects export once each label set is used,
    rendered by prometheus_client into a registry of their own."""
    from prometheus_client.metrics import MetricWrapperBase

    import shared.metrics as metrics

    registry = CollectorRegistry()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        clone = _clone(obj, registry)
        labels = getattr(clone, "_labelnames", ())
        child = clone.labels(*(["x"] * len(labels))) if labels else clone
        if hasattr(child, "observe"):
            child.observe(0.1)
        elif hasattr(child, "inc"):
            child.inc()
    return sample_names(generate_latest(registry).decode())


def _clone(obj: Any, registry: CollectorRegistry) -> Any:
    """The same metric (name, type, label names) registered in ``registry``, so the
    test touches no label set of the process-wide metrics."""
    from prometheus_client import Counter, Gauge, Histogram

    args = (obj._name, obj._documentation, list(getattr(obj, "_labelnames", ())))
    for kind in (Histogram, Counter, Gauge):
        if isinstance(obj, kind):
            return kind(*args, registry=registry)
    raise TypeError(f"unexpected metric type {type(obj).__name__} for {obj._name}")
