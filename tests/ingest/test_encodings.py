"""Encodings at the edges of ingest, against the real broker: request bodies sent with
Content-Encoding gzip or deflate are decoded (the size limit holding for the decoded
bytes, a zip bomb stopped early), other codings get 415, bytes that are not of their
declared coding get 400; a UTF-8 byte order mark is skipped at the start of a file and
of an HTTP body."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devtools.testing import read_topic
from services.ingest.files import publish_file
from services.ingest.watch import DONE, watch
from shared.events import parse_event
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, DEAD_LETTERS
from tests.ingest.conftest import agreement, announcement
from tests.ingest.test_http import assert_problem, ndjson

BOM = b"\xef\xbb\xbf"
JSON = {"content-type": "application/json"}


def ids(records: list[Any]) -> list[str]:
    return sorted(parse_event(r.value or b"").id for r in records)


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some clients send ``deflate``."""
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


async def test_gzip_and_deflate_bodies_are_decoded(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """gzip (also as x-gzip, and in two members), deflate in the zlib format and raw deflate:
    each body is decoded and its events published, on every /v1 route."""
    one = orjson.dumps(announcement("gz1"))
    half = len(one) // 2
    cases = [
        ("gzip", gzip.compress(one), JSON),
        ("x-gzip", gzip.compress(orjson.dumps([announcement("gz2"), agreement("gz3")])), JSON),
        ("GZIP", gzip.compress(one[:half].replace(b"gz1", b"gz4"))
         + gzip.compress(one[half:]), JSON),
        ("deflate", zlib.compress(ndjson([agreement("df1"), announcement("df2")])),
         {"content-type": "application/x-ndjson"}),
        ("deflate", raw_deflate(orjson.dumps(agreement("df3"))), JSON),
        ("identity, gzip", gzip.compress(orjson.dumps(agreement("gz5"))), JSON),
    ]
    for coding, body, headers in cases:
        resp = await client.post("/v1/events", content=body,
                                 headers={**headers, "content-encoding": coding})
        assert resp.status_code == 202, (coding, resp.text)
    resp = await client.post("/v1/agreements",
                             content=gzip.compress(orjson.dumps({"title": "Signed in Anting"})),
                             headers={**JSON, "content-encoding": "gzip"})
    assert resp.status_code == 202, resp.text
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=4, timeout=20)
    assert ids(anns) == ["ann-df2", "ann-gz1", "ann-gz2", "ann-gz4"]
    agrs = await read_topic(topics, topics.topic(AGREEMENTS), expect=5, timeout=20)
    assert len(agrs) == 5
    assert {"agr-df1", "agr-df3", "agr-gz3", "agr-gz5"} <= set(ids(agrs))


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br", "gzip, deflate"])
async def test_unsupported_codings_get_415_naming_the_supported_ones(
    client: httpx.AsyncClient, coding: str
) -> None:
    """br, zstd, any other coding, and more than one coding: 415 problem+json listing gzip,
    deflate and identity, with an Accept-Encoding header saying the same."""
    body = assert_problem(await client.post(
        "/v1/events", content=orjson.dumps(announcement("u1")),
        headers={**JSON, "content-encoding": coding}), 415)
    assert body["supported_encodings"] == ["gzip", "deflate", "identity"]
    assert "gzip, deflate and identity" in body["detail"]
    assert body["errors"][0]["path"] == "header.content-encoding"
    resp = await client.post("/v1/announcements", content=b"{}",
                             headers={**JSON, "content-encoding": coding})
    assert resp.status_code == 415
    assert resp.headers["accept-encoding"] == "gzip, deflate, identity"


