"""Each service's routes ask for their scope, built from the apps without a broker: ingest's
publish routes ``events:publish`` (and the rate limit), insights' ``insights:read``,
notify's subscriptions ``subscriptions:manage``; and a subscription or delivery line
written before tenants reads as the admin tenant's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import httpx
import orjson
import pytest
from fastapi import FastAPI

from services.ingest.api import create_app as ingest_app
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from services.insights.api import create_app as insights_app
from services.insights.settings import InsightsSettings
from services.insights.streams import Insights
from services.notify.api import create_app as notify_app
from services.notify.channels import Result
from services.notify.delivery import notification_record
from services.notify.notification import Delivery
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore, decode_subscription
from shared.access import hash_key, new_key
from shared.subscriptions import DeliveryOutcome, DeliveryRecord

PUBLISH, STREAM, READ, MANAGE = new_key(), new_key(), new_key(), new_key()


@pytest.fixture
def keys_file(tmp_path: Path) -> str:
    path = tmp_path / "keys"
    path.write_text(f"{hash_key(PUBLISH)} acme events:publish\n{hash_key(STREAM)} acme stream:read\n"
                    f"{hash_key(READ)} acme insights:read\n{hash_key(MANAGE)} acme subscriptions:manage\n")
    return str(path)


class _Unready:
    async def ready(self) -> tuple[bool, str]:
        return False, "no broker in this test"


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "text/plain"}


async def test_ingest_needs_events_publish_and_limits_each_tenant_key(keys_file: str) -> None:
    settings = IngestSettings(api_keys_file=keys_file, rate_limit="2/minute")
    async with _client(ingest_app(settings, cast(Publisher, _Unready()))) as client:
        for path in ("/v1/events", "/v1/announcements", "/v1/agreements"):
            assert (await client.post(path, content=b"x")).status_code == 401
            refused = await client.post(path, headers=_bearer(STREAM), content=b"x")
            assert refused.status_code == 403 and "events:publish" in refused.json()["detail"]
        # the scope lets the request through (415: text/plain is not an event), then the rate
        codes = [(await client.post("/v1/events", headers=_bearer(PUBLISH), content=b"x")).status_code
                 for _ in range(3)]
        assert codes == [415, 415, 429]
        doc = ingest_app(settings, cast(Publisher, _Unready())).openapi()
        assert {"401", "403", "429"} <= set(doc["paths"]["/v1/events"]["post"]["responses"])


async def test_insights_needs_insights_read(keys_file: str) -> None:
    settings = InsightsSettings(api_keys_file=keys_file)
    async with _client(insights_app(settings, Insights(settings))) as client:
        assert (await client.get("/v1/unresolved")).status_code == 401
        assert (await client.get("/v1/unresolved", headers=_bearer(PUBLISH))).status_code == 403
        # the key passes; the table is not there in this test (503), which is not 401/403
        assert (await client.get("/v1/unresolved", headers=_bearer(READ))).status_code not in (401, 403)


async def test_notify_subscriptions_need_subscriptions_manage(keys_file: str) -> None:
    app = notify_app(NotifySettings(api_keys_file=keys_file), cast(SubscriptionStore, object()))
    async with _client(app) as client:
        for who in (STREAM, PUBLISH, READ):
            assert (await client.get("/v1/subscriptions", headers=_bearer(who))).status_code == 403
        assert (await client.post("/v1/stream-tokens", headers=_bearer(MANAGE))).status_code == 403
        assert (await client.post("/v1/stream-tokens", headers=_bearer(STREAM))).status_code == 200
    paths = app.openapi()["paths"]
    assert {"401", "403", "404", "429"} <= set(paths["/v1/subscriptions/{sub_id}"]["delete"]["responses"])
    assert any(p["name"] == "access_token" for p in paths["/v1/stream"]["get"]["parameters"])


def test_records_written_before_tenants_are_the_admin_tenants() -> None:
    old = {"name": "n", "channel": {"type": "log"}, "id": "sub_1", "created_at": "2026-01-01T00:00:00Z"}
    assert decode_subscription(orjson.dumps(old)).tenant == "admin"
    assert decode_subscription(orjson.dumps({**old, "tenant": "acme"})).tenant == "acme"
    delivery = Delivery("msg_1", "sub_1", [{"id": "e", "source": "/s"}], [[]])
    result = Result("ok", status_code=204)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    line = notification_record(delivery, "log", DeliveryOutcome.delivered, result, at=at, tenant="acme")
    assert DeliveryRecord.model_validate_json(line).tenant == "acme"
    without = notification_record(delivery, "log", DeliveryOutcome.delivered, result, at=at)
    assert b"tenant" not in without and DeliveryRecord.model_validate_json(without).tenant is None
