"""The HTTP entry point of ingest (FastAPI): translate a request into events, hand them
to the publisher, answer 202 once the broker acknowledged every record.

The body is read here, not by FastAPI, so that the size limit is enforced while
reading (413 as soon as it is crossed) and JSON is parsed once, with orjson. A body
sent with ``Content-Encoding: gzip`` or ``deflate`` is decoded as it arrives, the limit
applying to the decoded bytes too; other codings get 415 (RFC 9110 §15.5.16).
"""

from __future__ import annotations

import time
import zlib
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Match, Route
from starlette.types import Scope

from services.ingest import codec
from services.ingest.codec import Rejection
from services.ingest.publisher import BrokerUnavailable, Publisher
from services.ingest.settings import IngestSettings
from shared.events import AGREEMENT, ANNOUNCEMENT, EVENT_ADAPTER, AgreementData, AnnouncementData
from shared.http import (
    ApiKeys,
    ErrorItem,
    Problem,
    health_router,
    install_request_metrics,
    problem,
    problem_responses,
    unauthorized,
)
from shared.metrics import INGEST_EVENTS, STAGE_SECONDS

REF = "#/components/schemas/{model}"
ERROR_STATUSES = (400, 401, 413, 415, 422, 503)
# content codings a request body may have (RFC 9110 §8.4.1); "x-gzip" is gzip (§8.4.1.3).
# br and zstd would need a package this project does not pin.
SUPPORTED_CODINGS = ("gzip", "deflate", "identity")
_CODING_ALIASES = {"x-gzip": "gzip"}

ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Accepted: the broker acknowledged every event",
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["accepted", "ids"],
            "properties": {
                "accepted": {"type": "integer"},
                "ids": {"type": "array", "items": {"type": "string"}},
            },
        }}},
    },
    **problem_responses(*ERROR_STATUSES),
}


# documents the Bearer scheme in OpenAPI; the key itself is checked by ApiKeys
BEARER = HTTPBearer(auto_error=False, description="one of ANTING_API_KEYS, when set")


class _Unauthorized(Exception):
    pass


