"""The API docs of every service work offline: /docs (Swagger UI) and /redoc load their
scripts, styles and icon from the service itself, never from a CDN."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.enrich.main import create_app as enrich_app
from services.ingest.api import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.notify.api import create_app as notify_app
from services.notify.settings import NotifySettings
from shared.http import DOCS_ASSETS


async def _ready() -> tuple[bool, str]:
    return True, "stub"


def _apps() -> dict[str, FastAPI]:
    """The three services' real apps, on stubs (nothing here is called until a request)."""
    return {
        "ingest": ingest_app(IngestSettings(), SimpleNamespace(ready=_ready)),  # type: ignore[arg-type]
        "enrich": enrich_app(SimpleNamespace()),  # type: ignore[arg-type]
        "notify": notify_app(NotifySettings(), SimpleNamespace(), ready=_ready),  # type: ignore[arg-type]
    }


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


def _references(html: str) -> list[str]:
    """Every URL a docs page loads: src, href and ReDoc's spec-url attributes, and Swagger UI's url."""
    return re.findall(r'(?:src|href|spec-url)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)


@pytest.mark.parametrize("service", ["ingest", "enrich", "notify"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_only_from_the_service(service: str, page: str) -> None:
    """Each docs page names only the service's own paths, and each of them answers 200 with content."""
    async with _client(_apps()[service]) as client:
        resp = await client.get(page)
        assert resp.status_code == 200, resp.text
        refs = _references(resp.text)
        assert any(r.startswith(DOCS_ASSETS) and r.endswith(".js") for r in refs), refs
        outside = [r for r in refs if not r.startswith("/") or r.startswith("//")]
        assert not outside, f"{page} of {service} loads from elsewhere: {outside}"
        for ref in refs:
            got = await client.get(ref)
            assert got.status_code == 200 and got.content, (ref, got.status_code)


async def test_swagger_ui_oauth2_redirect_is_served() -> None:
    """The OAuth2 redirect page Swagger UI points at is still there."""
    app: Any = _apps()["notify"]
    async with _client(app) as client:
        resp = await client.get(app.swagger_ui_oauth2_redirect_url)
    assert resp.status_code == 200 and "oauth2" in resp.text.lower()