async def test_a_body_not_of_its_declared_coding_is_a_400(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """Plain JSON labelled gzip (no gzip header), a truncated gzip body and plain JSON labelled
    deflate are each a 400 saying the body is not of its declared coding; nothing is
    published."""
    plain = orjson.dumps(announcement("lie"))
    for coding, body in (("gzip", plain), ("gzip", gzip.compress(plain)[:-10]),
                         ("deflate", plain)):
        problem = assert_problem(await client.post(
            "/v1/events", content=body, headers={**JSON, "content-encoding": coding}), 400)
        assert f"not {coding} data" in problem["detail"], problem
    assert await read_topic(topics, topics.topic(ANNOUNCEMENTS), idle=1.0, timeout=10) == []


async def test_a_gzip_bomb_gets_413_without_being_inflated(client: httpx.AsyncClient) -> None:
    """60 MB of zeros in 60 KB of gzip against a 64 KiB limit: 413 at once, whether sent whole
    or streamed; streamed, reading stops after the first chunk that inflates too far."""
    bomb = gzip.compress(b"\0" * 60_000_000, 9)
    assert len(bomb) < 64 * 1024
    started = time.perf_counter()
    problem = assert_problem(await client.post(
        "/v1/events", content=bomb, headers={**JSON, "content-encoding": "gzip"}), 413)
    assert "decodes to more than the limit" in problem["detail"]
    assert time.perf_counter() - started < 2.0

    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(0, len(bomb), 1024):
            sent += 1
            yield bomb[i:i + 1024]

    assert_problem(await client.post("/v1/events", content=chunks(),
                                     headers={**JSON, "content-encoding": "gzip"}), 413)
    assert sent < 5, f"read {sent} chunks of 1 KiB of a bomb past a 64 KiB limit"


async def test_byte_order_mark_on_http_bodies_is_skipped(
    client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """A UTF-8 BOM before one event, before an NDJSON body, before bare data, and inside gzip:
    skipped, the events published (RFC 8259 lets a parser ignore it)."""
    cases = [
        (BOM + orjson.dumps(announcement("bom1")), JSON),
        (BOM + ndjson([announcement("bom2"), agreement("bom3")]),
         {"content-type": "application/x-ndjson"}),
        (gzip.compress(BOM + orjson.dumps([announcement("bom4")])),
         {**JSON, "content-encoding": "gzip"}),
    ]
    for body, headers in cases:
        resp = await client.post("/v1/events", content=body, headers=headers)
        assert resp.status_code == 202, resp.text
    resp = await client.post("/v1/agreements", content=BOM + b'{"title": "Signed"}', headers=JSON)
    assert resp.status_code == 202, resp.text
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=3, timeout=20)
    assert ids(anns) == ["ann-bom1", "ann-bom2", "ann-bom4"]
    # a BOM anywhere but at the start is not skipped: that line is not JSON
    resp = await client.post(
        "/v1/events", content=ndjson([announcement("bom5")]) + BOM + ndjson([agreement("bom6")]),
        headers={"content-type": "application/x-ndjson"})
    assert resp.status_code in (400, 422), resp.text
    assert [(e["path"], e["type"]) for e in resp.json()["errors"]] == [("[1]", "json_invalid")]


async def test_byte_order_mark_in_files_is_skipped(
    topics: AntingSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UTF-8 BOM at the start of an NDJSON file and of a JSON array file (anting publish),
    and of a file in a watched folder: skipped, nothing dead-lettered; a bad line's dead
    letter names the file by the path as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nd.ndjson").write_bytes(BOM + ndjson([announcement("f1"), agreement("f2")])
                                         + b"not json\n")
    (tmp_path / "arr.json").write_bytes(BOM + orjson.dumps([announcement("f3")]))
    summary = await publish_file(topics, "nd.ndjson")
    assert (summary.accepted, summary.rejected) == (2, 1)
    summary = await publish_file(topics, "arr.json")
    assert (summary.accepted, summary.rejected) == (1, 0)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "w.ndjson").write_bytes(BOM + ndjson([announcement("f4")]))
    await watch(topics, inbox, stop=asyncio.Event(), once=True, settle=0.2)
    assert (inbox / DONE / "w.ndjson").exists()
    anns = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=3, timeout=20)
    assert ids(anns) == ["ann-f1", "ann-f3", "ann-f4"]
    [letter] = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=20)
    headers = dict(letter.headers)
    assert (headers["dlq.file"], headers["dlq.line"]) == (b"nd.ndjson", b"3")
