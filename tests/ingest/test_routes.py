"""The ingest endpoints' route class without a broker: one FastAPI route per endpoint,
called straight with the request, its dependencies run, what it cannot run refused."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from services.ingest.api import RequestRoute, create_app, router
from services.ingest.settings import IngestSettings
from shared.http import Problem, use_api_keys


async def _ready() -> tuple[bool, str]:
    return True, "stub"


def test_one_route_per_endpoint_and_docs_from_the_declaration() -> None:
    """Each /v1 path is served by exactly one route, a RequestRoute, also in OpenAPI
    (with the security its configured keys call for)."""
    app = create_app(IngestSettings(api_keys="k1"), SimpleNamespace(ready=_ready))  # type: ignore[arg-type]
    v1 = [r for r in app.routes if getattr(r, "path", "").startswith("/v1/")]
    assert sorted(r.path for r in v1) == ["/v1/agreements", "/v1/announcements", "/v1/documents",
                                          "/v1/events"]
    assert all(isinstance(r, RequestRoute) for r in v1)
    assert {r.path for r in router.routes} == {r.path for r in v1}
    doc = app.openapi()
    events = doc["paths"]["/v1/events"]["post"]
    assert events["operationId"] == "post_events_v1_events_post"
    assert "description" not in events  # the endpoint's docstring is not the API's
    assert events["security"] == [{"HTTPBearer": []}]
    assert "application/x-ndjson" in events["requestBody"]["content"]
    assert {"CloudEvent", "AnnouncementData", "AgreementData"} <= set(doc["components"]["schemas"])


async def test_dependencies_run_before_the_endpoint_and_may_refuse() -> None:
    calls: list[str] = []

    async def first(request: Request) -> None:
        calls.append("first")
        if request.headers.get("x-refuse"):
            raise Problem(403, "refused")

    async def endpoint(request: Request) -> Response:
        calls.append("endpoint")
        return Response(await request.body(), status_code=202)

    r = APIRouter(route_class=RequestRoute)
    r.post("/x", dependencies=[Depends(first)])(endpoint)
    app = FastAPI(routes=list(r.routes))
    use_api_keys(app, None)  # answers a raised Problem
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        ok = await client.post("/x", content=b"body")
        assert (ok.status_code, ok.content, calls) == (202, b"body", ["first", "endpoint"])
        calls.clear()
        refused = await client.post("/x", headers={"x-refuse": "1"})
        assert refused.status_code == 403 and calls == ["first"]
        assert (await client.get("/x")).status_code == 405


def test_what_it_would_not_run_is_refused_at_definition() -> None:
    r = APIRouter(route_class=RequestRoute)

    async def with_query(request: Request, q: str) -> Response:
        return Response()

    with pytest.raises(TypeError, match="Request alone"):
        r.post("/q")(with_query)

    def sync_dependency(request: Request) -> None:
        pass

    async def endpoint(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="not async"):
        r.post("/d", dependencies=[Depends(sync_dependency)])(endpoint)
