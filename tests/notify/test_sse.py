"""The SSE stream cannot be injected into: every value written into an ``id:``,
``event:`` or ``data:`` line is kept from ending it (CR, LF, CRLF; NUL in an id), read
back with a parser that follows WHATWG HTML's "Interpreting an event stream" on the
raw bytes; and the SSE id names an event by (source, id), so ``Last-Event-ID``
resumes right after the one it names, whichever publisher's."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from devtools.localkafka import free_port
from devtools.testing import produce
from services.notify import api, sse
from services.notify.api import ResumePoints, create_app
from services.notify.store import SubscriptionStore
from shared.events import dump_event
from shared.http import EmbeddedServer
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, agreement, notify_settings
from .tenancy import write_keys

INJECTED = 'x\nevent: agreement.signed\ndata: {"id":"FORGED"}\n\nid: y'
BREAKS = ["\n", "\r", "\r\n"]


# --- an event-stream parser, after WHATWG HTML "Interpreting an event stream" -----------


@dataclass
class Message:
    last_event_id: str
    event: str
    data: str


def parse_stream(raw: bytes) -> tuple[list[Message], list[str]]:
    """The messages dispatched and the comments in ``raw``, read as a browser reads an event
    stream: lines end at CRLF, CR or LF (and nowhere else); a blank line dispatches; an
    ``id`` holding NUL is ignored; the last event id carries over to later messages."""
    text = raw.decode()
    if text.startswith("\ufeff"):
        text = text[1:]
    messages: list[Message] = []
    comments: list[str] = []
    data, event, last_id = "", "", ""
    lines = re.split(r"\r\n|\r|\n", text)
    for line in lines[:-1]:  # the last piece has no line end yet
        if line == "":
            if data:
                messages.append(Message(last_id, event or "message", data[:-1]))
            data, event = "", ""
            continue
        if line.startswith(":"):
            comments.append(line[1:].removeprefix(" "))
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
    return messages, comments


# --- the writer, without a broker -------------------------------------------------------------


@pytest.mark.parametrize("brk", ["\n", "\r", "\r\n", "\0"])
def test_message_refuses_breaks_in_id_and_event(brk: str) -> None:
    """CR, LF, CRLF or NUL in an id or event name is refused, never written."""
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        sse.message(b"{}", id=f"a{brk}data: forged")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        sse.message(b"{}", event=f"a{brk}id: forged")
    with pytest.raises(ValueError, match="NUL"):
        sse.message("a\0b")


def test_message_data_with_breaks_is_several_data_lines() -> None:
    """Data holding CR, LF or CRLF goes as several data: lines; U+2028 and NEL stay as they are."""
    out = sse.message("a\nb\rc\r\nd\u2028e\x85f", id="1", event="agreement.signed")
    assert out == "id: 1\nevent: agreement.signed\ndata: a\ndata: b\ndata: c\ndata: d\u2028e\x85f\n\n".encode()
    messages, _ = parse_stream(out)
    assert messages == [Message("1", "agreement.signed", "a\nb\nc\nd\u2028e\x85f")]
    assert sse.message(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert parse_stream(sse.comment("one\rtwo\nthree\0four"))[1] == ["one two three four"]


@pytest.mark.parametrize(("source", "id_"), [
    ("/press/a", "same-1"), ("/district/b", "same-1"), ("https://x.example/a?b=c#d", "id with spaces"),
    ("/a b", "c"), ("/a", "b c"), ("/a%20b", "100%"), ("/安亭", "事件\u2028一"), ("/s", INJECTED),
    ("/s\r\n", "\0"), ("/s", "\r"),
])
def test_event_id_is_one_field_value_and_reads_back(source: str, id_: str) -> None:
    """The SSE id of (source, id) is printable ASCII with one space, and reads back as the same pair."""
    value = sse.event_id(source, id_)
    assert value.isascii() and value.isprintable() and value.count(" ") == 1
    assert sse.parse_event_id(value) == (source, id_)
    messages, _ = parse_stream(sse.message(b"{}", id=value))
    assert messages[0].last_event_id == value
    assert sse.event_id("/press/a", "same-1") == "/press/a same-1"  # readable when it can be


def test_parse_event_id_refuses_what_it_did_not_make() -> None:
    """No value, one part, three parts or a percent-encoding that is not UTF-8 name no event."""
    for value in (None, "", "same-1", "a b c", "a ", " b", "%ff b"):
        assert sse.parse_event_id(value) is None


def test_resume_points_keep_two_publishers_apart() -> None:
    """One id from two sources is two resume points; an unknown or old-style id is none."""
    points = ResumePoints(10)
    points.note("/press/a", "same-1", {0: 4})
    points.note("/district/b", "same-1", {0: 5})
    assert points.get(sse.event_id("/press/a", "same-1")) == {0: 4}
    assert points.get(sse.event_id("/district/b", "same-1")) == {0: 5}
    assert points.get("same-1") is None and points.get(None) is None


# --- the stream, against a real broker and a real server ----------------------------------------


@contextlib.asynccontextmanager
async def serving(topics: AntingSettings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = notify_settings(topics, port=free_port(), **overrides)
    store = SubscriptionStore(settings, producer=None)
    await store.start()
    server = EmbeddedServer(uvicorn.Config(app := create_app(settings, store), host="127.0.0.1", port=settings.port,
                                           log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=20) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        await app.state.stream_tail.stop()
        await store.stop()


async def read_messages(client: httpx.AsyncClient, n: int, headers: dict[str, str] | None = None,
                        ) -> tuple[list[Message], list[str], bytes]:
    """Read the stream's raw bytes until ``n`` messages were dispatched, then hang up."""
    raw = b""
    async with client.stream("GET", "/v1/stream", params={"from": "earliest"}, headers=headers or {}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(20):
            async for chunk in resp.aiter_raw():
                raw += chunk
                if len(parse_stream(raw)[0]) >= n:
                    break
    messages, comments = parse_stream(raw)
    return messages, comments, raw


def _raw(source: str, id_: str, headline: str = "Cooperation agreement") -> dict[str, Any]:
    """An enriched event as any producer (kcat) may write it: the models' checks not applied."""
    doc: dict[str, Any] = orjson.loads(dump_event(agreement([ANTING_TOWN])))
    doc.update(source=source, id=id_)
    doc["data"]["title"] = headline
    return doc


@pytest.mark.kafka
async def test_stream_cannot_be_injected_and_resumes_per_source(topics: AntingSettings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids, sources and titles holding LF, CR, CRLF (a forged message each) arrive as exactly one
    message per event with the values intact, U+2028 included; Last-Event-ID resumes right after
    the one event it names when two publishers sent the id "same-1"."""
    # The writer must hold whatever the decoder lets through (a record from kcat, a
    # decoder that checks less): here it checks nothing but JSON.
    monkeypatch.setattr(api, "decode", orjson.loads)
    events = [_raw(f"/press/{i}{brk}id: forged", INJECTED.replace("\n", brk),
                   f"Deal{brk}event: forged{brk}{brk}data: {{}}") for i, brk in enumerate(BREAKS)]
    events.append(_raw("/press/\u2028", "line\u2028separator", "a\u2028b\u2029c"))
    same_a, same_b, tail = _raw("/press/a", "same-1"), _raw("/district/b", "same-1"), _raw("/press/a", "tail")
    events += [same_a, same_b, tail]
    # one key: one partition, so the stream sends them in this order
    await produce(topics, topics.topic(ENRICHED_EVENTS), [orjson.dumps(e) for e in events],
                  [b"anting"] * len(events))
    async with serving(topics) as client:
        messages, comments, raw = await read_messages(client, len(events))
        after_a, resumed_a, _ = await read_messages(client, 2, {"last-event-id": sse.event_id("/press/a", "same-1")})
        after_b, resumed_b, _ = await read_messages(client, 1, {"last-event-id": sse.event_id("/district/b", "same-1")})

    assert "connected" in comments
    assert len(messages) == len(events)  # nothing forged: one message per event
    for message, event in zip(messages, events, strict=True):
        assert message.event == "agreement.signed"
        assert sse.parse_event_id(message.last_event_id) == (event["source"], event["id"])
        data = orjson.loads(message.data)
        assert (data["source"], data["id"], data["data"]["title"]) == (event["source"], event["id"],
                                                                      event["data"]["title"])
    assert not any(m.data == '{"id":"FORGED"}' or m.event == "forged" for m in messages)
    assert "a\u2028b\u2029c".encode() in raw  # not a line break in SSE: written as it is
    # each publisher's "same-1" is its own resume point
    assert any(c.startswith("resuming after") for c in resumed_a + resumed_b)
    assert [orjson.loads(m.data)["source"] for m in after_a] == ["/district/b", "/press/a"]
    assert [orjson.loads(m.data)["id"] for m in after_a] == ["same-1", "tail"]
    assert [orjson.loads(m.data)["id"] for m in after_b] == ["tail"]


@pytest.mark.kafka
async def test_streams_are_capped_per_key_and_per_tenant(topics: AntingSettings, tmp_path: Path) -> None:
    """A key holds at most ANTING_NOTIFY_MAX_STREAMS_PER_KEY streams and a tenant (all its keys)
    at most _PER_TENANT: one more is a 429 problem+json with Retry-After, another tenant is not
    affected, and a stream that ends gives its place back."""
    keys = write_keys(tmp_path / "keys")
    async with contextlib.AsyncExitStack() as stack, serving(
            topics, api_keys_file=str(tmp_path / "keys"), max_streams_per_key=2,
            max_streams_per_tenant=3) as client:

        readers = []  # held: a reader dropped half-way closes its connection

        async def open_stream(key: str) -> httpx.Response:
            resp = await stack.enter_async_context(
                client.stream("GET", "/v1/stream", headers=keys.header(key)))
            if resp.status_code == 200:
                readers.append(reader := resp.aiter_raw())
                async with asyncio.timeout(10):
                    while b"connected" not in await anext(reader):  # open once it says so
                        pass
            else:
                await resp.aread()
            return resp

        first = await open_stream(keys.a)
        assert first.status_code == 200
        assert (await open_stream(keys.a)).status_code == 200
        over_key = await open_stream(keys.a)
        assert over_key.status_code == 429
        assert over_key.headers["content-type"] == "application/problem+json"
        assert int(over_key.headers["retry-after"]) > 0
        assert "2 streams" in orjson.loads(over_key.content)["detail"]
        # another key of the same tenant: its own first stream, the tenant's third
        assert (await open_stream(keys.stream_only)).status_code == 200
        over_tenant = await open_stream(keys.stream_only)
        assert over_tenant.status_code == 429 and "tenant acme" in orjson.loads(over_tenant.content)["detail"]
        # another tenant is not affected
        assert (await open_stream(keys.b)).status_code == 200
        # a stream that ends gives its place back (the server sees the hang-up on its next turn)
        await first.aclose()
        async with asyncio.timeout(10):
            while (again := await open_stream(keys.a)).status_code != 200:  # noqa: ASYNC110 (polls the server)
                await asyncio.sleep(0.2)
        assert again.status_code == 200
