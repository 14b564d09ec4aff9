"""The HTTP entry point of ingest (FastAPI): translate a request into events, hand them
to the publisher, answer 202 once the broker acknowledged every record.

The endpoints are defined here, at module level, on :data:`router`, one route each;
:func:`create_app` only wires them to a publisher and settings (kept as
``app.state.ingest``). Each route is a :class:`RequestRoute`: a FastAPI route in every
way (OpenAPI, route-level dependencies such as the API key, the metrics' route label)
except that its endpoint is called straight with the request, without FastAPI's
parameter solving, which cost as much CPU as the rest of a single-event POST.

The body is read here, not by FastAPI, so that the size limit is enforced while
reading (413 as soon as it is crossed) and JSON is parsed once, by the codec. A body
sent with ``Content-Encoding: gzip`` or ``deflate`` is decoded as it arrives, the limit
applying to the decoded bytes too; other codings get 415 (RFC 9110 §15.5.16).
"""

from __future__ import annotations

import functools
import inspect
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.routing import request_response

from services.ingest.codec import Rejection, decode_data, decode_events, to_records
from services.ingest.documents import decode_document, document_record
from services.ingest.publisher import BrokerUnavailable, Publisher, RecordRefused
from services.ingest.settings import IngestSettings
from shared import tracing
from shared.access import EVENTS_PUBLISH
from shared.events import (
    AGREEMENT,
    ANNOUNCEMENT,
    EVENT_ADAPTER,
    MAX_SAFE_INTEGER,
    AgreementData,
    AnnouncementData,
)
from shared.http import (
    ErrorItem,
    Problem,
    health_router,
    install_request_metrics,
    openapi_as_served,
    problem_responses,
    require_scope,
    serve_asyncapi,
    use_api_keys,
)
from shared.metrics import INGEST_EVENTS, STAGE_SECONDS

__all__ = [
    "ACCEPTED",
    "ERROR_STATUSES",
    "SUPPORTED_CODINGS",
    "Inflater",
    "IngestState",
    "RequestRoute",
    "content_coding",
    "create_app",
    "openapi_schema",
    "post_agreement",
    "post_announcement",
    "post_document",
    "post_events",
    "read_body",
    "router",
]

