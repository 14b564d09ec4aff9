"""What every Anting HTTP surface shares: RFC 9457 problem responses, health and
metrics endpoints, API-key checking and request-latency metrics (FastAPI).
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import Any

import orjson
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
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
    app.add_middleware(RequestMetrics, service=service)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a service's event loop, without signal handlers of its own:
    ``shared.runtime.run_service`` owns SIGTERM/SIGINT and stops it gracefully."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
