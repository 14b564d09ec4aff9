"""Inputs from public bug reports against CloudEvents SDKs, Kafka clients and webhook
senders: ingest refuses what a later stage could not carry (422 naming the field, nothing
published) and accepts what RFC 3339 and JSON allow."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from devtools.testing import read_topic
from services.ingest.publisher import Publisher
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS
from tests.ingest.conftest import agreement, announcement, ingest_settings, make_client
from tests.ingest.test_http import assert_problem

pytestmark = pytest.mark.kafka


async def _nothing_published(topics: AntingSettings) -> None:
    await asyncio.sleep(0.2)
    for topic in (ANNOUNCEMENTS, AGREEMENTS):
        assert await read_topic(topics, topics.topic(topic), expect=1, timeout=1.5) == []


NUMBERS = [b"1e400", b"-1e400", b"1E999", b"18446744073709551616", b"9007199254740993",
           b"-123456789012345678901234567890"]
BAD_TIMES = ["2024-05-01T10:00:00", "2024-05-01T10:00", "2024-05-01", "2024-05-01 10:00:00Z",
             "2024-05-01T10:00:00+0800", "2024-02-30T10:00:00Z", "2024-05-01T10:00:00.Z"]


async def test_numbers_no_json_reader_agrees_on_are_refused_at_their_path(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """1e400 (infinity to some readers, null once orjson writes it) and integers past 2**53
    get 422 at the field's path, in a known field or an unknown one, by /v1/events and by
    /v1/agreements, and publish nothing."""
    ev = agreement("num")
    ev["data"]["value"] = {"amount": 1.25, "currency": "CNY"}
    ev["data"]["extra"] = {"deep": [1.5]}
    for number in NUMBERS:
        for path, raw in (("data.value.amount", orjson.dumps(ev).replace(b"1.25", number)),
                          ("data.extra", orjson.dumps(ev).replace(b"1.5", number))):
            body = assert_problem(await client.post(
                "/v1/events", content=raw, headers={"content-type": "application/json"}), 422)
            assert [e["path"] for e in body["errors"]] == [path], (number, body)
        bare = orjson.dumps(ev["data"]).replace(b"1.25", number)
        body = assert_problem(await client.post(
            "/v1/agreements", content=bare, headers={"content-type": "application/json"}), 422)
        assert [e["path"] for e in body["errors"]] == ["value.amount"], (number, body)
    # NaN and Infinity are not JSON at all
    raw = orjson.dumps(ev).replace(b"1.25", b"NaN")
    assert_problem(await client.post("/v1/events", content=raw,
                                     headers={"content-type": "application/json"}), 400)
    await _nothing_published(topics)


async def test_times_without_an_offset_are_refused(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """Every time field is RFC 3339 with an offset: `time` and `signed_at` without one get 422."""
    for bad in BAD_TIMES:
        ev = agreement("t")
        ev["time"] = bad
        ev["data"]["signed_at"] = bad
        body = assert_problem(await client.post("/v1/events", json=ev), 422)
        assert {e["path"] for e in body["errors"]} == {"time", "data.signed_at"}, bad
    await _nothing_published(topics)


async def test_lowercase_t_and_z_are_rfc3339_and_accepted(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """RFC 3339 allows 't' and 'z': accepted, and written in canonical form."""
    ev = agreement("lower")
    ev["time"] = "2024-05-01t10:00:00z"
    ev["data"]["signed_at"] = "2024-05-01t18:00:00.5+08:00"
    resp = await client.post("/v1/events", json=ev)
    assert resp.status_code == 202, resp.text
    [rec] = await read_topic(topics, topics.topic(AGREEMENTS), expect=1, timeout=20)
    doc = orjson.loads(rec.value or b"")
    assert doc["time"] == "2024-05-01T10:00:00Z"
    assert doc["data"]["signed_at"] == "2024-05-01T18:00:00.500000+08:00"


async def test_protocol_fields_refuse_control_characters(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """id, source and subject become Kafka headers, SSE lines and e-mail headers: a line
    break or other control character in them is a 422 (no forged SSE message can follow)."""
    for field in ("id", "source", "subject"):
        for char in ("\n", "\r", "\r\n", "\x00", "\x1b", "\x85", "\x7f"):
            ev = announcement("ctl")
            ev[field] = f"x{char}event: agreement.signed{char}data: {{\"id\":\"FORGED\"}}{char}{char}id: y"
            body = assert_problem(await client.post("/v1/events", json=ev), 422)
            assert [e["path"] for e in body["errors"]] == [field], (field, char)
            assert "control characters" in body["errors"][0]["message"]
    await _nothing_published(topics)


async def test_more_than_an_event_may_name_is_refused(
    topics: AntingSettings, publisher: Publisher
) -> None:
    """2,500 repeats of one organization (~110 KB; its enriched form would not fit in a
    Kafka record) get 422 at data.organizations; 100 mentions are accepted."""
    async with await make_client(ingest_settings(topics), publisher) as client:
        await _flood(client, topics)


async def _flood(client: httpx.AsyncClient, topics: AntingSettings) -> None:
    ev = agreement("flood")
    ev["data"]["organizations"] = [{"name": "SAIC Motor Corporation Limited"}] * 2500
    body = assert_problem(await client.post("/v1/events", json=ev), 422)
    assert [e["path"] for e in body["errors"]] == ["data.organizations"]
    assert "100" in body["errors"][0]["message"]
    await _nothing_published(topics)
    ev["data"]["organizations"] = ev["data"]["organizations"][:100]
    assert (await client.post("/v1/events", json=ev)).status_code == 202


@pytest.mark.parametrize("extension", [{"My_Ext": "x"}, {"nested": {"a": 1}}, {"line": "a\nb"}])
async def test_extension_attributes_follow_the_spec(
    client: httpx.AsyncClient, topics: AntingSettings, extension: dict[str, object]
) -> None:
    """Extension attributes are lowercase alphanumeric names with string, integer or boolean
    values (CloudEvents 1.0 §3.1.3): they become ce_* headers in binary mode."""
    resp = await client.post("/v1/events", json={**announcement("ext"), **extension})
    assert_problem(resp, 422)
    ok = await client.post("/v1/events", json={**announcement("ext-ok"), "comexampleext": "v",
                                               "priority": 3, "urgent": True})
    assert ok.status_code == 202, ok.text