REF = "#/components/schemas/{model}"
ERROR_STATUSES = (400, 401, 403, 413, 415, 422, 429, 503)
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

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RequestRoute(APIRoute):
    """A FastAPI route whose endpoint takes the :class:`Request` alone and returns a
    :class:`Response`, and is called straight with it, as Starlette calls a route's
    endpoint: FastAPI's per-request solving of parameters and dependencies, its response
    validation and the exit stacks of dependencies with ``yield`` are left out (they were
    as much CPU as all the rest of a single-event POST). Everything else is FastAPI's:
    OpenAPI from the declaration (``openapi_extra`` declares the body, which the endpoint
    reads itself), 405 for another method, ``scope["route"]`` for the metrics' label.

    The route's own ``dependencies`` (``dependencies=[Depends(f)]``) still run, before
    the endpoint, in order, as ``await f(request)``: each must be an async function
    whose only required parameter is the request (any others are there for OpenAPI,
    like :func:`shared.http.require_api_key`'s Bearer scheme, and are not solved), and
    what it raises is answered by the app's exception handlers. ``app.dependency_overrides``
    does not apply. The endpoint's docstring is for its readers: only ``description=``
    goes into OpenAPI. Raises :class:`TypeError` at definition for an endpoint with any
    parameter other than the request, or a dependency that is not async (a dependency
    with ``yield`` among them)."""

    def __init__(self, path: str, endpoint: Callable[..., Any],
                 **kwargs: Any) -> None:  # Any: APIRoute's own keyword arguments, passed on
        super().__init__(path, endpoint, **kwargs)
        if not kwargs.get("description"):
            self.description = ""  # not the docstring
        # Starlette's wrapper, not FastAPI's: no exit stacks, which only dependencies
        # with yield need, and those are refused below
        self.app = request_response(self.get_route_handler())
        d = self.dependant
        params = [*d.path_params, *d.query_params, *d.header_params, *d.cookie_params,
                  *d.body_params]
        if params or d.request_param_name is None or len(d.dependencies) != len(self.dependencies):
            raise TypeError(f"{self.name}: a RequestRoute endpoint takes the Request alone")
        for dep in self.dependencies:
            if not inspect.iscoroutinefunction(dep.dependency):
                raise TypeError(f"{self.name}: dependency {dep.dependency!r} is not async")

    def get_route_handler(self) -> Endpoint:
        """The endpoint, after the route's dependencies, called with the request."""
        endpoint: Endpoint = self.endpoint
        checks = tuple(dep.dependency for dep in self.dependencies)

        async def handle(request: Request) -> Response:
            for check in checks:
                await check(request)  # type: ignore[misc]
            return await endpoint(request)

        return handle


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
    bytes: a small body that inflates past the limit (a zip bomb) raises :class:`Problem`
    413 as soon as it does. ``deflate`` is the zlib format (RFC 9110 §8.4.1.2) or, as
    some clients send it, raw deflate; gzip may have several members (RFC 1952). Bytes
    that are not of the declared coding raise :class:`Problem` 400."""

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
        """The decoded body; :class:`Problem` 400 when the compressed data stops short."""
        if self._d is None and not self._head:
            return b""
        if self._d is None or not self._d.eof:  # (one byte is never a whole stream)
            raise self._mismatch("the compressed data ends early (truncated)")
        return b"".join(self.parts)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, decoded from its content coding, at most ``limit`` bytes both
    as received and as decoded. Raises :class:`Problem` 413 as soon as the limit is
    crossed (at once when ``Content-Length`` says so; the rest is never read), 415 for a
    content coding other than gzip, deflate and identity (:func:`content_coding`), 400
    for bytes that are not of their declared coding (:class:`Inflater`)."""
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
            return await _read_encoded(request, coding, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # stop reading at once: the rest is never buffered
            raise _too_large(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_encoded(request: Request, coding: str, limit: int) -> bytes:
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


@dataclass(frozen=True, slots=True)
class IngestState:
    """What the endpoints work with, kept as ``app.state.ingest`` by :func:`create_app`:
    the settings, the publisher of events and the one of documents (which the caller of
    ``create_app`` starts and stops; documents go through ``publisher`` when it has none)."""

    settings: IngestSettings
    publisher: Publisher
    documents: Publisher | None = None


def _state(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state


async def _accept(state: IngestState, events: list[Any], traceparent: str | None,
                  started: float) -> Response:
    """Publish ``events`` and answer 202 ``{"accepted": n, "ids": [...]}`` once the broker
    acknowledged them all, or 503 (``Retry-After: 1``) when it did not in time; raises
    :class:`Rejection` for an event that cannot be a record (see
    :func:`~services.ingest.codec.to_records`)."""
    records = to_records(events, state.settings, traceparent)
    try:
        await state.publisher.publish(records)
    except BrokerUnavailable as exc:
        return Problem(503, f"the broker is unavailable; nothing is known to be published, "
                       f"retry later ({exc})",
                       [ErrorItem("$", "broker unavailable", "unavailable")],
                       headers={"Retry-After": "1"}).response()
    except RecordRefused as exc:
        where = f"[{exc.index}]" if len(events) > 1 else "$"
        return Problem(413, f"{exc}; sending it again will not help",
                       [ErrorItem(where, "refused by the broker", "too_large")]).response()
    elapsed = time.perf_counter() - started
    stage = STAGE_SECONDS.labels("ingest")
    # the request's trace, when traced: a slow bucket links to it
    traced = tracing.exemplar() if tracing.tracer("ingest") is not None else None
    by_type: dict[str, int] = {}
    for e in events:
        by_type[e.type] = by_type.get(e.type, 0) + 1
        stage.observe(elapsed, traced)
    for t, n in by_type.items():
        INGEST_EVENTS.labels(t, "accepted").inc(n)
    ids = [e.id for e in events]
    return Response(
        b'{"accepted":%d,"ids":' % len(ids) + orjson.dumps(ids) + b"}",
        status_code=202, media_type="application/json",
    )


def _refused(problem: Problem) -> Response:
    """The problem's response; the events a :class:`Rejection` names count as rejected."""
    if isinstance(problem, Rejection):
        counts: dict[str, int] = {}
        for t in problem.rejected_types:
            counts[t] = counts.get(t, 0) + 1
        for t, n in counts.items():
            INGEST_EVENTS.labels(t, "rejected").inc(n)
    return problem.response()


router = APIRouter(route_class=RequestRoute)
# a key with events:publish (401 without a key, 403 with another), each tenant key counted
# against ANTING_RATE_LIMIT (429)
AUTH = [Depends(require_scope(EVENTS_PUBLISH, limited=True))]


@router.post(
    "/v1/events",
    status_code=202,
    summary="Publish CloudEvents: one, a JSON array, or NDJSON",
    response_class=Response,
    responses=ACCEPTED,
    dependencies=AUTH,
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/CloudEvent"},
            {"type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"},
             "minItems": 1}]}},
        "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
        "application/cloudevents-batch+json": {"schema": {
            "type": "array", "items": {"$ref": "#/components/schemas/CloudEvent"},
            "minItems": 1}},
        # a sequential media type: its schema is that of one line (as OpenAPI 3.2's
        # itemSchema says it); a single CloudEvent object is a one-line NDJSON body
        "application/x-ndjson": {"schema": {
            "$ref": "#/components/schemas/CloudEvent",
            "description": "one CloudEvent JSON object per line"}},
    }}},
)
async def post_events(request: Request) -> Response:
    """``POST /v1/events``: one CloudEvent, a JSON array of them, or NDJSON
    (:func:`~services.ingest.codec.decode_events`), all published or none: 202 with
    their ids, else the problem (400, 413, 415, 422, 503)."""
    started = time.perf_counter()
    state = _state(request)
    try:
        events = decode_events(await read_body(request, state.settings.max_body_bytes),
                               request.headers.get("content-type"))
        return await _accept(state, events, request.headers.get("traceparent"), started)
    except Problem as exc:
        return _refused(exc)


