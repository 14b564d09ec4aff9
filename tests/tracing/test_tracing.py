"""shared.tracing without a broker: when it is on, the Kafka header propagation, the span
shapes and the exemplars; when it is off, that nothing is set up at all."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.openmetrics.exposition import generate_latest

from devtools import REPO_ROOT
from shared import tracing

FOREIGN = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the service "t", every span kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.reset("t")
    tracing.configure("t", [exporter], batch=False)
    yield exporter
    tracing.reset("t")


@pytest.mark.parametrize(("env", "exporters"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, []),
])
def test_the_environment_decides_whether_tracing_is_on(env: dict[str, str], exporters: list[str]) -> None:
    """On only when an exporter is configured (an OTLP endpoint or OTEL_TRACES_EXPORTER);
    none, OTEL_SDK_DISABLED and an uninstalled protocol keep it off."""
    assert tracing.enabled_by_env(env) == exporters


def test_off_by_default_the_sdk_is_never_imported() -> None:
    """Without OTEL_* variables the tracer is None, the ingest app has no tracing middleware
    and the SDK is not even imported."""
    code = (
        "import sys\n"
        "from shared import tracing\n"
        "from services.ingest.api import create_app\n"
        "from services.ingest.publisher import Publisher\n"
        "from services.ingest.settings import IngestSettings\n"
        "s = IngestSettings()\n"
        "app = create_app(s, Publisher(s))\n"
        "assert tracing.tracer('ingest') is None\n"
        "assert not [m for m in app.user_middleware if 'OpenTelemetry' in repr(m)]\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry.sdk')], 'SDK imported'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_send_then_process_carries_the_context_in_the_headers(spans: InMemorySpanExporter) -> None:
    """A send span's context replaces the record's traceparent (one header, not two); the
    process span of that record is its child, with the messaging attributes."""
    t = tracing.tracer("t")
    assert t is not None
    headers = [("ce_id", b"e1"), ("traceparent", FOREIGN)]
    send = tracing.start_send(t, "announcements", headers)
    send.end()
    assert [k for k, _ in headers] == ["ce_id", "traceparent"]
    assert headers[1][1].decode().split("-")[1:3] == [
        format(send.get_span_context().trace_id, "032x"),
        format(send.get_span_context().span_id, "016x")]
    process = tracing.start_process(t, "announcements", 2, 41, headers, "group-a")
    process.end()
    sent, processed = spans.get_finished_spans()
    assert (sent.name, sent.kind) == ("send announcements", SpanKind.PRODUCER)
    # the event's own traceparent (another trace) is kept as a link, not as the parent
    assert sent.parent is None
    assert [format(link.context.trace_id, "032x") for link in sent.links] == [FOREIGN.decode().split("-")[1]]
    assert (processed.name, processed.kind) == ("process announcements", SpanKind.CONSUMER)
    assert processed.parent is not None and processed.parent.span_id == sent.context.span_id
    assert processed.context.trace_id == sent.context.trace_id
    assert dict(processed.attributes or {}) == {
        "messaging.system": "kafka", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "announcements",
        "messaging.destination.partition.id": "2", "messaging.kafka.offset": 41,
        "messaging.consumer.group.name": "group-a"}


def test_a_record_without_context_starts_a_trace(spans: InMemorySpanExporter) -> None:
    """A record written by a producer that does not trace (kcat, another client) is processed
    under a root span."""
    t = tracing.tracer("t")
    assert t is not None
    tracing.start_process(t, "agreements", 0, 0, [("ce_id", b"x")], "g").end()
    tracing.start_process(t, "agreements", 0, 1, None, "g").end()
    assert [s.parent for s in spans.get_finished_spans()] == [None, None]


async def test_a_send_span_ends_when_the_broker_acknowledges(spans: InMemorySpanExporter) -> None:
    """end_on_ack ends the span with the acknowledgement, failed when the send failed."""
    import asyncio

    t = tracing.tracer("t")
    assert t is not None
    ok: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    bad: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    tracing.end_on_ack(tracing.start_send(t, "a", []), ok)
    tracing.end_on_ack(tracing.start_send(t, "b", []), bad)
    await asyncio.sleep(0)
    assert spans.get_finished_spans() == ()
    ok.set_result(type("Meta", (), {"partition": 3, "offset": 7})())
    bad.set_exception(TimeoutError("no ack"))
    await asyncio.sleep(0)
    a, b = sorted(spans.get_finished_spans(), key=lambda s: s.name)
    assert a.attributes is not None and a.attributes["messaging.kafka.offset"] == 7
    assert b.status.status_code.name == "ERROR" and b.attributes is not None
    assert b.attributes["error.type"] == "TimeoutError"


def test_a_histogram_observation_carries_the_trace_id(spans: InMemorySpanExporter) -> None:
    """The exemplar names the sampled span's trace; OpenMetrics exposes it on the bucket."""
    t = tracing.tracer("t")
    assert t is not None
    registry = CollectorRegistry()
    h = Histogram("anting_test_seconds", "test", registry=registry, buckets=(0.1, 1.0))
    with t.start_as_current_span("work") as span:
        h.observe(0.05, tracing.exemplar())
    trace_id = format(span.get_span_context().trace_id, "032x")
    text = generate_latest(registry).decode()
    assert f'anting_test_seconds_bucket{{le="0.1"}} 1.0 # {{trace_id="{trace_id}"}} 0.05' in text
