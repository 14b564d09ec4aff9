"""OpenTelemetry traces: one trace per event, from ingest's HTTP request through enrich to
notify's webhook, carried between the services in the records' W3C ``traceparent`` header.

Off unless an exporter is configured, by the standard variables alone
(https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/):
tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``)
or, that variable unset, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off. The SDK itself reads the rest:
``OTEL_TRACES_SAMPLER`` / ``_ARG`` (default ``parentbased_always_on``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (else ``service.name`` is the
service's own name), ``OTEL_BSP_*`` (the batch processor), ``OTEL_EXPORTER_OTLP_*``
(endpoint, headers, compression, timeout; OTLP over HTTP with protobuf, the only protocol
installed), ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``).

Off, :func:`tracer` answers ``None`` from a dict and nothing else happens: the SDK is
not even imported, and every call site tests that ``None`` once per batch or record.

The spans follow the semantic conventions for messaging, Kafka in particular
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/ and
``.../messaging/kafka/``): a PRODUCER span ``send <topic>`` per record sent, whose
context goes into the record's ``traceparent`` (:func:`start_send`), and a CONSUMER span
``process <topic>`` per record handled, a child of the context the record carries
(:func:`start_process`) — the conventions make the creation context the parent when one
record is processed at a time, as here. Attributes: ``messaging.system`` = ``kafka``,
``messaging.operation.type`` (``send`` / ``process``), ``messaging.operation.name``,
``messaging.destination.name``, ``messaging.destination.partition.id``,
``messaging.kafka.offset``, ``messaging.consumer.group.name``, and the CloudEvents ones
(https://opentelemetry.io/docs/specs/semconv/cloudevents/cloudevents-spans/) where the
event is at hand. HTTP server spans are the maintained FastAPI instrumentation's
(:func:`instrument_app`); the webhook client span is made by hand, as notify's webhook
client is its own (``services/notify/channels/http1.py``).

Kafka headers here are what aiokafka takes and gives: a ``list[tuple[str, bytes]]``
(or any sequence of such pairs when read).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    import asyncio

    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

__all__ = [
    "HEADERS",
    "Headers",
    "KafkaHeaders",
    "Span",
    "Tracer",
    "configure",
    "enabled_by_env",
    "end_on_ack",
    "exemplar",
    "extract",
    "fail",
    "inject",
    "instrument_app",
    "reset",
    "start_process",
    "start_send",
    "tracer",
]

Headers = list[tuple[str, bytes]]
# the HTTP paths that are not worth a trace: probes and scrapes, many a minute
UNTRACED_PATHS = "/healthz,/readyz,/metrics"

# service name -> its tracer, or None when tracing is off; filled on first use
_tracers: dict[str, Tracer | None] = {}
_providers: dict[str, TracerProvider] = {}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def enabled_by_env(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters the environment asks for (``["otlp"]``, ``["console"]``, both),
    ``[]`` for tracing off. See the module for the rule; an exporter this module does not
    know, or OTLP over gRPC (not installed), is logged and left out."""
    env = os.environ if env is None else env
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return []
    named = env.get("OTEL_TRACES_EXPORTER")
    if named is not None:
        wanted = [n.strip().lower() for n in named.split(",") if n.strip()]
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        wanted = ["otlp"]
    else:
        wanted = []
    out = []
    for name in wanted:
        if name == "none":
            return []
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        if name == "otlp" and protocol != "http/protobuf":
            log.warning("OTLP protocol %r is not installed (only http/protobuf): no OTLP export",
                        protocol)
        elif name in ("otlp", "console"):
            out.append(name)
        else:
            log.warning("unknown trace exporter %r in OTEL_TRACES_EXPORTER: ignored", name)
    return out


def _exporters(names: Sequence[str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
    return exporters


def configure(service: str, exporters: Sequence[SpanExporter] | None = None, *,
              batch: bool = True, sampler: Any = None) -> Tracer | None:  # Any: an SDK Sampler
    """Set tracing up for ``service`` (its ``service.name``, unless ``OTEL_SERVICE_NAME``
    says otherwise) and return its tracer; ``None`` (off) when ``exporters`` is None and the
    environment configures none (:func:`enabled_by_env`). ``exporters`` (tests, the
    benchmark) replace the environment's; ``batch=False`` exports each span as it ends
    (the SDK's ``SimpleSpanProcessor``); ``sampler`` replaces ``OTEL_TRACES_SAMPLER``.
    Called again for the same service, the first setting stands (:func:`reset` forgets it).

    Each service has a provider of its own, so that services sharing a process (tests,
    the benchmark) keep their own ``service.name``. The provider flushes at exit."""
    if service in _tracers:
        return _tracers[service]
    if exporters is None:
        names = enabled_by_env()
        if not names:
            _tracers[service] = None
            return None
        exporters = _exporters(names)
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    own = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(own), sampler=sampler)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch
                                    else SimpleSpanProcessor(exporter))
    _providers[service] = provider
    t = _tracers[service] = provider.get_tracer("anting." + service)
    log.info("tracing on", extra={"service": service,
                                  "exporters": [type(e).__name__ for e in exporters]})
    return t


def tracer(service: str) -> Tracer | None:
    """The tracer of ``service``, or ``None`` when tracing is off: the fast path, one dict
    lookup after the first call (which reads the environment, :func:`configure`)."""
    try:
        return _tracers[service]
    except KeyError:
        return configure(service)