def _data_route(schema_name: str, what: str) -> dict[str, Any]:
    """The route options of a bare-data endpoint whose body is ``schema_name``."""
    return {
        "status_code": 202,
        "summary": f"Publish {what} from a bare data object (the server fills id, time, "
        "source, type)",
        "response_class": Response,
        "responses": ACCEPTED,
        "dependencies": AUTH,
        "openapi_extra": {
            "parameters": [{
                "name": "subject", "in": "query", "required": False,
                "schema": {"type": "string"},
                "description": "the CloudEvent subject (also the Kafka key)",
            }],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{schema_name}"}}}},
        },
        "name": f"post_{schema_name}",
    }


async def _post_data(request: Request, event_type: str) -> Response:
    started = time.perf_counter()
    state = _state(request)
    try:
        event = decode_data(
            await read_body(request, state.settings.max_body_bytes),
            request.headers.get("content-type"), event_type, source=state.settings.source,
            subject=request.query_params.get("subject") or None,
        )
        return await _accept(state, [event], request.headers.get("traceparent"), started)
    except Problem as exc:
        return _refused(exc)


@router.post("/v1/announcements", **_data_route("AnnouncementData", "an announcement"))
async def post_announcement(request: Request) -> Response:
    """``POST /v1/announcements[?subject=]``: an announcement's bare ``data`` object,
    made a whole event (:func:`~services.ingest.codec.decode_data`) and published: 202
    with its new id, else the problem (400, 413, 415, 422, 503)."""
    return await _post_data(request, ANNOUNCEMENT)


@router.post("/v1/agreements", **_data_route("AgreementData", "an agreement signing"))
async def post_agreement(request: Request) -> Response:
    """``POST /v1/agreements[?subject=]``: as :func:`post_announcement`, for an agreement
    signing."""
    return await _post_data(request, AGREEMENT)


DOCUMENT_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Accepted: the broker acknowledged the document",
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["accepted", "ids", "id", "source", "characters"],
            "properties": {
                "accepted": {"type": "integer", "const": 1},
                "ids": {"type": "array", "items": {"type": "string"}},
                "id": {"type": "string", "description": "the document id"},
                "source": {"type": "string", "description": "the document's source"},
                "characters": {"type": "integer",
                               "description": "code points of the text published (what "
                               "mention offsets count in)"},
                "title": {"type": "string", "description": "an HTML page's title"},
                "dropped": {"type": "object", "additionalProperties": {"type": "integer"},
                            "description": "HTML elements removed with their content, "
                            "by name (script, style...)"},
            },
        }}},
    },
    **problem_responses(*ERROR_STATUSES),
}


