"""The HTTP entry point of ingest (FastAPI): translate a request into events, hand them
to the publisher, answer 202 once the broker acknowledged every record.

The body is read here, not by FastAPI, so that the size limit is enforced while
reading (413 as soon as it is crossed) and JSON is parsed once, with orjson.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Match, Route
from starlette.types import Scope

from services.ingest import handlers
from services.ingest.handlers import Problem
from services.ingest.publisher import BrokerUnavailable, Publisher
from services.ingest.settings import IngestSettings
from shared.events import AGREEMENT, ANNOUNCEMENT, EVENT_ADAPTER, AgreementData, AnnouncementData
from shared.http import (
    ApiKeys,
    health_router,
    install_request_metrics,
    problem,
    problem_responses,
    unauthorized,
)
from shared.metrics import INGEST_EVENTS, STAGE_SECONDS

REF = "#/components/schemas/{model}"
ERROR_STATUSES = (400, 401, 413, 415, 422, 503)

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
            "request and the problem lists every rejected item with its index."
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
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise Problem(413, f"the body is {declared} bytes; the limit is {limit}",
                          [{"path": "$", "message": "body too large", "type": "too_large"}])
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # stop reading at once: the rest is never buffered
                raise Problem(413, f"the body exceeds the limit of {limit} bytes",
                              [{"path": "$", "message": "body too large", "type": "too_large"}])
            chunks.append(chunk)
        return b"".join(chunks)

    async def accept(events: list[Any], traceparent: str | None, started: float) -> Response:
        records = handlers.to_records(events, settings, traceparent)
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
        counts: dict[str, int] = {}
        for t in exc.rejected_types:
            counts[t] = counts.get(t, 0) + 1
        for t, n in counts.items():
            INGEST_EVENTS.labels(t, "rejected").inc(n)
        return problem(exc.status, exc.detail, errors=exc.errors, **exc.extra)

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
            events = handlers.decode_events(await read_body(request),
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
                event = handlers.decode_data(
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
