"""Tenants on notify's API, on a real broker: a tenant's key never finds another tenant's
subscriptions (property-based: every request tenant B can make, with A's ids and random
ones), scopes (403), stream tokens (401 once expired or forged), the rate limit (429)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from devtools.testing import create_topics
from services.notify.store import SubscriptionStore
from shared.settings import AntingSettings

from .tenancy import Keys, notify_in_thread, write_keys

pytestmark = pytest.mark.kafka

# the operations tenant B may try on an id
OPERATIONS = ("get", "delete", "rotate", "enable", "disable")


def _request(client: httpx.Client, key: dict[str, str], op: str, sub_id: str,
             grace: int | None = None) -> httpx.Response:
    path = f"/v1/subscriptions/{sub_id}"
    if op == "get":
        return client.get(path, headers=key)
    if op == "delete":
        return client.delete(path, headers=key)
    if op == "rotate":
        params = {"grace_seconds": grace} if grace is not None else {}
        return client.post(path + "/rotate-secret", headers=key, params=params)
    return client.post(path + ("/enable" if op == "enable" else "/disable"), headers=key)


def _tenant_a_on_the_topic(base: AntingSettings) -> list[dict[str, Any]]:
    """Tenant acme's subscriptions as a fresh reader of the topic sees them (secrets too)."""

    async def read() -> list[dict[str, Any]]:
        store = SubscriptionStore(base, producer=None)  # type: ignore[arg-type]
        await store.start()
        try:
            return [s.model_dump(mode="json") for s in store.all() if s.tenant == "acme"]
        finally:
            await store.stop()

    return asyncio.run(read())


