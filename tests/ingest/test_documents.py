"""POST /v1/documents against the real broker: a text, Markdown or HTML article lands whole
on `documents` (HTML reduced to its text), keyed by its id; every bad input gets its
status and a problem+json body, and publishes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from devtools.testing import read_topic
from services.ingest.documents import content_id, html_to_text
from services.ingest.main import make_document_publisher
from services.ingest.publisher import Publisher
from shared.documents import MAX_DOCUMENT_TEXT_BYTES, parse_document
from shared.settings import AntingSettings
from shared.topics import DOCUMENTS
from tests.ingest.conftest import ingest_settings, make_client
from tests.ingest.test_http import assert_problem

SEED_LEAD = ("The second World Metaverse Conference started in Anting Town of Jiading District "
             "on Wednesday.")


@pytest.fixture
async def docs_client(topics: AntingSettings, publisher: Publisher) -> AsyncIterator[httpx.AsyncClient]:
    settings = ingest_settings(topics, max_document_body_bytes=1024 * 1024)
    documents = make_document_publisher(settings)
    try:
        async with await make_client(settings, publisher, documents) as c:
            yield c
    finally:
        await documents.stop()


async def test_plain_text_lands_whole_keyed_by_its_content_hash(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """text/plain, UTF-8 by default: 202 with a content-hash id; the record is the whole text."""
    text = SEED_LEAD + "\n安亭镇人民政府与上海汽车集团股份有限公司签署合作协议。\n"
    resp = await docs_client.post("/v1/documents", content=text.encode(),
                                  headers={"content-type": "text/plain"})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["id"] == content_id(text) and body["ids"] == [body["id"]]
    assert body["source"] == "/anting/ingest" and body["characters"] == len(text)
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    assert rec.key == body["id"].encode()
    doc = parse_document(rec.value or b"")
    assert doc.text == text and doc.media_type == "text/plain" and doc.id == body["id"]


async def test_charset_from_the_header_id_and_source_from_the_query(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """A GB18030 body named so in Content-Type is decoded; ?id= and ?source= are the identity."""
    text = "上汽集团与安亭镇签约。\r\n第二行"
    resp = await docs_client.post(
        "/v1/documents", params={"id": "wmc-2023-07-05", "source": "/press/example"},
        content=text.encode("gb18030"), headers={"content-type": "text/plain; charset=GB18030"})
    assert resp.status_code == 202, resp.text
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    doc = parse_document(rec.value or b"")
    assert (doc.id, doc.source) == ("wmc-2023-07-05", "/press/example")
    assert doc.text == "上汽集团与安亭镇签约。\n第二行"  # line ends are LF


async def test_html_is_reduced_to_its_text_without_scripts(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """text/html: scripts, styles and the head are dropped, blocks become paragraphs."""
    html = ("<!doctype html><html><head><title>WMC opens</title><style>p{color:red}</style>"
            "<script>var org = 'Evil Corp Ltd';</script></head><body>"
            "<h1>World Metaverse Conference</h1><p>The   conference is hosted by the "
            "<b>China Simulation Federation</b>.</p><script>track('Tracker Inc')</script>"
            "<noscript>enable JavaScript</noscript><p>Agreements &amp; more.</p></body></html>")
    resp = await docs_client.post("/v1/documents", content=html.encode(),
                                  headers={"content-type": "text/html; charset=utf-8"})
    assert resp.status_code == 202, resp.text
    assert resp.json()["dropped"] == {"style": 1, "script": 2, "noscript": 1}
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    doc = parse_document(rec.value or b"")
    assert doc.text == ("World Metaverse Conference\n\nThe conference is hosted by the China "
                        "Simulation Federation.\n\nAgreements & more.")
    assert doc.title == "WMC opens" and doc.media_type == "text/html"
    assert "Evil" not in doc.text and "Tracker" not in doc.text


async def test_markdown_is_kept_as_written(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """text/markdown is published as written (offsets count in it)."""
    md = "# WMC\n\n**SAIC Motor** signed with *Anting Town*.\n"
    resp = await docs_client.post("/v1/documents", content=md.encode(),
                                  headers={"content-type": "text/markdown"})
    assert resp.status_code == 202, resp.text
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    assert parse_document(rec.value or b"").text == md


@pytest.mark.parametrize(("body", "content_type", "status", "error_type"), [
    (b"", "text/plain", 422, "empty"),
    (b" \n\t\n", "text/plain", 422, "empty"),
    (b"<html><head><title>t</title></head><body><script>x()</script></body></html>",
     "text/html", 422, "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "text/plain", 415, "binary"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "text/plain", 415, "binary"),
    (b"text with a NUL \x00 inside", "text/plain", 415, "binary"),
    (b"text with a bell \x07 inside", "text/plain", 415, "binary"),
    ("上汽集团".encode("gb18030"), "text/plain", 400, "charset"),  # not UTF-8, none named
    ("上汽集团".encode(), "text/plain; charset=klingon", 415, "charset"),
    (b"{}", "application/json", 415, "media_type"),
    (b"hello", None, 415, "media_type"),
])
async def test_bad_documents_are_refused_and_publish_nothing(
    docs_client: httpx.AsyncClient, topics: AntingSettings, body: bytes,
    content_type: str | None, status: int, error_type: str,
) -> None:
    """Empty, markup-only, binary, undecodable, unknown charset, wrong media type: refused."""
    headers = {"content-type": content_type} if content_type else {}
    resp = await docs_client.post("/v1/documents", content=body, headers=headers)
    problem = assert_problem(resp, status)
    assert problem["errors"][0]["type"] == error_type, problem
    assert await read_topic(topics, topics.topic(DOCUMENTS), idle=1.0) == []


async def test_twenty_megabytes_and_too_much_text_are_413(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """A 20 MB body is 413 before it is read; text over the document bound is 413 too."""
    big = b"a" * (20 * 1024 * 1024)
    resp = await docs_client.post("/v1/documents", content=big, headers={"content-type": "text/plain"})
    assert assert_problem(resp, 413)["errors"][0]["type"] == "too_large"
    # under the body limit, over the text limit
    text = ("安" * (MAX_DOCUMENT_TEXT_BYTES // 3 + 1)).encode()
    resp = await docs_client.post("/v1/documents", content=text, headers={"content-type": "text/plain"})
    problem = assert_problem(resp, 413)
    assert "limit" in problem["detail"]
    assert await read_topic(topics, topics.topic(DOCUMENTS), idle=1.0) == []


async def test_an_id_or_source_the_contract_refuses_is_422(
    docs_client: httpx.AsyncClient, topics: AntingSettings
) -> None:
    """?id= with a line break, or longer than 256, names query.id; nothing is published."""
    for params in ({"id": "a\nb"}, {"id": "x" * 300}, {"source": " "}):
        resp = await docs_client.post("/v1/documents", params=params, content=b"SAIC signs.",
                                      headers={"content-type": "text/plain"})
        problem = assert_problem(resp, 422)
        assert problem["errors"][0]["path"] in ("query.id", "query.source")
    assert await read_topic(topics, topics.topic(DOCUMENTS), idle=1.0) == []


def test_html_reduction_keeps_pre_and_decodes_references() -> None:
    """Within <pre> white space stays; entities are decoded; stray end tags are harmless."""
    reduced = html_to_text("<div>a&nbsp;b</span></div><pre>x  y\n z</pre><p>上汽&lt;集团&gt;</p>")
    assert reduced.text == "a\u00a0b\n\nx  y\n z\n\n上汽<集团>"
