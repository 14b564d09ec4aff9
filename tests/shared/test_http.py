"""shared.http without a broker: problem details on the wire, media types, and the one
API-key dependency every service's API uses."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import Depends, FastAPI

from shared.http import (
    ErrorItem,
    Problem,
    media_type,
    problem,
    require_api_key,
    use_api_keys,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("application/json", "application/json"),
    ("Application/CloudEvents+JSON; charset=utf-8", "application/cloudevents+json"),
    ("  text/plain ;q=1", "text/plain"),
    ("", ""),
    (None, ""),
])
def test_media_type(value: str | None, expected: str) -> None:
    """The media type of a Content-Type value: lower-case, parameters and blanks gone."""
    assert media_type(value) == expected


def test_problem_is_built_whole_and_sent_as_rfc9457() -> None:
    """Members in RFC 9457's order, then errors, then the extensions; typed errors
    without a type have only path and message; headers go on the response."""
    p = Problem(415, "no such coding",
                [ErrorItem("header.content-encoding", "unsupported", "content_encoding"),
                 ErrorItem("$", "untyped")],
                headers={"Accept-Encoding": "gzip"}, extensions={"supported_encodings": ["gzip"]})
    resp = p.response()
    assert resp.status_code == 415
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["accept-encoding"] == "gzip"
    assert resp.body == (
        b'{"type":"about:blank","title":"Unsupported media type","status":415,'
        b'"detail":"no such coding","errors":[{"path":"header.content-encoding",'
        b'"message":"unsupported","type":"content_encoding"},{"path":"$","message":"untyped"}],'
        b'"supported_encodings":["gzip"]}'
    )
    assert p.to_json() == orjson.loads(resp.body)
    assert str(p) == "no such coding"


def test_problem_function_and_class_agree() -> None:
    """problem() with plain dicts answers the same bytes as Problem with ErrorItems."""
    errors: list[dict[str, Any]] = [{"path": "a.b", "message": "wrong", "type": "t"}]
    typed = Problem(422, "invalid", ErrorItem.of(errors), extensions={"x": 1}).response()
    plain = problem(422, "invalid", errors=errors, x=1)
    assert typed.body == plain.body and typed.status_code == plain.status_code


def test_unauthorized_tells_missing_from_wrong() -> None:
    missing = Problem.unauthorized(None)
    wrong = Problem.unauthorized("Bearer nope")
    assert missing.status == wrong.status == 401
    assert missing.detail.startswith("missing API key") and wrong.detail == "wrong API key"
    assert missing.headers == {"WWW-Authenticate": "Bearer"}
    assert [e.path for e in wrong.errors] == ["header.authorization"]


def _app(keys: str | None, *, install: bool = True) -> FastAPI:
    app = FastAPI()
    if install:
        use_api_keys(app, keys)

    @app.get("/v1/thing", dependencies=[Depends(require_api_key)])
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    return app


async def _get(app: FastAPI, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get("/v1/thing", headers=headers)


async def test_require_api_key_guards_with_the_apps_keys() -> None:
    """Bearer with one of the keys passes; none or another key is the 401 problem."""
    app = _app(" alpha, beta ,")
    assert (await _get(app, {"authorization": "Bearer beta"})).status_code == 200
    assert (await _get(app, {"authorization": "bearer alpha"})).status_code == 200
    for headers in (None, {"authorization": "Bearer gamma"}, {"authorization": "Basic alpha"}):
        resp = await _get(app, headers)
        assert resp.status_code == 401
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["errors"][0]["path"] == "header.authorization"


async def test_no_keys_lets_everything_through_and_openapi_names_the_scheme() -> None:
    app = _app("")
    assert (await _get(app)).status_code == 200
    doc = app.openapi()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert doc["paths"]["/v1/thing"]["get"]["security"] == [{"HTTPBearer": []}]


async def test_an_app_without_keys_installed_fails_closed() -> None:
    """Forgetting use_api_keys is a server error, never an open door."""
    assert (await _get(_app("k", install=False))).status_code == 500
