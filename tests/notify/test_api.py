"""The notify HTTP API against a real broker: subscriptions CRUD with problem+json
errors and API keys, secret rotation, and the SSE stream over a real uvicorn server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
import uvicorn

from devtools.localkafka import free_port
from devtools.testing import produce
from services.notify import sse
from services.notify.api import create_app
from services.notify.store import SubscriptionStore
from shared.http import EmbeddedServer
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ACME, ALLIANCE, agreement, announcement, encode, notify_settings

pytestmark = pytest.mark.kafka
KEY = {"authorization": "Bearer k1"}


@contextlib.asynccontextmanager
async def api(topics: AntingSettings, **kw: str) -> AsyncIterator[tuple[httpx.AsyncClient, SubscriptionStore]]:
    settings = notify_settings(topics, api_keys="k1,k2", **kw)
    producer = make_producer(settings)
    await producer.start()
    store = SubscriptionStore(settings, producer)
    await store.start()
    app = create_app(settings, store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify") as client:
            yield client, store
    finally:
        await store.stop()
        await producer.stop()


async def test_subscription_crud_secret_shown_once(topics: AntingSettings) -> None:
    """POST → 201 with a whsec_ secret; GET/list never show it; rotate gives a new one; DELETE removes."""
    async with api(topics) as (client, store):
        r = await client.post("/v1/subscriptions", headers=KEY, json={
            "name": "alliances", "filter": {"kinds": ["alliance_established"], "organizations": ["SMIIA"]},
            "channel": {"type": "webhook", "url": "https://hooks.example.com/anting"}})
        assert r.status_code == 201, r.text
        doc = r.json()
        sid, secret = doc["id"], doc["secret"]
        assert secret.startswith("whsec_") and r.headers["location"] == f"/v1/subscriptions/{sid}"
        one = (await client.get(f"/v1/subscriptions/{sid}", headers=KEY)).json()
        listed = (await client.get("/v1/subscriptions", headers=KEY)).json()["subscriptions"]
        assert secret not in orjson.dumps(one).decode() and secret not in orjson.dumps(listed).decode()
        assert one["filter"]["organizations"] == ["SMIIA"] and [s["id"] for s in listed] == [sid]
        rot = await client.post(f"/v1/subscriptions/{sid}/rotate-secret", headers=KEY)
        assert rot.status_code == 200 and rot.json()["secret"] != secret
        assert store.get(sid).secrets == [rot.json()["secret"], secret]  # type: ignore[union-attr]
        email = await client.post("/v1/subscriptions", headers=KEY, json={
            "name": "mail", "channel": {"type": "email", "to": ["ops@example.com"]}})
        assert email.status_code == 201 and "secret" not in email.json()
        assert (await client.delete(f"/v1/subscriptions/{sid}", headers=KEY)).status_code == 204
        gone = await client.get(f"/v1/subscriptions/{sid}", headers=KEY)
        assert gone.status_code == 404 and gone.headers["content-type"] == "application/problem+json"
    # the topic is the source of truth: a fresh reader sees the same set
    fresh = SubscriptionStore(topics, producer=None)
    await fresh.start()
    try:
        assert [s.name for s in fresh.all()] == ["mail"]
    finally:
        await fresh.stop()


@pytest.mark.parametrize(("body", "status", "path"), [
    (b'{"name": "x", "channel": ', 400, None),
    (b'{"name": "x"}', 422, "channel"),
    (b'{"name": "x", "channel": {"type": "pager"}}', 422, "channel"),
    (b'{"name": "x", "filter": {"kinds": ["party"]}, "channel": {"type": "log"}}', 422, "filter.kinds.0"),
    (b'{"name": "x", "channel": {"type": "email", "to": ["a@b.c\\r\\nBcc: x@y.z"]}}', 422, "channel.email.to.0"),
    (b'{"name": "x", "channel": {"type": "webhook", "url": "http://169.254.169.254/"}}', 422, "channel.url"),
    (b'{"name": "x", "channel": {"type": "webhook", "url": "http://10.0.0.1/"}}', 422, "channel.url"),
])
async def test_invalid_subscriptions_are_problem_json(topics: AntingSettings, body: bytes, status: int, path: str | None) -> None:
    """Malformed JSON is 400, invalid fields and refused URLs 422, as problem+json with field paths."""
    async with api(topics) as (client, store):
        r = await client.post("/v1/subscriptions", headers={**KEY, "content-type": "application/json"}, content=body)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        doc = r.json()
        assert doc["status"] == status and "errors" in doc
        if path:
            assert any(e["path"].startswith(path) for e in doc["errors"]), doc["errors"]
        assert store.all() == []


async def test_api_keys_required(topics: AntingSettings) -> None:
    """Without a right bearer key every /v1 route is 401 problem+json; health stays open."""
    async with api(topics) as (client, _):
        assert (await client.get("/v1/subscriptions")).status_code == 401
        bad = await client.get("/v1/subscriptions", headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.headers["content-type"] == "application/problem+json"
        assert (await client.get("/v1/subscriptions", headers={"authorization": "Bearer k2"})).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert b"anting_notify_deliveries" in (await client.get("/metrics")).content


async def test_sse_stream_filters_like_subscriptions(topics: AntingSettings) -> None:
    """GET /v1/stream sends only matching enriched events as SSE, with the reason."""
    settings = notify_settings(topics, port=free_port())
    store = SubscriptionStore(settings, producer=None)
    await store.start()
    server = EmbeddedServer(uvicorn.Config(app := create_app(settings, store), host="127.0.0.1", port=settings.port,
                                    log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    events = [agreement([ACME]), announcement([ALLIANCE], kind="alliance_established"), agreement([ACME])]
    await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=20) as client:
            params = {"organizations": "smiia", "types": "conference.announcement", "from": "earliest"}
            async with client.stream("GET", "/v1/stream", params=params) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
                lines: list[str] = []
                async with asyncio.timeout(20):
                    async for line in resp.aiter_lines():
                        lines.append(line)
                        if line.startswith("data: "):
                            break
            bad = await client.get("/v1/stream", params={"kinds": "party"})
            assert bad.status_code == 422
    finally:
        server.should_exit = True
        await task
        await app.state.stream_tail.stop()
        await store.stop()
    assert f"id: {sse.event_id(events[1].source, events[1].id)}" in lines
    assert "event: conference.announcement" in lines
    data = orjson.loads(lines[-1][len("data: "):])
    assert data["id"] == events[1].id and data["reason"][1]["organization"] == ALLIANCE.id


async def _sse_ids(client: httpx.AsyncClient, n: int, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Read ``n`` SSE messages, then hang up; their ids and the comment lines seen."""
    ids: list[str] = []
    comments: list[str] = []
    async with client.stream("GET", "/v1/stream", params=params or {}, headers=headers or {}) as resp:
        assert resp.status_code == 200
        async with asyncio.timeout(20):
            async for line in resp.aiter_lines():
                if line.startswith(":"):
                    comments.append(line)
                if line.startswith("id: "):
                    ids.append(line[len("id: "):])
                    if len(ids) == n:
                        break
    return ids, comments