# a name or URI of the contract: a visible character, no control character (or empty: the default)
_VISIBLE_LINE = "^([^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*)?$"


def _default_source(request: Request, settings: IngestSettings) -> str:
    """The source of a document posted without ``?source=``: ``ANTING_INGEST_SOURCE``
    (``/anting/ingest``), under the tenant's name for a tenant's key
    (``/anting/ingest/acme``), so that two tenants' documents never share an identity."""
    keys = getattr(request.app.state, "api_keys", None)
    if keys is None or not keys.enabled:
        return settings.source
    principal = keys.principal(request.headers.get("authorization"))
    if principal is None or principal.admin:
        return settings.source
    return f"{settings.source.rstrip('/')}/{principal.tenant}"


@router.post(
    "/v1/documents",
    status_code=202,
    summary="Publish an article: plain text, Markdown or HTML (reduced to its text)",
    response_class=Response,
    responses=DOCUMENT_ACCEPTED,
    dependencies=AUTH,
    openapi_extra={
        "parameters": [
            {"name": "id", "in": "query", "required": False,
             "schema": {"type": "string", "maxLength": 256, "pattern": _VISIBLE_LINE},
             "description": "the document id (default: doc- and a SHA-256 of its text)"},
            {"name": "source", "in": "query", "required": False,
             "schema": {"type": "string", "maxLength": 2048, "pattern": _VISIBLE_LINE},
             "description": "the document's source, a URI reference (default: ingest's "
             "source, under the tenant's name for a tenant's key)"},
        ],
        "requestBody": {"required": True, "content": {
            # no "type": any bytes in the charset are text, so nothing is of a wrong type
            media: {"schema": {"minLength": 1, "description": desc}}
            for media, desc in (
                ("text/plain", "the article's text; charset= in Content-Type, UTF-8 by default"),
                ("text/markdown", "the article in Markdown, kept as written"),
                ("text/html", "an HTML page; scripts, styles and hidden content are dropped, "
                 "each block a paragraph"),
            )}},
    },
)
async def post_document(request: Request) -> Response:
    """``POST /v1/documents[?id=&source=]``: one article, published whole to
    ``documents`` (:func:`~services.ingest.documents.decode_document`): 202 with its id,
    source and length once the broker has it, else the problem (400, 413, 415, 422, 503)."""
    started = time.perf_counter()
    state = _state(request)
    settings = state.settings
    try:
        query = request.query_params
        doc, reduced = decode_document(
            await read_body(request, settings.max_document_body_bytes),
            request.headers.get("content-type"),
            source=query.get("source") or _default_source(request, settings),
            doc_id=query.get("id") or None)
    except Problem as exc:
        INGEST_EVENTS.labels("document", "rejected").inc()
        return exc.response()
    try:
        await (state.documents or state.publisher).publish([document_record(doc, settings)])
    except BrokerUnavailable as exc:
        return Problem(503, f"the broker is unavailable; the document is not known to be "
                       f"published, retry later ({exc})",
                       [ErrorItem("$", "broker unavailable", "unavailable")],
                       headers={"Retry-After": "1"}).response()
    except RecordRefused as exc:
        return Problem(413, f"{exc}; sending it again will not help",
                       [ErrorItem("$", "refused by the broker", "too_large")]).response()
    STAGE_SECONDS.labels("ingest").observe(time.perf_counter() - started)
    INGEST_EVENTS.labels("document", "accepted").inc()
    answer: dict[str, Any] = {"accepted": 1, "ids": [doc.id], "id": doc.id, "source": doc.source,
                              "characters": len(doc.text)}
    if doc.title:
        answer["title"] = doc.title
    if reduced.dropped:
        answer["dropped"] = reduced.dropped
    return Response(orjson.dumps(answer), status_code=202, media_type="application/json")


_SAFE_NUMBER: dict[str, Any] = {"anyOf": [
    {"type": "integer", "minimum": -MAX_SAFE_INTEGER, "maximum": MAX_SAFE_INTEGER},
    {"type": "number", "not": {"type": "integer"}},
]}
# one schema of every type rather than an anyOf of one per type: every JSON value is
# valid, so a tool mutating one branch into another's type does not take it for invalid
_JSON_VALUE: dict[str, Any] = {
    "type": ["string", "boolean", "null", "number", "array", "object"],
    "items": {"$ref": REF.format(model="JsonValue")},
    "additionalProperties": {"$ref": REF.format(model="JsonValue")},
    "description": "any JSON value; its integers must lie within ±(2**53 - 1)",
}
# CloudEvents 1.0 §3.1.3: attribute names (the extensions' among them)
_ATTRIBUTE_NAME = {"pattern": "^[a-z0-9]{1,64}$"}


