"""The Grafana dashboard and provisioning: every queried metric exists, every panel has a datasource."""

from __future__ import annotations

import json

import yaml

from tests.stack.promql import (
    BUILT_IN,
    DASHBOARD,
    REPO,
    dashboard_expressions,
    declared_sample_names,
    metric_names,
    queried_names,
)

GRAFANA = REPO / "ops" / "grafana"


def test_every_queried_metric_is_exported() -> None:
    """Each metric a dashboard panel or an alert rule queries is one shared/metrics.py exports."""
    exported = declared_sample_names() | BUILT_IN
    for where, names in queried_names().items():
        assert names, f"no metric names found in the {where}"
        missing = names - exported
        assert not missing, f"the {where} query metrics no service exports: {sorted(missing)}"


def test_dashboard_shows_what_operators_need() -> None:
    """Panels cover events per stage, stage and end-to-end latency, lag, dead letters, deliveries."""
    exprs = dashboard_expressions()
    names = set().union(*(metric_names(e) for e in exprs))
    assert {
        "anting_ingest_events_total", "anting_enrich_events_total",
        "anting_stage_seconds_bucket", "anting_end_to_end_seconds_bucket",
        "anting_consumer_lag", "anting_dead_letters_total", "anting_notify_deliveries_total",
    } <= names
    assert any("histogram_quantile(0.99" in e and "anting_stage_seconds_bucket" in e for e in exprs)
    assert any("by (channel, outcome)" in e for e in exprs)


def test_metric_name_extraction_ignores_functions_labels_and_keywords() -> None:
    """The PromQL scanner finds metric names only (not functions, labels, grouping or variables)."""
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(anting_stage_seconds_bucket'
            '{stage="enrich"}[$__rate_interval]))) > 1e3 and on (job) up == 0 or vector(0)')
    assert metric_names(expr) == {"anting_stage_seconds_bucket", "up"}


def test_panels_use_the_provisioned_datasource() -> None:
    """Every panel and target names the datasource uid that provisioning creates."""
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    """The dashboard provider loads from the folder docker-compose.yml mounts the JSON into."""
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "anting.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert any(v.split(":")[1] == path and "ops/grafana/dashboards" in v.split(":")[0] for v in volumes)
