"""One event, one trace: the three services as ``anting serve`` processes configured only by
``OTEL_*`` variables, exporting to a real OTLP/HTTP receiver; a POSTed event yields one
trace from ingest's server span to notify's webhook request, whose receiver gets its
``traceparent``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess
from shared.settings import AntingSettings
from tests.enrich.helpers import load_catalog
from tests.notify.helpers import Receiver, wait_until
from tests.tracing.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.kafka

EVENT = {
    "specversion": "1.0", "id": "trace-one", "source": "/tests/tracing",
    "type": "conference.announcement", "subject": "traced-conference",
    "datacontenttype": "application/json",
    "data": {"headline": "A traced conference opens in Anting Town", "kind": "conference_opened",
             "conference": "Traced Conference",
             "organizations": [{"name": "Anting Town Government of Jiading District", "role": "host"}]},
}


async def ready(client: httpx.AsyncClient, url: str, what: str, proc: ServiceProcess) -> None:
    """Wait until ``url`` answers 200 (the service's /readyz), or fail with its log."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{what} exited: {proc.log()[-2000:]}")
        try:
            if (await client.get(url)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not ready: {proc.log()[-2000:]}")


def chain_to_root(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """``span`` and its ancestors, up to the root, each parent found in the trace."""
    out = [span]
    while out[-1].parent:
        parent = by_id.get(out[-1].parent)
        assert parent is not None, f"{out[-1].name} ({out[-1].service}) has a parent not in the trace"
        out.append(parent)
    return out


async def test_one_posted_event_is_one_trace_across_the_three_services(
        topics: AntingSettings, tmp_path: Path) -> None:
    """A POSTed event yields one trace of at least six spans over ingest, enrich and notify,
    chained by parent links (server → send → process → send → process → delivery → POST),
    with the messaging attributes; the webhook receiver gets that trace's traceparent."""
    otlp = await OtlpReceiver().start()
    hook = await Receiver().start()
    await load_catalog(topics)
    ports = {name: free_port() for name in ("ingest", "enrich", "notify")}
    prefix = topics.topic_prefix
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on"}
    services = [
        ServiceProcess("ingest", topics, tmp_path / "ingest.log",
                       ANTING_INGEST_PORT=str(ports["ingest"]), **otel),
        ServiceProcess("enrich", topics, tmp_path / "enrich.log",
                       ANTING_ENRICH_PORT=str(ports["enrich"]),
                       ANTING_ENRICH_GROUP=f"trace-enrich-{prefix}", **otel),
        ServiceProcess("notify", topics, tmp_path / "notify.log",
                       ANTING_NOTIFY_PORT=str(ports["notify"]),
                       ANTING_NOTIFY_GROUP=f"trace-notify-{prefix}",
                       ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", **otel),
    ]
    try:
        for s in services:
            s.start()
        async with httpx.AsyncClient(timeout=10) as client:
            for s in services:
                await ready(client, f"http://127.0.0.1:{ports[s.name]}/readyz", s.name, s)
            r = await client.post(f"http://127.0.0.1:{ports['notify']}/v1/subscriptions", json={
                "name": "traced", "channel": {"type": "webhook", "url": hook.url("/traced")}})
            assert r.status_code == 201, r.text
            r = await client.post(f"http://127.0.0.1:{ports['ingest']}/v1/events",
                                  content=orjson.dumps(EVENT),
                                  headers={"content-type": "application/cloudevents+json"})
            assert r.status_code == 202, r.text
        await wait_until(lambda: len(hook.on("/traced")) >= 1, timeout=60, what="the webhook")

        def server_spans() -> list[ReceivedSpan]:
            return [s for s in otlp.spans if s.service == "ingest" and s.kind == "server"
                    and s.attributes.get("http.route") == "/v1/events"]

        def client_spans(trace_id: str) -> list[ReceivedSpan]:
            return [s for s in otlp.trace(trace_id) if s.service == "notify" and s.kind == "client"]

        await wait_until(lambda: bool(server_spans()) and bool(client_spans(server_spans()[0].trace_id)),
                         timeout=30, what="the trace's first and last spans at the OTLP receiver")
        await asyncio.sleep(0.5)  # any span still on its way
        # what Prometheus scrapes: OpenMetrics when asked for (exemplars), else the classic text
        scraped: dict[str, tuple[str, str]] = {}
        classic: dict[str, tuple[str, str]] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for name in ("enrich", "notify"):
                r = await client.get(f"http://127.0.0.1:{ports[name]}/metrics", headers={
                    "accept": "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"})
                scraped[name] = (r.headers["content-type"], r.text)
                r = await client.get(f"http://127.0.0.1:{ports[name]}/metrics")
                classic[name] = (r.headers["content-type"], r.text)
    finally:
        for s in services:
            s.terminate()
        await hook.stop()
        await otlp.stop()

    [server] = server_spans()
    assert server.parent == "", "the request had no traceparent: its server span is the root"
    assert server.name == "POST /v1/events"
    spans = otlp.trace(server.trace_id)
    assert len(spans) >= 6, [(s.service, s.name) for s in spans]
    assert {s.service for s in spans} == {"ingest", "enrich", "notify"}
    # the event's spans are this trace's alone: no other trace holds a span of its services'
    # messaging (one event, one trace)
    messaging = [s for s in otlp.spans if "messaging.system" in s.attributes]
    assert {s.trace_id for s in messaging} == {server.trace_id}

    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    [post] = client_spans(server.trace_id)
    chain = [(s.service, s.kind, s.name.split(" ")[0]) for s in reversed(chain_to_root(post, by_id))]
    assert chain == [
        ("ingest", "server", "POST"),
        ("ingest", "producer", "send"),
        ("enrich", "consumer", "process"),
        ("enrich", "producer", "send"),
        ("notify", "consumer", "process"),
        ("notify", "internal", "deliver"),
        ("notify", "client", "POST"),
    ], chain
    steps = list(reversed(chain_to_root(post, by_id)))
    topics_seen = [s.attributes.get("messaging.destination.name") for s in steps[1:5]]
    assert topics_seen == [topics.topic_prefix + "announcements", topics.topic_prefix + "announcements",
                           topics.topic_prefix + "enriched-events", topics.topic_prefix + "enriched-events"]
    for s in steps[1:5]:
        assert s.attributes["messaging.system"] == "kafka"
        assert s.attributes["messaging.operation.type"] == ("send" if s.kind == "producer" else "process")
        assert s.name == f"{s.attributes['messaging.operation.type']} {s.attributes['messaging.destination.name']}"
    assert steps[1].attributes["cloudevents.event_id"] == EVENT["id"]
    assert steps[2].attributes["messaging.consumer.group.name"] == f"trace-enrich-{prefix}"
    assert post.attributes["http.response.status_code"] == 200

    [delivery] = hook.on("/traced")
    headers = {k.lower(): v for k, v in delivery.headers.items()}
    version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", server.trace_id, post.span_id)

    # the latency histograms carry the trace as an OpenMetrics exemplar (Prometheus links
    # a slow bucket to the trace with --enable-feature=exemplar-storage)
    for name, (ctype, text) in scraped.items():
        assert ctype.startswith("application/openmetrics-text"), ctype
        assert text.rstrip().endswith("# EOF")
        assert f'trace_id="{server.trace_id}"' in text, f"{name}: no exemplar of the trace"
    for name, (ctype, text) in classic.items():
        assert ctype.startswith("text/plain"), ctype
        assert "trace_id=" not in text, f"{name}: the classic format has no exemplars"
