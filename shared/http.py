"""What every Anting HTTP surface shares: RFC 9457 problem responses, health and
metrics endpoints, API-key checking, request-latency metrics and API docs that
load nothing from the internet (FastAPI).
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import fastapi_offline
import orjson
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.metrics import HTTP_REQUEST_SECONDS, render

PROBLEM_JSON = "application/problem+json"

TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    404: "Not found",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Validation failed",
    503: "Service unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    errors: Sequence[dict[str, Any]] = (),
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """An RFC 9457 ``application/problem+json`` response with an ``errors`` list."""
    body = {
        "type": type_,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "errors": list(errors),
        **extra,
    }
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


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


class ApiKeys:
    """``Authorization: Bearer <key>`` against ``ANTING_API_KEYS``, compared in constant time."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [k.encode() for k in keys if k]

    @classmethod
    def parse(cls, csv: str | None) -> ApiKeys:
        return cls([k.strip() for k in (csv or "").split(",")])

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def allows(self, authorization: str | None) -> bool:
        if not self.keys:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self.keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, key)
        return ok


def unauthorized(authorization: str | None = None) -> Response:
    """The 401 problem; ``authorization`` (the header sent) tells missing from wrong."""
    detail = ("missing API key: send 'Authorization: Bearer <key>'"
              if not authorization else "wrong API key")
    return problem(
        401, detail, headers={"WWW-Authenticate": "Bearer"},
        errors=[{"path": "header.authorization", "message": detail, "type": "unauthorized"}],
    )


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
    async def metrics() -> Response:
        body, ctype = render()
        return Response(body, media_type=ctype)

    return router


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
    """What every app adds to itself: :class:`RequestMetrics`, and its API docs
    served locally (:func:`serve_docs_locally`)."""
    app.add_middleware(RequestMetrics, service=service)
    serve_docs_locally(app)


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
