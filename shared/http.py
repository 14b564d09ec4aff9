"""What every Anting HTTP surface shares: RFC 9457 problem details (:class:`Problem`,
:func:`problem`), the media type of a ``Content-Type``, who may call (API keys with a
tenant and scopes, stream tokens and a rate limit per key, from :mod:`shared.access`, as
the dependencies :func:`require_scope` and :func:`require_api_key`), health and metrics
endpoints, request-latency metrics, CORS, and API docs that load nothing from the
internet (FastAPI).

401 or 403: a request without a key, or with a key the API does not know (or a forged or
expired stream token), is 401 with ``WWW-Authenticate: Bearer``; a known key without the
scope the endpoint needs is 403. Whether something of another tenant exists is never
said: an endpoint answers it as it answers what does not exist (404).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import fastapi_offline
import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.access import ApiKeys, KeyFileError, Principal, RateLimit, StreamTokens, TokenError
from shared.asyncapi import build as build_asyncapi
from shared.events import media_type
from shared.metrics import HTTP_REQUEST_SECONDS, render
from shared.settings import AntingSettings, SettingsError

__all__ = [
    "BEARER",
    "DOCS_ASSETS",
    "PROBLEM_JSON",
    "PROBLEM_SCHEMA",
    "TITLES",
    "ApiKeys",
    "EmbeddedServer",
    "ErrorItem",
    "MoveAccessToken",
    "Principal",
    "Problem",
    "RequestMetrics",
    "allow_every_method",
    "health_router",
    "install_request_metrics",
    "media_type",
    "openapi_as_served",
    "problem",
    "problem_responses",
    "redact_access_token",
    "require_api_key",
    "require_scope",
    "serve_asyncapi",
    "serve_docs_locally",
    "tidy_openapi",
    "use_api_keys",
    "use_cors",
    "use_stream_tokens",
]

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    503: "Service unavailable",
}


@dataclass(frozen=True, slots=True)
class ErrorItem:
    """One entry of a problem's ``errors`` list: ``path`` says where (``$`` for the whole
    body, ``data.headline`` for a field, ``[3].id`` for a batch item's field,
    ``header.authorization`` for a header), ``message`` what is wrong, for a person, and
    ``type`` what kind of error it is, for a program (pydantic's error type, or
    ``json_invalid``, ``too_large``, ``media_type``…); without a ``type`` the entry has
    only ``path`` and ``message`` on the wire."""

    path: str
    message: str
    type: str | None = None

    @classmethod
    def of(cls, entries: Iterable[Mapping[str, str]]) -> list[ErrorItem]:
        """Items from ``{"path", "message"[, "type"]}`` mappings (what
        :func:`shared.events.error_paths` returns)."""
        return [cls(e["path"], e["message"], e.get("type")) for e in entries]

    def to_json(self) -> dict[str, str]:
        """The entry on the wire: ``{"path", "message", "type"}`` (``type`` when set)."""
        if self.type is None:
            return {"path": self.path, "message": self.message}
        return {"path": self.path, "message": self.message, "type": self.type}


def _problem_doc(status: int, detail: str, errors: list[Any], type_: str,
                 extensions: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON object of a problem: RFC 9457's members, ``errors``, then the extensions."""
    return {
        "type": type_,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "errors": errors,
        **extensions,
    }


