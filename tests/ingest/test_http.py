"""The ingest HTTP API against the real broker: what is accepted lands on the right
topic with key and headers; every bad-input class gets its status, a problem+json
body naming the problem, and publishes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from devtools.testing import read_topic
from services.ingest.publisher import Publisher
from shared.events import parse_event
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS
from tests.ingest.conftest import agreement, announcement, ingest_settings, make_client

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"\n".join(orjson.dumps(e) for e in events) + b"\n"


def assert_problem(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert isinstance(body["errors"], list) and body["errors"]
    return body


async def test_single_event_lands_on_its_topic_with_key_and_headers(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """One CloudEvent → 202 with its id; on `announcements`, keyed by subject, with ce_* headers."""
    resp = await client.post("/v1/events", content=orjson.dumps(announcement(1)),
                             headers={"content-type": "application/cloudevents+json",
                                      "traceparent": TRACE})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": 1, "ids": ["ann-1"]}
    [rec] = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert rec.key == b"world-metaverse-conference-2023"
    headers = dict(rec.headers)
    assert headers["ce_id"] == b"ann-1"
    assert headers["ce_type"] == b"conference.announcement"
    assert headers["ce_source"] == b"/press/shine.cn/world-metaverse-conference"
    assert headers["ce_specversion"] == b"1.0"
    assert headers["content-type"] == b"application/cloudevents+json"
    assert headers["traceparent"] == TRACE.encode()
    event = parse_event(rec.value or b"")
    assert event.id == "ann-1" and event.model_dump()["data"]["figures"] == {"experts": 110}


async def test_batch_and_ndjson_split_by_type(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """A JSON array and an NDJSON body are accepted whole; each event goes to its type's topic."""
    batch = [announcement("a"), agreement("a"), announcement("b")]
    resp = await client.post("/v1/events", json=batch)
    assert resp.status_code == 202, resp.text
    assert resp.json()["ids"] == ["ann-a", "agr-a", "ann-b"]
    resp = await client.post("/v1/events", content=ndjson([agreement("b"), announcement("c")]),
                             headers={"content-type": "application/x-ndjson"})
    assert resp.status_code == 202, resp.text
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=3, timeout=20)
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), expect=2, timeout=20)
    assert sorted(parse_event(r.value or b"").id for r in anns) == ["ann-a", "ann-b", "ann-c"]
    assert sorted(parse_event(r.value or b"").id for r in agrs) == ["agr-a", "agr-b"]
    # no subject: the key is the id
    assert {r.key for r in agrs} == {b"agr-a", b"agr-b"}