def reset(service: str | None = None) -> None:
    """Flush and forget the set-up of ``service`` (all services when None), so that the next
    :func:`tracer` reads the environment again (tests, the benchmark)."""
    for name in [service] if service is not None else list(_tracers):
        _tracers.pop(name, None)
        provider = _providers.pop(name, None)
        if provider is not None:
            provider.shutdown()


class KafkaHeaders(Getter[Sequence[tuple[str, bytes]]], Setter[Headers]):
    """The propagators' access to Kafka headers: read from any sequence of
    ``(name, bytes)``; written into a ``list``, replacing every header of that name (a
    record copied from its input, as enrich does, must not carry the input's
    ``traceparent`` beside its own)."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("latin-1") for k, v in carrier or () if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier or ()]

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode("latin-1")))


HEADERS = KafkaHeaders()


def extract(headers: Sequence[tuple[str, bytes]] | None) -> Context:
    """The context a record carries (``traceparent``, ``tracestate``, ``baggage``), by the
    configured propagators; an empty context when it carries none."""
    return propagate.extract(headers or [], getter=HEADERS)


def inject(headers: Headers, span: Span) -> None:
    """Write ``span``'s context into ``headers`` (in place), replacing what was there."""
    propagate.inject(headers, context=trace.set_span_in_context(span), setter=HEADERS)


def start_send(t: Tracer, topic: str, headers: Headers, *, parent: Span | None = None,
               attributes: Mapping[str, str | int] | None = None) -> Span:
    """A PRODUCER span ``send <topic>`` for one record, a child of ``parent`` (else of the
    current span), whose context is written into ``headers`` (:func:`inject`); a
    ``traceparent`` the headers held already from another trace (a CloudEvent's own
    distributed-tracing extension) becomes a link, when there is no ``parent`` (with one,
    the headers came with the parent's record: its own trace). End it with
    :func:`end_on_ack`."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    links = None
    if parent is None:
        before = trace.get_current_span(extract(headers)).get_span_context()
        if before.is_valid and before.trace_id != trace.get_current_span().get_span_context().trace_id:
            links = [Link(before)]
    span = t.start_span(f"send {topic}", context, SpanKind.PRODUCER, attributes={
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": topic,
        **(attributes or {}),
    }, links=links)
    inject(headers, span)
    return span


def start_process(t: Tracer, topic: str, partition: int, offset: int,
                  headers: Sequence[tuple[str, bytes]] | None, group: str) -> Span:
    """A CONSUMER span ``process <topic>`` for one record, a child of the context it
    carries (a root when it carries none); end it with ``span.end()`` (or use it as the
    current span: ``with trace.use_span(span, end_on_exit=True)``)."""
    return t.start_span(f"process {topic}", extract(headers), SpanKind.CONSUMER, attributes={
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
        "messaging.consumer.group.name": group,
    })


def fail(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed by ``exc`` (the exception recorded, status ERROR, ``error.type``)."""
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
    span.set_attribute("error.type", type(exc).__qualname__)


def end_on_ack(span: Span, ack: asyncio.Future[Any]) -> None:
    """End a send span when the broker acknowledges the record (or refuses it: then it
    fails). A send is done when acknowledged, and an idempotent or transactional
    producer acknowledges late: the span shows that wait."""
    def done(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
        elif (exc := fut.exception()) is not None:
            fail(span, exc)
        else:
            meta = fut.result()
            partition = getattr(meta, "partition", None)
            if partition is not None:
                span.set_attribute("messaging.destination.partition.id", str(partition))
                span.set_attribute("messaging.kafka.offset", int(meta.offset))
        span.end()

    ack.add_done_callback(done)


def exemplar(span: Span | None = None) -> dict[str, str] | None:
    """An OpenMetrics exemplar for a Prometheus observation, ``{"trace_id": <32 hex>}``, of
    ``span`` (else the current span) when it is sampled; ``None`` otherwise. Call only
    with tracing on: it is the caller's fast path that keeps it off the hot path."""
    ctx = (span or trace.get_current_span()).get_span_context()
    if not ctx.trace_flags.sampled:
        return None
    return {"trace_id": format(ctx.trace_id, "032x")}


def instrument_app(app: FastAPI, service: str) -> None:
    """Trace ``app``'s HTTP requests with the FastAPI instrumentation (SERVER spans named
    ``<method> <route>``, a child of the request's ``traceparent``) when tracing is on for
    ``service``; nothing when it is off (the middleware is not even installed). Probes and
    scrapes (:data:`UNTRACED_PATHS`) are not traced, nor the ASGI ``receive``/``send``
    steps inside a request."""
    if tracer(service) is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_providers[service], meter_provider=NoOpMeterProvider(),
        excluded_urls=UNTRACED_PATHS, exclude_spans=["receive", "send"],
        server_request_hook=_redact_span_url)


# the attributes of a SERVER span that hold the request's query (old and new conventions)
_URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")


def _redact_span_url(span: Span, scope: dict[str, Any]) -> None:
    """The instrumentation's hook at a request's start: a stream token in the query
    (``access_token=``) never reaches a span. The instrumentation sits outside the app's
    own middleware (which takes the token out of the query), so it saw the token: this
    overwrites the URL attributes it set from it."""
    query = scope.get("query_string") or b""
    if b"access_token=" not in query or not span.is_recording():
        return
    from shared.http import redact_access_token

    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, redact_access_token(value))