async def test_sse_reconnect_with_last_event_id_misses_nothing(topics: AntingSettings) -> None:
    """A client that hangs up and comes back with Last-Event-ID (as EventSource does) gets
    exactly the events after that one — also those published while it was away — and an
    id this server never sent falls back to the `from` parameter, saying so."""
    settings = notify_settings(topics, port=free_port())
    store = SubscriptionStore(settings, producer=None)
    await store.start()
    server = EmbeddedServer(uvicorn.Config(app := create_app(settings, store), host="127.0.0.1", port=settings.port,
                                           log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    first = [agreement([ACME], event_id=f"sse-a{i}") for i in range(12)]
    later = [agreement([ACME], event_id=f"sse-b{i}") for i in range(8)]
    topic = topics.topic(ENRICHED_EVENTS)
    await produce(topics, topic, [encode(e) for e in first], [e.key for e in first])
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=20) as client:
            seen, _ = await _sse_ids(client, 5, params={"from": "earliest"})
            await produce(topics, topic, [encode(e) for e in later], [e.key for e in later])
            rest, comments = await _sse_ids(client, len(first) + len(later) - 5,
                                            headers={"last-event-id": seen[-1]})
            assert f": resuming after {seen[-1]}" in comments
            unknown, comments = await _sse_ids(client, 3, headers={"last-event-id": "never-sent"},
                                               params={"from": "earliest"})
    finally:
        server.should_exit = True
        await task
        await app.state.stream_tail.stop()
        await store.stop()
    everything = {sse.event_id(e.source, e.id) for e in first + later}  # (source, id), encoded
    assert len(seen) + len(rest) == len(everything) and set(seen) | set(rest) == everything
    assert not set(seen) & set(rest)  # nothing twice
    assert any("never-sent is not an event this server sent lately" in c for c in comments)
    assert len(unknown) == 3