def test_tenant_b_never_finds_tenant_a(settings: AntingSettings, tmp_path: Path) -> None:
    """Whatever tenant globex asks — list, get, delete, rotate, enable, disable — with acme's
    ids or made-up ones, no answer names acme's ids, URLs or secrets; acme's id is answered exactly
    as an unknown id (404, the same body); acme's subscriptions are unchanged afterwards, on
    the topic too. An admin key sees both tenants."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    # rate limit off: Hypothesis asks faster than a tenant may (the limit has a test below)
    with notify_in_thread(settings, tmp_path / "keys", keys.admin, rate_limit="off") as (url, _), \
            httpx.Client(base_url=url, timeout=20) as client:
        a, b = keys.header(keys.a), keys.header(keys.b)
        secrets: list[str] = []
        for i in range(3):
            r = client.post("/v1/subscriptions", headers=a, json={
                "name": f"acme-{i}", "channel": {"type": "webhook",
                                                 "url": f"https://acme-private-{i}.example.com/hook"}})
            assert r.status_code == 201, r.text
            assert r.json()["tenant"] == "acme"
            secrets.append(r.json()["secret"])
        r = client.post("/v1/subscriptions", headers=a, json={
            "name": "acme-log", "channel": {"type": "log"}})
        assert r.status_code == 201
        a_list = client.get("/v1/subscriptions", headers=a).json()["subscriptions"]
        a_ids = [s["id"] for s in a_list]
        assert len(a_ids) == 4
        before = _tenant_a_on_the_topic(settings)
        assert len(before) == 4
        secret_words = [s.removeprefix("whsec_") for s in secrets]

        def reveals(text: str) -> list[str]:
            return [w for w in [*a_ids, "acme-private", *secret_words] if w in text]

        ids = st.one_of(
            st.sampled_from(a_ids),
            st.builds(lambda h: f"sub_{h}", st.text("0123456789abcdef", min_size=20, max_size=20)),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="/?#%\\"),
                    min_size=1, max_size=30),
        )

        @given(steps=st.lists(st.tuples(st.sampled_from(OPERATIONS), ids,
                                        st.one_of(st.none(), st.integers(0, 3600))),
                              min_size=1, max_size=6),
               create=st.booleans())
        @hypothesis_settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def tenant_b_tries(steps: list[tuple[str, str, int | None]], create: bool) -> None:
            if create:
                made = client.post("/v1/subscriptions", headers=b, json={
                    "name": "globex", "channel": {"type": "webhook", "url": "https://globex.example.com/"}})
                assert made.status_code == 201 and not reveals(made.text)
            listed = client.get("/v1/subscriptions", headers=b)
            assert listed.status_code == 200 and not reveals(listed.text), listed.text
            assert {s["tenant"] for s in listed.json()["subscriptions"]} <= {"globex"}
            for op, sub_id, grace in steps:
                got = _request(client, b, op, sub_id, grace)
                # a 404 names the id asked about, which the asker knew: nothing else
                # the answer may echo the id asked for; only an id of acme's is taken out
                # (a made-up one such as "sub_" would take an acme id's text out with it)
                echoed = got.text.replace(sub_id, "") if sub_id in a_ids else got.text
                assert not reveals(echoed), (op, sub_id, got.text)
                if sub_id in a_ids:
                    # exactly the answer to an id that does not exist, but for the id itself
                    unknown = "sub_" + uuid.uuid4().hex[:20]
                    other = _request(client, b, op, unknown, grace)
                    assert got.status_code == other.status_code == 404, got.text
                    assert got.headers["content-type"] == other.headers["content-type"]
                    assert got.text.replace(sub_id, "ID") == other.text.replace(unknown, "ID")
                else:
                    assert got.status_code in (404, 422), (op, sub_id, got.status_code, got.text)

        tenant_b_tries()
        assert client.get("/v1/subscriptions", headers=a).json()["subscriptions"] == a_list
        everyone = client.get("/v1/subscriptions", headers=keys.header(keys.admin)).json()
        assert {s["tenant"] for s in everyone["subscriptions"]} == {"acme", "globex"}
        # an admin acts on any tenant's: that is the difference the 404s above hide
        assert client.get(f"/v1/subscriptions/{a_ids[0]}", headers=keys.header(keys.admin)).status_code == 200
    assert _tenant_a_on_the_topic(settings) == before


def test_scopes_tokens_and_the_rate_limit(settings: AntingSettings, tmp_path: Path) -> None:
    """A key without subscriptions:manage is 403 on the subscriptions and one without
    stream:read on the token; a token opens /v1/stream only, is 401 when forged or expired
    (an open stream ends at its expiry); a tenant key past ANTING_RATE_LIMIT is 429 with
    Retry-After, the admin key is not limited."""
    asyncio.run(create_topics(settings))
    keys: Keys = write_keys(tmp_path / "keys")
    with notify_in_thread(settings, tmp_path / "keys", keys.admin, rate_limit="4/minute") as (url, _), \
            httpx.Client(base_url=url, timeout=20) as client:
        stream_only = keys.header(keys.stream_only)
        for who in (stream_only, keys.header(keys.publish_only)):
            r = client.get("/v1/subscriptions", headers=who)
            assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/subscriptions").status_code == 401
        assert client.post("/v1/stream-tokens", headers=keys.header(keys.publish_only)).status_code == 403

        issued = client.post("/v1/stream-tokens", headers=stream_only, params={"ttl_seconds": 3})
        assert issued.status_code == 200, issued.text
        doc = issued.json()
        assert doc["expires_in"] == 3 and doc["expires_at"].endswith("Z")
        token = doc["token"]
        started = time.monotonic()
        lines: list[str] = []
        with client.stream("GET", "/v1/stream", params={"access_token": token}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():  # the stream ends by itself when the token expires
                lines.append(line)
        assert ": connected" in lines and ": the stream token expired" in lines
        assert 2.0 <= time.monotonic() - started < 15
        expired = client.get("/v1/stream", params={"access_token": token})
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]
        assert client.get("/v1/stream", params={"access_token": token + "x"}).status_code == 401
        fresh = client.post("/v1/stream-tokens", headers=stream_only).json()
        assert fresh["expires_in"] == 300
        # a token is for the stream alone
        assert client.get("/v1/subscriptions", params={"access_token": fresh["token"]}).status_code == 401
        # ttl_seconds is capped by the setting
        long = client.post("/v1/stream-tokens", headers=stream_only, params={"ttl_seconds": 3600})
        assert long.json()["expires_in"] == 300

        a = keys.header(keys.a)
        body = {"name": "n", "channel": {"type": "log"}}
        codes = [client.post("/v1/subscriptions", headers=a, json=body).status_code for _ in range(5)]
        assert codes == [201, 201, 201, 201, 429]
        limited = client.post("/v1/subscriptions", headers=a, json=body)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert orjson.loads(limited.content)["status"] == 429
        # reading is not limited; another tenant's key and the admin key have their own counts
        assert client.get("/v1/subscriptions", headers=a).status_code == 200
        assert client.post("/v1/subscriptions", headers=keys.header(keys.b), json=body).status_code == 201
        admin = keys.header(keys.admin)
        assert {client.post("/v1/subscriptions", headers=admin, json=body).status_code
                for _ in range(6)} == {201}