class Problem(Exception):
    """An RFC 9457 problem, raised where a request is refused and answered as
    ``application/problem+json`` by :meth:`response`, built whole: ``status`` (the HTTP
    status), ``detail`` (what happened and what to do, for a person), ``errors`` (one
    :class:`ErrorItem` per thing wrong), ``headers`` (of the response: ``Retry-After``,
    ``WWW-Authenticate``…) and ``extensions`` (members after ``errors``, JSON values:
    ``rejected``, ``supported_encodings``…). ``type`` is always ``about:blank`` and
    ``title`` the status's, from :data:`TITLES`."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Iterable[ErrorItem] = (),
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors: tuple[ErrorItem, ...] = tuple(errors)
        self.headers: dict[str, str] = dict(headers or {})
        self.extensions: dict[str, Any] = dict(extensions or {})

    @classmethod
    def unauthorized(cls, authorization: str | None) -> Problem:
        """The 401 of a request whose ``Authorization`` header (``authorization``, None
        when missing) holds no accepted API key, with ``WWW-Authenticate: Bearer``."""
        detail = ("missing API key: send 'Authorization: Bearer <key>'"
                  if not authorization else "wrong API key")
        return cls(401, detail, [ErrorItem("header.authorization", detail, "unauthorized")],
                   headers={"WWW-Authenticate": "Bearer"})

    @classmethod
    def forbidden(cls, scope: str) -> Problem:
        """The 403 of a known key without ``scope``."""
        detail = f"this key does not have the scope {scope!r} this endpoint needs"
        return cls(403, detail, [ErrorItem("header.authorization", detail, "forbidden")])

    @classmethod
    def token_refused(cls, why: str) -> Problem:
        """The 401 of a stream token that is forged, malformed or expired (``why``)."""
        return cls(401, why, [ErrorItem("query.access_token", why, "unauthorized")],
                   headers={"WWW-Authenticate": "Bearer"})

    @classmethod
    def too_many(cls, retry_after: float) -> Problem:
        """The 429 of a key over its rate, with ``Retry-After`` (whole seconds)."""
        seconds = str(max(1, int(retry_after)))
        detail = f"too many requests with this key: retry in {seconds} s"
        return cls(429, detail, [ErrorItem("header.authorization", detail, "rate_limited")],
                   headers={"Retry-After": seconds})

    def to_json(self) -> dict[str, Any]:
        """The problem's JSON object, as :meth:`response` sends it."""
        return _problem_doc(self.status, self.detail, [e.to_json() for e in self.errors],
                            "about:blank", self.extensions)

    def response(self) -> Response:
        """The ``application/problem+json`` response, with :attr:`headers`."""
        return Response(orjson.dumps(self.to_json()), status_code=self.status,
                        media_type=PROBLEM_JSON, headers=self.headers or None)


async def _answer_problem(_: Request, exc: Exception) -> Response:
    """The exception handler of :class:`Problem` (see :func:`use_api_keys`)."""
    assert isinstance(exc, Problem)
    return exc.response()


def problem(
    status: int,
    detail: str,
    *,
    errors: Sequence[dict[str, Any]] = (),
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: object,
) -> Response:
    """An RFC 9457 ``application/problem+json`` response with an ``errors`` list given as
    plain dicts (``{"path", "message"}``, as :func:`shared.events.error_paths` returns
    them); ``extra`` are members after ``errors``. :class:`Problem` is the same answer
    as an exception with typed errors."""
    body = _problem_doc(status, detail, list(errors), type_, extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON,
                    headers=headers)