class _LeanRoute(Route):
    """A plain Starlette route, matched before FastAPI's own routes: the event endpoints
    take the raw request and answer with a ready ``Response``, so FastAPI's dependency
    solving, request and response wrapping (a third of the CPU of a single-event POST)
    is skipped. The FastAPI routes of the same paths stay, for OpenAPI only.
    ``scope["route"]`` is set as FastAPI does, for the request metrics' route label."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


def _too_large(detail: str) -> Problem:
    return Problem(413, detail, [ErrorItem("$", "body too large", "too_large")])


def content_coding(value: str) -> str | None:
    """The one content coding of a request (``gzip`` or ``deflate``) from its
    ``Content-Encoding`` header (several lines joined by commas), None for ``identity``;
    raises :class:`Problem` 415 — naming the supported codings, with an
    ``Accept-Encoding`` header — for any other coding or for more than one."""
    codings = [c.strip().lower() for c in value.split(",")]
    codings = [_CODING_ALIASES.get(c, c) for c in codings if c and c != "identity"]
    unsupported = [c for c in codings if c not in SUPPORTED_CODINGS]
    if unsupported or len(codings) > 1:
        what = (f"content coding {unsupported[0]!r} is not supported" if unsupported
                else f"the body has {len(codings)} content codings; at most one is supported")
        raise Problem(
            415, f"{what}; the supported content codings are gzip, deflate and identity "
            "(uncompressed)",
            [ErrorItem("header.content-encoding", "unsupported content coding",
                       "content_encoding")],
            headers={"Accept-Encoding": ", ".join(SUPPORTED_CODINGS)},
            extensions={"supported_encodings": list(SUPPORTED_CODINGS)},
        )
    return codings[0] if codings else None


def _zlib_header(data: bytes) -> bool:
    """Whether ``data`` starts with a zlib (RFC 1950) header: deflate with a window of
    at most 32 KiB and the check bits right."""
    return data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0


class Inflater:
    """A gzip or deflate body decoded as it arrives, never more than ``limit`` + 1 decoded
    bytes: a small body that inflates past the limit (a zip bomb) raises 413 as soon as
    it does. ``deflate`` is the zlib format (RFC 9110 §8.4.1.2) or, as some clients send
    it, raw deflate; gzip may have several members (RFC 1952). Bytes that are not of the
    declared coding raise :class:`Problem` 400."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding, self.limit = coding, limit
        self.parts: list[bytes] = []
        self.size = 0
        self._head = b""  # the first byte, until the second tells zlib from raw deflate
        self._d: Any = None

    def _mismatch(self, why: str) -> Problem:
        return Problem(400, f"the body is not {self.coding} data, though Content-Encoding "
                       f"says {self.coding}: {why}; send the body {self.coding}-compressed "
                       "or without that header",
                       [ErrorItem("header.content-encoding", why, "content_encoding")])

    def _new(self, data: bytes) -> Any:
        if self.coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> None:
        """Decode the next bytes of the body."""
        if self._d is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._d = self._new(data)
        while data:
            if self._d.eof:
                if self.coding != "gzip":
                    raise self._mismatch("bytes after the end of the compressed data")
                self._d = self._new(data)  # the next gzip member
            try:
                out = self._d.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise self._mismatch(str(exc)) from None
            self.size += len(out)
            if self.size > self.limit:
                raise _too_large(f"the body decodes to more than the limit of {self.limit} "
                                 "bytes")
            self.parts.append(out)
            data = self._d.unused_data if self._d.eof else self._d.unconsumed_tail

    def finish(self) -> bytes:
        """The decoded body; 400 when the compressed data stops short."""
        if self._d is None and not self._head:
            return b""
        if self._d is None or not self._d.eof:  # (one byte is never a whole stream)
            raise self._mismatch("the compressed data ends early (truncated)")
        return b"".join(self.parts)


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON Schemas of the request bodies and their shared definitions."""
    defs: dict[str, Any] = {}
    bodies: dict[str, Any] = {}
    for name, schema in (
        ("CloudEvent", EVENT_ADAPTER.json_schema(ref_template=REF)),
        ("AnnouncementData", AnnouncementData.model_json_schema(ref_template=REF)),
        ("AgreementData", AgreementData.model_json_schema(ref_template=REF)),
    ):
        defs.update(schema.pop("$defs", {}))
        bodies[name] = schema
    return bodies, defs


def create_app(settings: IngestSettings, publisher: Publisher) -> FastAPI:
    """The ingest HTTP app on ``publisher`` (which the caller starts and stops)."""
    keys = ApiKeys.parse(settings.api_keys)
    limit = settings.max_body_bytes
    bodies, defs = _schemas()
    event_ref = {"$ref": "#/components/schemas/CloudEvent"}
    app = FastAPI(
        title="Anting ingest",
        version="1.0.0",
        description=(
            "Publish conference announcements and agreement signings (CloudEvents 1.0) "
            "into Kafka. A 202 means the broker acknowledged every event. A rejected "
            "request publishes nothing: in a batch, one invalid item rejects the whole "
            "request and the problem lists every rejected item with its index. Bodies "
            "may be sent with Content-Encoding gzip or deflate (415 for other codings); "
            "the size limit applies to the decoded body too."
        ),
    )
    install_request_metrics(app, "ingest")
    app.include_router(health_router(publisher.ready))

    # async: a sync dependency would cost a thread hand-off on every request
    async def require_key(
        request: Request,
        _cred: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        if keys.enabled and not keys.allows(request.headers.get("authorization")):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    async def _on_unauthorized(request: Request, exc: _Unauthorized) -> Response:
        return unauthorized(request.headers.get("authorization"))

    def lean(path: str, endpoint: Any) -> None:
        """Serve ``path`` by ``endpoint`` on a :class:`_LeanRoute`, with the API key
        checked here instead of by the FastAPI dependency."""
        async def checked(request: Request) -> Response:
            if keys.enabled and not keys.allows(request.headers.get("authorization")):
                return unauthorized(request.headers.get("authorization"))
            response: Response = await endpoint(request)
            return response

        app.router.routes.insert(0, _LeanRoute(path, checked, methods=["POST"],
                                               name=getattr(endpoint, "__name__", None)))

    async def read_body(request: Request) -> bytes:
        # one pass over the raw headers (ASGI names are lower-case) finds both, in less
        # time than one request.headers.get: a plain body pays nothing for the coding
        declared = encoding = None
        for name, value in request.scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == b"content-encoding":
                encoding = value if encoding is None else encoding + b"," + value
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(f"the body is {declared.decode()} bytes; the limit is {limit}")
        if encoding is not None:
            coding = content_coding(encoding.decode("latin-1"))
            if coding is not None:
                return await read_encoded(request, coding)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # stop reading at once: the rest is never buffered
                raise _too_large(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_encoded(request: Request, coding: str) -> bytes:
        """The body decoded as it arrives: the limit holds for the bytes received and for
        the decoded ones, and decoding stops as soon as either is crossed."""
        inflater = Inflater(coding, limit)
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(f"the body exceeds the limit of {limit} bytes")
            inflater.feed(chunk)
        return inflater.finish()

    async def accept(events: list[Any], traceparent: str | None, started: float) -> Response:
        records = codec.to_records(events, settings, traceparent)
        try:
            await publisher.publish(records)
        except BrokerUnavailable as exc:
            return problem(503, f"the broker is unavailable; nothing is known to be "
                           f"published, retry later ({exc})",
                           errors=[{"path": "$", "message": "broker unavailable",
                             "type": "unavailable"}],
                           headers={"Retry-After": "1"})
        elapsed = time.perf_counter() - started
        stage = STAGE_SECONDS.labels("ingest")
        by_type: dict[str, int] = {}
        for e in events:
            by_type[e.type] = by_type.get(e.type, 0) + 1
            stage.observe(elapsed)
        for t, n in by_type.items():
            INGEST_EVENTS.labels(t, "accepted").inc(n)
        ids = [e.id for e in events]
        return Response(
            b'{"accepted":%d,"ids":' % len(ids) + orjson.dumps(ids) + b"}",
            status_code=202, media_type="application/json",
        )

    def rejected(exc: Problem) -> Response:
        if isinstance(exc, Rejection):
            counts: dict[str, int] = {}
            for t in exc.rejected_types:
                counts[t] = counts.get(t, 0) + 1
            for t, n in counts.items():
                INGEST_EVENTS.labels(t, "rejected").inc(n)
        return exc.response()

    @app.post(
        "/v1/events",
        status_code=202,
        summary="Publish CloudEvents: one, a JSON array, or NDJSON",
        response_class=Response,
        responses=ACCEPTED,
        dependencies=[Depends(require_key)],
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"oneOf": [
                event_ref, {"type": "array", "items": event_ref, "minItems": 1}]}},
            "application/cloudevents+json": {"schema": event_ref},
            "application/cloudevents-batch+json": {
                "schema": {"type": "array", "items": event_ref, "minItems": 1}},
            "application/x-ndjson": {"schema": {
                "type": "string", "description": "one CloudEvent JSON object per line"}},
        }}},
    )
    async def post_events(request: Request) -> Response:
        started = time.perf_counter()
        try:
            events = codec.decode_events(await read_body(request),
                                            request.headers.get("content-type"))
            return await accept(events, request.headers.get("traceparent"), started)
        except Problem as exc:
            return rejected(exc)

    lean("/v1/events", post_events)

    def data_route(path: str, event_type: str, schema_name: str, what: str) -> None:
        @app.post(
            path,
            status_code=202,
            summary=f"Publish {what} from a bare data object (the server fills id, time, "
            "source, type)",
            response_class=Response,
            responses=ACCEPTED,
            dependencies=[Depends(require_key)],
            openapi_extra={
                "parameters": [{
                    "name": "subject", "in": "query", "required": False,
                    "schema": {"type": "string"},
                    "description": "the CloudEvent subject (also the Kafka key)",
                }],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}},
            },
            name=f"post_{schema_name}",
        )
        async def post_data(request: Request) -> Response:
            started = time.perf_counter()
            try:
                event = codec.decode_data(
                    await read_body(request), request.headers.get("content-type"),
                    event_type, source=settings.source,
                    subject=request.query_params.get("subject") or None,
                )
                return await accept([event], request.headers.get("traceparent"), started)
            except Problem as exc:
                return rejected(exc)

        lean(path, post_data)

    data_route("/v1/announcements", ANNOUNCEMENT, "AnnouncementData", "an announcement")
    data_route("/v1/agreements", AGREEMENT, "AgreementData", "an agreement signing")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs)
            schemas.update(bodies)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
