"""Every Prometheus metric Anting exports, named once (DESIGN.md "Metrics"), and helpers.

Services import the metric objects from here so that a name cannot drift between
the code, the alert rules and the dashboard.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder

# latencies from sub-millisecond (one event in a stage) to minutes (retries)
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)

INGEST_EVENTS = Counter(
    "anting_ingest_events", "Events ingest accepted or rejected.", ["type", "outcome"]
)
ENRICH_EVENTS = Counter(
    "anting_enrich_events", "Events enrich processed.", ["type", "outcome"]
)
DOCUMENTS_READ = Counter(
    "anting_documents", "Documents enrich's documents stage read, by outcome: read "
    "(its events written), no_event (it reports none), dead_lettered", ["outcome"])
DOCUMENT_EVENTS = Counter(
    "anting_document_events", "Events the documents stage read out of documents", ["type"])
ENRICH_ORGANIZATIONS = Counter(
    "anting_enrich_organizations", "Organization mentions resolved or not.", ["outcome"]
)
NOTIFY_DELIVERIES = Counter(
    "anting_notify_deliveries", "Delivery attempts by channel and outcome.", ["channel", "outcome"]
)
STAGE_SECONDS = Histogram(
    "anting_stage_seconds", "Time spent in each stage per event.", ["stage"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "anting_end_to_end_seconds", "From event accepted (its Kafka timestamp) to notification delivered.",
    buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "anting_consumer_lag", "Records behind the partition end, per consumer.",
    ["group", "topic", "partition"],
)
WORKER_RESTARTS = Counter(
    "anting_worker_restarts",
    "Times a stage's consumer session failed and was started again from the committed offsets.",
    ["stage"],
)
WRITE_FAILURES = Counter(
    "anting_write_failures",
    "Writes the broker or client refused: kind=record (the record goes to dead-letters) or "
    "producer (the work is written again on a new producer).",
    ["stage", "kind"],
)
DEAD_LETTERS = Counter(
    "anting_dead_letters", "Records sent to dead-letters.", ["stage", "topic"]
)
# Every dead letter, whoever wrote it (services, `anting publish`, any producer), counted
# from the dead-letters topic itself by notify's DeadLetterMonitor (shared/dlq_monitor.py).
# Gauges: every notify instance exports the same values, so queries take max by (stage, topic).
DEAD_LETTERS_IN_TOPIC = Gauge(
    "anting_dead_letters_in_topic",
    "Dead letters in the dead-letters topic by stage and original topic, read from the topic.",
    ["stage", "topic"],
)
DEAD_LETTERS_LAST_TIMESTAMP = Gauge(
    "anting_dead_letters_last_timestamp_seconds",
    "When the newest dead letter of a stage and original topic was written (Unix seconds).",
    ["stage", "topic"],
)
# insights (services/insights): facts folded into its faust table, by outcome (applied;
# replay: at or below the entity's highest applied offset; duplicate: a (source, id)
# among its latest events; unreadable: an enriched record that is not the contract)
INSIGHTS_FACTS = Counter(
    "anting_insights_facts", "Facts insights folded into its table, or skipped, by outcome.", ["outcome"]
)
INSIGHTS_ENTITIES = Gauge(
    "anting_insights_entities", "Entities in this instance's table partitions, by kind.", ["kind"]
)
INSIGHTS_RECOVERY_SECONDS = Gauge(
    "anting_insights_recovery_seconds",
    "How long this instance's last table recovery from the changelog took (from start to ready).",
)
INSIGHTS_RECOVERY_RESTARTS = Counter(
    "anting_insights_recovery_restarts_total",
    "Table recoveries started over because they made no progress (see RecoveryWatchdog).",
)
HTTP_REQUEST_SECONDS = Histogram(
    "anting_http_request_duration_seconds", "HTTP request latency by route and status.",
    ["service", "method", "route", "status"], buckets=LATENCY_BUCKETS,
)


def render(registry: CollectorRegistry = REGISTRY, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition and its content type for a ``/metrics`` handler, in the format the
    scraper's ``Accept`` header asks for (prometheus-client's ``choose_encoder``):
    OpenMetrics 1.0 for Prometheus (which asks for it first) — the only format that
    carries exemplars, the trace ids tracing attaches to the latency histograms — else
    the classic text format 0.0.4 (curl, older scrapers)."""
    if accept and "application/openmetrics-text" in accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["CONSUMER_LAG", "DEAD_LETTERS", "DEAD_LETTERS_IN_TOPIC", "DEAD_LETTERS_LAST_TIMESTAMP",
           "DOCUMENTS_READ", "DOCUMENT_EVENTS",
           "END_TO_END_SECONDS", "ENRICH_EVENTS", "ENRICH_ORGANIZATIONS", "HTTP_REQUEST_SECONDS",
           "INGEST_EVENTS", "INSIGHTS_ENTITIES", "INSIGHTS_FACTS", "INSIGHTS_RECOVERY_RESTARTS",
           "INSIGHTS_RECOVERY_SECONDS", "LATENCY_BUCKETS", "NOTIFY_DELIVERIES", "STAGE_SECONDS", "WORKER_RESTARTS", "WRITE_FAILURES", "render"]