def _as_checked(doc: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Say in ``doc`` what the codec checks beyond the models' JSON Schemas: a number
    (``figures``, any extra member of a data object) is a safe integer or a fraction
    (:data:`~shared.events.MAX_SAFE_INTEGER`), an extension attribute's name is
    CloudEvents' and the ``subject`` parameter is the events' ``subject``."""
    def visit(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            if node.get("additionalProperties") == {}:
                node["additionalProperties"] = {"$ref": REF.format(model="JsonValue")}
            if node.get("additionalProperties") == {"anyOf": [{"type": "integer"},
                                                               {"type": "number"}]}:
                node["additionalProperties"] = _SAFE_NUMBER
            for value in node.values():
                visit(value)

    visit(schemas)
    schemas["JsonValue"] = _JSON_VALUE
    subject: dict[str, Any] = {}
    for name in ("AnnouncementEvent", "AgreementEvent"):
        schemas[name]["propertyNames"] = _ATTRIBUTE_NAME
        subject = schemas[name]["properties"]["subject"]["anyOf"][0]
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("name") == "subject" and parameter.get("in") == "query":
                    # an empty subject is no subject
                    parameter["schema"] = {"anyOf": [dict(subject), {"type": "string",
                                                                     "maxLength": 0}]}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, made on first use and kept: FastAPI's, with the JSON
    Schemas the request bodies name (``CloudEvent``, ``AnnouncementData``,
    ``AgreementData`` and their definitions) added to ``components.schemas``."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version,
                          description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        bodies: dict[str, Any] = {}
        for name, schema in (
            ("CloudEvent", EVENT_ADAPTER.json_schema(ref_template=REF)),
            ("AnnouncementData", AnnouncementData.model_json_schema(ref_template=REF)),
            ("AgreementData", AgreementData.model_json_schema(ref_template=REF)),
        ):
            schemas.update(schema.pop("$defs", {}))
            bodies[name] = schema
        schemas.update(bodies)
        _as_checked(doc, schemas)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(settings: IngestSettings, publisher: Publisher,
               documents: Publisher | None = None) -> FastAPI:
    """The ingest HTTP app: :data:`router`'s endpoints on ``publisher`` (and ``documents``
    for ``POST /v1/documents``, else ``publisher``; the caller starts and stops both) and
    ``settings``, API keys with ``events:publish`` guarding them
(``ANTING_API_KEYS``, ``ANTING_API_KEYS_FILE``; ``ANTING_RATE_LIMIT`` per tenant key), plus health,
    readiness (``publisher.ready``), metrics and the API docs."""
    app = FastAPI(
        title="Anting ingest",
        version="1.0.0",
        description=(
            "Publish conference announcements and agreement signings (CloudEvents 1.0) "
            "into Kafka, or whole articles (POST /v1/documents) for enrich to read events "
            "out of. A 202 means the broker acknowledged every event. A rejected "
            "request publishes nothing: in a batch, one invalid item rejects the whole "
            "request and the problem lists every rejected item with its index. Bodies "
            "may be sent with Content-Encoding gzip or deflate (415 for other codings); "
            "the size limit applies to the decoded body too."
        ),
        # the event routes themselves, matched first: app.include_router(router) would
        # put them behind the other routes, in an included router matched lazily on
        # every request, which costs a single-event POST about 15% more CPU
        routes=list(router.routes),
    )
    app.state.ingest = IngestState(settings, publisher, documents)
    use_api_keys(app, settings.api_keys, keys_file=settings.api_keys_file or None,
                 rate_limit=settings.rate_limit)
    install_request_metrics(app, "ingest")
    app.include_router(health_router(publisher.ready))
    serve_asyncapi(app, settings)
    app.openapi = functools.partial(openapi_schema, app)  # type: ignore[method-assign]
    openapi_as_served(app)
    tracing.instrument_app(app, "ingest")  # the POST's server span, when tracing is on
    return app