async def test_event_traceparent_extension_wins_over_the_header(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """An event's own `traceparent` extension is passed through in preference to the request's."""
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ev = {**agreement("t"), "traceparent": own}
    resp = await client.post("/v1/events", json=ev, headers={"traceparent": TRACE})
    assert resp.status_code == 202, resp.text
    [rec] = await read_topic(topics, topics.topic(AGREEMENTS), expect=1, timeout=20)
    assert dict(rec.headers)["traceparent"] == own.encode()


async def test_bare_data_gets_id_time_source_type(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """POST /v1/announcements and /v1/agreements wrap a bare data object in a full CloudEvent."""
    resp = await client.post("/v1/announcements?subject=wmc-2023",
                             json={"headline": "Meta Baylism unveiled",
                                   "kind": "industry_base_unveiled"})
    assert resp.status_code == 202, resp.text
    [ann_id] = resp.json()["ids"]
    resp = await client.post("/v1/agreements", json={"title": "Agreements signed",
                                                     "party_count": 20})
    assert resp.status_code == 202, resp.text
    [agr_id] = resp.json()["ids"]
    [ann] = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    [agr] = await read_topic(topics, topics.topic(AGREEMENTS), expect=1, timeout=20)
    a = parse_event(ann.value or b"")
    assert (a.id, a.type, a.subject, a.source) == (
        ann_id, "conference.announcement", "wmc-2023", "/anting/ingest")
    assert a.time is not None and ann.key == b"wmc-2023"
    g = parse_event(agr.value or b"")
    assert (g.id, g.type) == (agr_id, "agreement.signed") and agr.key == agr_id.encode()


async def test_every_bad_input_class_is_rejected_and_publishes_nothing(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """400/413/415/422 each answer problem+json naming the problem, and nothing reaches a topic."""
    # 400: malformed JSON (one event, and one bad NDJSON line among good ones)
    body = assert_problem(await client.post(
        "/v1/events", content=b'{"specversion": "1.0", "id": ',
        headers={"content-type": "application/json"}), 400)
    assert body["errors"][0]["path"] == "$"
    body = assert_problem(await client.post(
        "/v1/events", content=ndjson([announcement("n1")]) + b"{oops\n",
        headers={"content-type": "application/x-ndjson"}), 400)
    assert body["errors"][0]["path"] == "[1]"
    # 415: wrong content type
    body = assert_problem(await client.post(
        "/v1/events", content=orjson.dumps(announcement("x")),
        headers={"content-type": "text/plain"}), 415)
    assert "text/plain" in body["detail"]
    assert_problem(await client.post("/v1/announcements", content=b"headline=x",
                                     headers={"content-type": "application/x-www-form-urlencoded"}),
                   415)
    # 413: over the limit (64 KiB in this test), by Content-Length ...
    big = announcement("big", summary="x" * 70_000)
    body = assert_problem(await client.post("/v1/events", json=big), 413)
    assert "limit" in body["detail"]

    # ... and while reading a body sent without a length: reading stops at the limit
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b" " * 16_384

    assert_problem(await client.post("/v1/events", content=chunks(),
                                     headers={"content-type": "application/json"}), 413)
    assert sent < 10, f"read {sent} chunks of 16 KiB past a 64 KiB limit"
    # 422: schema violation, with the field path
    bad = announcement("bad")
    del bad["data"]["headline"]
    body = assert_problem(await client.post("/v1/events", json=bad), 422)
    assert [e["path"] for e in body["errors"]] == ["data.headline"]
    body = assert_problem(await client.post("/v1/events", json={**agreement("s"),
                                                                "specversion": "0.3"}), 422)
    assert "specversion" in {e["path"] for e in body["errors"]}
    # 422: unknown type
    body = assert_problem(await client.post("/v1/events", json={**agreement("u"),
                                                                "type": "com.example.other"}), 422)
    assert [e["path"] for e in body["errors"]] == ["type"]
    # 422: a batch with one bad item rejects the whole batch and names the item
    bad_item = announcement("b1")
    bad_item["data"]["figures"] = {"experts": "many"}
    body = assert_problem(await client.post(
        "/v1/events", json=[announcement("ok1"), bad_item, agreement("ok2")]), 422)
    assert {e["path"].rsplit(".", 1)[0] for e in body["errors"]} == {"[1].data.figures.experts"}
    assert [(r["index"], r["id"]) for r in body["rejected"]] == [(1, "ann-b1")]
    body = assert_problem(await client.post(
        "/v1/events", content=ndjson([agreement("ok3"), {"specversion": "1.0"}]),
        headers={"content-type": "application/x-ndjson"}), 422)
    assert {e["path"] for e in body["errors"]} >= {"[1].type"}
    # 422: bare data with a field of the wrong type, path relative to the body
    body = assert_problem(await client.post("/v1/agreements",
                                            json={"title": "x", "party_count": "twenty"}), 422)
    assert [e["path"] for e in body["errors"]] == ["party_count"]

    # then one good event per topic: the only records there must be these two
    for ev in (announcement("sentinel"), agreement("sentinel")):
        assert (await client.post("/v1/events", json=ev)).status_code == 202
    for topic, expected in ((ANNOUNCEMENTS, "ann-sentinel"), (AGREEMENTS, "agr-sentinel")):
        recs = await read_topic(topics, topics.topic(topic), expect=1, timeout=20)
        assert [parse_event(r.value or b"").id for r in recs] == [expected]


async def test_api_keys_guard_v1_routes_only(topics: AntingSettings, publisher: Publisher) -> None:
    """With ANTING_API_KEYS set, /v1/* needs a Bearer key (401 otherwise); health and metrics do not."""
    settings = ingest_settings(topics, api_keys="alpha, beta")
    async with await make_client(settings, publisher) as client:
        body = assert_problem(await client.post("/v1/events", json=announcement("k0")), 401)
        assert "API key" in body["detail"] and body["errors"][0]["path"] == "header.authorization"
        resp = await client.post("/v1/events", json=announcement("k1"),
                                 headers={"authorization": "Bearer gamma"})
        assert_problem(resp, 401)
        assert resp.headers["www-authenticate"] == "Bearer"
        resp = await client.post("/v1/events", json=announcement("k2"),
                                 headers={"authorization": "Bearer beta"})
        assert resp.status_code == 202, resp.text
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
    recs = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert [parse_event(r.value or b"").id for r in recs] == ["ann-k2"]


async def test_metrics_count_accepted_and_rejected(client: httpx.AsyncClient) -> None:
    """/metrics shows anting_ingest_events_total by type and outcome, stage time and request latency."""
    from shared.metrics import INGEST_EVENTS

    def count(t: str, outcome: str) -> float:
        return float(INGEST_EVENTS.labels(t, outcome)._value.get())

    before = (count("agreement.signed", "accepted"), count("unknown", "rejected"),
              count("conference.announcement", "rejected"))
    assert (await client.post("/v1/events", json=[agreement("m1"), agreement("m2")])).status_code == 202
    assert (await client.post("/v1/events", content=b"[",
                              headers={"content-type": "application/json"})).status_code == 400
    bad = announcement("m3")
    bad["data"]["headline"] = ""
    assert (await client.post("/v1/events", json=bad)).status_code == 422
    after = (count("agreement.signed", "accepted"), count("unknown", "rejected"),
             count("conference.announcement", "rejected"))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    text = (await client.get("/metrics")).text
    assert 'anting_ingest_events_total{outcome="accepted",type="agreement.signed"}' in text
    assert 'anting_stage_seconds_count{stage="ingest"}' in text
    assert 'route="/v1/events",service="ingest",status="202"' in text


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_and_readiness(client: httpx.AsyncClient, path: str) -> None:
    """/healthz answers, /readyz says ready while the broker is reachable."""
    resp = await client.get(path)
    assert resp.status_code == 200
    assert resp.json()["status"] in ("ok", "ready")