PROBLEM_SCHEMA: dict[str, Any] = {
    "content": {
        PROBLEM_JSON: {
            "schema": {
                "type": "object",
                "required": ["title", "status", "detail", "errors"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                        },
                    },
                },
            }
        }
    }
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting problem+json errors."""
    return {s: {"description": TITLES.get(s, "Error"), **PROBLEM_SCHEMA} for s in statuses}


# documents the Bearer scheme in OpenAPI; the key itself is checked by ApiKeys
BEARER = HTTPBearer(auto_error=False, description=(
    "an API key of ANTING_API_KEYS or ANTING_API_KEYS_FILE, when set; its scopes decide "
    "which endpoints answer (403 otherwise)"))


def use_api_keys(app: FastAPI, keys: str | None, *, keys_file: str | None = None,
                 rate_limit: str | None = None) -> ApiKeys:
    """Guard ``app``'s routes that depend on :func:`require_scope` or
    :func:`require_api_key` with ``keys`` (``ANTING_API_KEYS``: comma-separated admin keys)
    and ``keys_file`` (``ANTING_API_KEYS_FILE``: tenants' keys, see
    :func:`shared.access.parse_keys_file`); with neither, every request is let through.
    ``rate_limit`` (``ANTING_RATE_LIMIT``, e.g. ``100/second``) limits each key on the
    routes that ask for it. Both are kept in ``app.state``; a :class:`Problem` raised by a
    route or dependency is answered as problem+json (the 401, 403 and 429 among them).
    Returns the keys; raises :class:`shared.settings.SettingsError` (one message) for a bad
    or unreadable key file."""
    try:
        app.state.api_keys = api_keys = ApiKeys.load(keys, keys_file)
    except (KeyFileError, OSError) as exc:  # a start-up message, not a traceback
        raise SettingsError(f"bad setting:\n  ANTING_API_KEYS_FILE: {exc}") from None
    app.state.rate_limit = RateLimit(rate_limit)
    app.add_exception_handler(Problem, _answer_problem)
    return api_keys


def _keys_of(request: Request) -> ApiKeys:
    try:
        keys: ApiKeys = request.app.state.api_keys
    except AttributeError:
        raise RuntimeError("an API-key dependency on an app without use_api_keys(app, ...)") from None
    return keys


# async: a sync dependency would cost a thread hand-off on every request
async def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> None:
    """FastAPI dependency (``dependencies=[Depends(require_api_key)]``): the request's
    ``Authorization: Bearer <key>`` names one of the app's keys, whatever its scopes (see
    :func:`use_api_keys`), else :meth:`Problem.unauthorized` (401) is raised. It reads
    the header itself; ``_credentials`` (FastAPI's :data:`BEARER`) is there only so that
    OpenAPI documents the scheme, and may be left out when calling it directly.
    Raises :class:`RuntimeError` when :func:`use_api_keys` was not called on the app."""
    authorization = request.headers.get("authorization")
    if _keys_of(request).principal(authorization) is None:
        raise Problem.unauthorized(authorization)


ScopeCheck = Callable[..., Awaitable[Principal]]


def require_scope(scope: str, *, limited: bool = False, tokens: bool = False) -> ScopeCheck:
    """A FastAPI dependency (``Depends(require_scope("events:publish"))``) giving the
    request's :class:`Principal` when its key holds ``scope``: 401 problem for no or an
    unknown key, 403 for a key without ``scope``. With ``limited`` the key's requests count
    against the app's rate limit (429 with ``Retry-After`` beyond it); admin keys, and
    every request while no key is configured, are not limited. With ``tokens``, a stream
    token taken from the URL's ``access_token`` (see :class:`MoveAccessToken`) is accepted
    instead of a key, for ``stream:read`` alone; a forged or expired one is 401.

    The dependency is async and needs only the request (ingest's ``RequestRoute`` calls it
    as ``await check(request)``). Raises :class:`RuntimeError` when :func:`use_api_keys`
    was not called on the app."""

    async def check(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
    ) -> Principal:
        keys = _keys_of(request)
        authorization = request.headers.get("authorization")
        token = request.scope.get(ACCESS_TOKEN_SCOPE_KEY) if tokens else None
        found: Principal | None
        if token is not None and not authorization and keys.enabled:
            signer: StreamTokens | None = getattr(request.app.state, "stream_tokens", None)
            if signer is None:
                raise RuntimeError("a stream-token dependency on an app without use_stream_tokens")
            try:
                found = signer.verify(token)
            except TokenError as exc:
                raise Problem.token_refused(str(exc)) from None
        else:
            found = keys.principal(authorization)
            if found is None:
                raise Problem.unauthorized(authorization)
        if not found.may(scope):
            raise Problem.forbidden(scope)
        if limited and found.key_id is not None and not found.admin:
            wait = request.app.state.rate_limit.hit(found.key_id)
            if wait is not None:
                raise Problem.too_many(wait)
        return found

    check.__name__ = f"require_{scope.replace(':', '_')}"
    return check


#: Where :class:`MoveAccessToken` puts the ``access_token`` it took out of the query.
ACCESS_TOKEN_SCOPE_KEY = "anting.access_token"
_TOKEN_PARAM = re.compile(rb"(?:^|&)access_token=([^&]*)")
_REDACT = re.compile(r"(access_token=)[^&\s\"']*")


class MoveAccessToken:
    """ASGI middleware: takes ``access_token=...`` out of the request's query string, in
    the scope itself, and keeps it under :data:`ACCESS_TOKEN_SCOPE_KEY` for
    :func:`require_scope` (``tokens=True``). The query string is the one uvicorn's access
    log, request metrics and any tracing read afterwards, so a token in a URL is never
    written anywhere. (Tracing middleware outside this one redacts the parameter itself:
    :func:`shared.tracing.instrument_app`.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query: bytes = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if b"access_token=" in query:
            match = _TOKEN_PARAM.search(query)
            if match is not None:
                from urllib.parse import unquote_to_bytes

                scope[ACCESS_TOKEN_SCOPE_KEY] = unquote_to_bytes(match.group(1)).decode(
                    "utf-8", "replace")
                scope["query_string"] = b"&".join(
                    p for p in query.split(b"&") if p and not p.startswith(b"access_token="))
        await self.app(scope, receive, send)


def redact_access_token(text: str) -> str:
    """``text`` (a URL, a query, a log line) with every ``access_token=`` value replaced by
    ``[redacted]``."""
    return _REDACT.sub(r"\1[redacted]", text) if "access_token=" in text else text


class _RedactAccessLog(logging.Filter):
    """Redacts ``access_token`` in uvicorn's access log lines (whose arguments hold the
    path and query) should the access log be turned on: the query is already cleaned by
    :class:`MoveAccessToken`, this is the second lock."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_access_token(a) if isinstance(a, str) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact_access_token(record.msg)
        return True


def use_stream_tokens(app: FastAPI, tokens: StreamTokens) -> None:
    """Accept ``tokens`` (:class:`shared.access.StreamTokens`) on routes depending on
    ``require_scope(..., tokens=True)``: kept as ``app.state.stream_tokens``; the
    ``access_token`` query parameter is moved out of every request's query string by
    :class:`MoveAccessToken` (the outermost middleware but tracing's), and uvicorn's
    access log redacts it."""
    app.state.stream_tokens = tokens
    app.add_middleware(MoveAccessToken)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactAccessLog) for f in access.filters):
        access.addFilter(_RedactAccessLog())


def use_cors(app: FastAPI, origins: str | None) -> None:
    """Let web pages of ``origins`` (``ANTING_CORS_ORIGINS``: comma-separated, e.g.
    ``https://app.example.com``; ``*`` for any; empty: none, and no middleware) call the
    API from a browser (Starlette's ``CORSMiddleware``): GET and POST, with the headers
    ``Authorization``, ``Content-Type`` and ``Last-Event-ID``; no cookies."""
    allowed = [o.strip() for o in (origins or "").split(",") if o.strip()]
    if not allowed:
        return
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=allowed, allow_credentials=False,
                       allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=["authorization", "content-type", "last-event-id"],
                       max_age=600)


def health_router(ready: Callable[[], Awaitable[tuple[bool, str]]]) -> APIRouter:
    """``/healthz`` (the process answers), ``/readyz`` (``ready()`` says so) and ``/metrics``."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: dependencies (the broker) reachable",
        responses={503: {"description": "not ready"}},
    )
    async def readyz() -> JSONResponse:
        ok, detail = await ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "detail": detail},
                            status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        body, ctype = render(accept=request.headers.get("accept"))
        return Response(body, media_type=ctype)

    return router


def serve_asyncapi(app: FastAPI, settings: AntingSettings) -> None:
    """``GET /asyncapi.json``: the AsyncAPI 3.0 document of the topics
    (:mod:`shared.asyncapi`) for ``settings``' topic prefix and broker, made on first use."""
    made: dict[str, Any] = {}

    @app.get("/asyncapi.json", tags=["operations"], response_class=Response,
             summary="The AsyncAPI 3.0 document of the Kafka topics, for this service's settings",
             responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
    async def asyncapi() -> Response:
        if not made:
            made.update(build_asyncapi(settings.topic_prefix, settings.kafka))
        return Response(orjson.dumps(made), media_type="application/json")


class RequestMetrics:
    """ASGI middleware: ``anting_http_request_duration_seconds{service,method,route,status}``."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            HTTP_REQUEST_SECONDS.labels(
                self.service, scope.get("method", ""), path, str(status)
            ).observe(time.perf_counter() - start)


def install_request_metrics(app: FastAPI, service: str) -> None:
    """What every app adds to itself: :class:`RequestMetrics`, its API docs served
    locally (:func:`serve_docs_locally`) and 405s naming every method of the path
    (:func:`allow_every_method`)."""
    app.add_middleware(RequestMetrics, service=service)
    serve_docs_locally(app)
    allow_every_method(app)


def _methods_of(routes: Iterable[BaseRoute], scope: Scope) -> set[str]:
    """The methods of every route whose path matches ``scope``'s (any method)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches({**scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match is not Match.NONE and route_methods:
            methods |= set(route_methods)
    return methods


def allow_every_method(app: FastAPI) -> None:
    """Answer a 405 as problem+json whose ``Allow`` lists every method of the path:
    Starlette's names only those of the first route of the path, where a path served
    by two routes (``GET`` and ``DELETE`` of one resource) has more. Other HTTP errors
    are FastAPI's answers."""

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        allowed = _methods_of(app.router.routes, request.scope) or {
            m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
        allow = ", ".join(sorted(allowed))
        return problem(405, f"{request.method} is not allowed here; allowed: {allow}",
                       headers={"Allow": allow})

    app.add_exception_handler(StarletteHTTPException, answer)


_DEFS_PREFIX = "#/$defs/"
_COMPONENTS_PREFIX = "#/components/schemas/"
_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _hoist_defs(node: object, schemas: dict[str, Any]) -> None:
    """Move every ``$defs`` under ``node`` into ``schemas`` and point the ``$ref``s (and
    discriminator mappings) at ``#/$defs/X`` to ``#/components/schemas/X``, in place. Raises :class:`ValueError`
    when two definitions of one name differ."""
    if isinstance(node, list):
        for item in node:
            _hoist_defs(item, schemas)
        return
    if not isinstance(node, dict):
        return
    defs = node.pop("$defs", None)
    if isinstance(defs, dict):
        for name, schema in defs.items():
            _hoist_defs(schema, schemas)
            if name in schemas and schemas[name] != schema:
                raise ValueError(f"two different JSON Schemas named {name!r}")
            schemas[name] = schema
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
        node["$ref"] = _COMPONENTS_PREFIX + ref[len(_DEFS_PREFIX):]
    discriminator = node.get("discriminator")
    if isinstance(discriminator, dict) and isinstance(discriminator.get("mapping"), dict):
        mapping: dict[str, object] = discriminator["mapping"]
        for key, target in mapping.items():
            if isinstance(target, str) and target.startswith(_DEFS_PREFIX):
                mapping[key] = _COMPONENTS_PREFIX + target[len(_DEFS_PREFIX):]
    for value in node.values():
        _hoist_defs(value, schemas)


def _refs_in(node: object) -> set[str]:
    """Every ``$ref`` value under ``node``."""
    if isinstance(node, list):
        return set().union(*(_refs_in(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    for value in node.values():
        found |= _refs_in(value)
    return found


def tidy_openapi(doc: dict[str, Any], *, secured: bool) -> dict[str, Any]:
    """``doc`` (an OpenAPI document as FastAPI makes it) made to say what the app does,
    in place, and returned: the ``$defs`` of JSON Schemas pasted into ``openapi_extra``
    hoisted into ``components/schemas`` (their ``$ref``s rewritten), the 422 of a
    parameter FastAPI validates documented as the problem+json the app sends, and,
    unless ``secured`` (API keys configured), no security requirement or scheme."""
    components: dict[str, Any] = doc.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    for name, schema in list(schemas.items()):
        _hoist_defs(schema, schemas)
        schemas[name] = schema
    for path_item in doc.get("paths", {}).values():
        _hoist_defs(path_item, schemas)
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            if not secured:
                operation.pop("security", None)
            invalid = operation.get("responses", {}).get("422")
            ref = (invalid or {}).get("content", {}).get("application/json", {}) \
                .get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                invalid.update({"description": TITLES[422], **PROBLEM_SCHEMA})
    if not secured:
        components.pop("securitySchemes", None)
    used = _refs_in(doc.get("paths", {})) | _refs_in(
        {k: v for k, v in schemas.items() if k not in _VALIDATION_SCHEMAS})
    for name in _VALIDATION_SCHEMAS:
        if _COMPONENTS_PREFIX + name not in used:
            schemas.pop(name, None)
    if not schemas:
        components.pop("schemas")
    if not components:
        doc.pop("components")
    return doc


def openapi_as_served(app: FastAPI) -> None:
    """Make ``app.openapi`` (whatever made the document so far) return it tidied by
    :func:`tidy_openapi`, made on first use and kept: call it last, after
    :func:`use_api_keys`, whose keys say whether the document declares security."""
    make = app.openapi
    done: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not done:
            keys: ApiKeys = app.state.api_keys
            done.update(tidy_openapi(make(), secured=keys.enabled))
            app.openapi_schema = done
        return done

    app.openapi = openapi  # type: ignore[method-assign]


DOCS_ASSETS = "/docs/assets"
_DOCS_FILES = Path(fastapi_offline.__file__).parent / "static"


def serve_docs_locally(app: FastAPI) -> None:
    """Swagger UI at ``app.docs_url`` and ReDoc at ``app.redoc_url`` with their scripts,
    styles and icon served by the app itself under :data:`DOCS_ASSETS` (the files of the
    pinned ``fastapi-offline`` package), in place of FastAPI's pages, which load them
    from a CDN and so stay blank offline. The pages are otherwise FastAPI's own."""
    if not app.openapi_url:
        return
    openapi_url = app.openapi_url
    pages = {app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in pages]
    app.mount(DOCS_ASSETS, StaticFiles(directory=_DOCS_FILES), name="docs-assets")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    if app.docs_url:
        redirect = app.swagger_ui_oauth2_redirect_url

        async def swagger_ui(request: Request) -> HTMLResponse:
            r = root(request)
            return get_swagger_ui_html(
                openapi_url=r + openapi_url, title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=r + redirect if redirect else None,
                init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
                swagger_js_url=f"{r}{DOCS_ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{r}{DOCS_ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{r}{DOCS_ASSETS}/favicon.png",
            )

        app.add_route(app.docs_url, swagger_ui, include_in_schema=False)
        if redirect:

            async def swagger_ui_redirect(_: Request) -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

            app.add_route(redirect, swagger_ui_redirect, include_in_schema=False)
    if app.redoc_url:

        async def redoc(request: Request) -> HTMLResponse:
            r = root(request)
            return get_redoc_html(
                openapi_url=r + openapi_url, title=f"{app.title} - ReDoc",
                redoc_js_url=f"{r}{DOCS_ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{r}{DOCS_ASSETS}/favicon.png", with_google_fonts=False,
            )

        app.add_route(app.redoc_url, redoc, include_in_schema=False)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a service's event loop, without signal handlers of its own:
    ``shared.runtime.run_service`` owns SIGTERM/SIGINT and stops it gracefully."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
