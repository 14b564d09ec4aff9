"""The three services' OpenAPI documents as tools read them, built from the apps
without a broker: valid OpenAPI 3.1 (openapi-spec-validator), every ``$ref`` at the
document's root, security declared only when API keys are configured, FastAPI's 422
documented as the problem+json the apps send, and a 405 naming every method of the path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import httpx
import orjson
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from services.ingest.api import create_app as ingest_app
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from services.insights.api import create_app as insights_app
from services.insights.settings import InsightsSettings
from services.insights.streams import Insights
from services.notify.api import create_app as notify_app
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore
from shared.http import PROBLEM_JSON


class _Unready:
    """What the apps' health router needs of a publisher, and no more."""

    async def ready(self) -> tuple[bool, str]:
        return False, "no broker in this test"


def _ingest(keys: str) -> FastAPI:
    return ingest_app(IngestSettings(api_keys=keys), cast(Publisher, _Unready()))


def _notify(keys: str) -> FastAPI:
    return notify_app(NotifySettings(api_keys=keys), cast(SubscriptionStore, object()))


def _insights(keys: str) -> FastAPI:
    settings = InsightsSettings(api_keys=keys)
    return insights_app(settings, Insights(settings))


APPS: dict[str, Callable[[str], FastAPI]] = {
    "ingest": _ingest, "notify": _notify, "insights": _insights}


def _refs(node: object) -> set[str]:
    if isinstance(node, list):
        return set().union(*map(_refs, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    mapping = node.get("discriminator", {}).get("mapping", {}) if isinstance(
        node.get("discriminator"), dict) else {}
    found |= set(mapping.values())
    return found.union(*map(_refs, node.values())) if node else found


@pytest.mark.parametrize("keys", ["", "k1"])
@pytest.mark.parametrize("name", sorted(APPS))
def test_document_is_valid_and_says_what_the_app_does(name: str, keys: str) -> None:
    """Valid; refs all resolve at the root; security iff keys; 422s as problem+json."""
    doc: dict[str, Any] = APPS[name](keys).openapi()
    validate(orjson.loads(orjson.dumps(doc)))
    text = orjson.dumps(doc).decode()
    assert "$defs" not in text
    schemas = doc.get("components", {}).get("schemas", {})
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref
    operations = [op for item in doc["paths"].values() for op in item.values()]
    guarded = [op for path, item in doc["paths"].items() if path.startswith("/v1/")
               for op in item.values()]
    if keys:
        assert doc["components"]["securitySchemes"]
        assert guarded and all(op.get("security") for op in guarded)
    else:
        assert "securitySchemes" not in doc.get("components", {})
        assert not any("security" in op for op in operations)
    for op in operations:
        for status, response in op["responses"].items():
            if status.startswith("4") or status.startswith("5"):
                assert "application/json" not in response.get("content", {}), (op, status)
    assert "HTTPValidationError" not in schemas


async def test_method_not_allowed_names_every_method_of_the_path() -> None:
    """A path served by a GET and a DELETE route answers PUT with both in ``Allow``."""
    app = _notify("")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://notify") as client:
        r = await client.put("/v1/subscriptions/s1")
    assert r.status_code == 405
    assert r.headers["content-type"] == PROBLEM_JSON
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"DELETE", "GET"}
    assert r.json()["status"] == 405
