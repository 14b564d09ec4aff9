"""The SSE streams of one notify process share one Kafka reader (services/notify/tail.py):
many streams are one consumer, a stream that does not read is ended without holding the
others back, a resume hands over from its own backlog read to the shared reader without
losing or repeating an event, and each stream keeps its own filter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn
from aiokafka.errors import TopicAuthorizationFailedError
from fastapi import FastAPI

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, create_topics, produce
from services.notify import api, sse, tail
from services.notify.api import ResumePoints, create_app, sse_events
from services.notify.store import SubscriptionStore
from services.notify.tail import SharedTail
from shared.http import EmbeddedServer
from shared.settings import AntingSettings
from shared.subscriptions import Filter
from shared.topics import ENRICHED_EVENTS

from .helpers import ACME, ALLIANCE, agreement, announcement, encode, notify_settings

pytestmark = pytest.mark.kafka


class Consumers:
    """Counts the consumers made by the shared reader and by streams' backlog reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: dict[str, int] = {"tail": 0, "backlog": 0}
        for module, name in ((tail, "tail"), (api, "backlog")):
            monkeypatch.setattr(module, "make_consumer", self._counting(module.make_consumer, name))

    def _counting(self, make: Any, name: str) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.made[name] += 1
            return make(*args, **kwargs)
        return counted


@contextlib.asynccontextmanager
async def serving(topics: AntingSettings, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    settings = notify_settings(topics, port=free_port(), **overrides)
    store = SubscriptionStore(settings, producer=None)
    await store.start()
    app = create_app(settings, store)
    server = EmbeddedServer(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                           log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.05)
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=30,
                                     limits=limits) as client:
            yield client, app
    finally:
        server.should_exit = True
        await app.state.stream_tail.stop()  # ends the streams still open
        await task
        await store.stop()


class Stream:
    """One open ``/v1/stream`` response, read line by line."""

    def __init__(self, stack: contextlib.AsyncExitStack, client: httpx.AsyncClient) -> None:
        self.stack = stack
        self.client = client
        self.ids: list[str] = []
        self.comments: list[str] = []

    async def open(self, params: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Stream:
        resp = await self.stack.enter_async_context(
            self.client.stream("GET", "/v1/stream", params=params or {}, headers=headers or {}))
        assert resp.status_code == 200
        self.lines = resp.aiter_lines()
        async with asyncio.timeout(20):
            while ": connected" not in self.comments:
                await self._line()
        return self

    async def _line(self) -> None:
        line = await anext(self.lines)
        if line.startswith(":"):
            self.comments.append(line)
        elif line.startswith("id: "):
            self.ids.append(line[len("id: "):])

    async def read(self, n: int, timeout: float = 30) -> list[str]:
        """Read until ``n`` messages arrived in all; the ids."""
        async with asyncio.timeout(timeout):
            while len(self.ids) < n:
                await self._line()
        return self.ids


def _broker_connections(settings: AntingSettings) -> int:
    """This process's open TCP connections to the bootstrap brokers' ports."""
    ports = {int(address.rsplit(":", 1)[1]) for address in settings.kafka.bootstrap_servers.split(",")}
    return sum(1 for c in psutil.Process().net_connections("tcp")
               if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED)


def _ids(events: list[Any]) -> list[str]:
    return [sse.event_id(e.source, e.id) for e in events]


async def _publish(topics: AntingSettings, events: list[Any]) -> None:
    # one key: one partition, so every stream gets them in this order
    await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [b"anting"] * len(events))


async def test_fifty_streams_share_one_consumer(topics: AntingSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 streams open at once are one consumer (none of their own), and every one gets the
    same events in the order they were written."""
    consumers = Consumers(monkeypatch)
    events = [agreement([ACME], event_id=f"many-{i}") for i in range(10)]
    async with contextlib.AsyncExitStack() as stack, serving(
            topics, max_streams_per_key=100, max_streams_per_tenant=100) as (client, app):
        before = _broker_connections(topics)
        streams = await asyncio.gather(*(Stream(stack, client).open() for _ in range(50)))
        shared: SharedTail = app.state.stream_tail
        assert len(shared.followers) == 50
        # one consumer's connections (bootstrap, then a broker or a few), not 50 consumers'
        assert _broker_connections(topics) - before <= 4
        await _publish(topics, events)
        got = await asyncio.gather(*(s.read(len(events)) for s in streams))
        assert shared.consumers_started == 1
    assert consumers.made == {"tail": 1, "backlog": 0}
    assert all(ids == _ids(events) for ids in got)


class _Connected:
    """A request whose client never hangs up (the generator is driven directly)."""

    async def is_disconnected(self) -> bool:
        return False


async def test_a_stream_that_does_not_read_is_ended_and_holds_no_one_back(topics: AntingSettings) -> None:
    """With room for 5 records per stream, a stream whose client stops reading is dropped
    from the fan-out once 5 wait (the reader never waits for it): the other stream gets all
    20 events meanwhile, and the slow one, read again, sends the 5 it held and ends saying
    it fell behind."""
    settings = notify_settings(topics)
    shared = SharedTail(settings, queue_size=5)
    everything = Filter()
    slow = sse_events(settings, everything, "latest", _Connected(), ResumePoints(), tail=shared)  # type: ignore[arg-type]
    fast = sse_events(settings, everything, "latest", _Connected(), ResumePoints(), tail=shared)  # type: ignore[arg-type]
    try:
        assert await anext(slow) == sse.comment("connected")
        assert await anext(fast) == sse.comment("connected")
        events = [agreement([ACME], event_id=f"slow-{i}") for i in range(20)]

        async def read_fast() -> list[bytes]:
            out = []
            while len(out) < 20:
                chunk = await anext(fast)
                if chunk.startswith(b"id: "):
                    out.append(chunk)
            return out

        reading = asyncio.create_task(read_fast())  # this client keeps up; the slow one reads nothing
        for event in events:  # one at a time: a client that keeps up has read each before the next
            await _publish(topics, [event])
        async with asyncio.timeout(30):
            fast_out = await reading
        assert [c.split(b"\n")[0][4:].decode() for c in fast_out] == _ids(events)
        assert len(shared.followers) == 1  # the slow one was dropped
        slow_out = [chunk async for chunk in slow]  # ends by itself
        assert [c.split(b"\n")[0][4:].decode() for c in slow_out[:-1]] == _ids(events[:5])
        assert b"fell 5 events behind" in slow_out[-1] and b"Last-Event-ID" in slow_out[-1]
    finally:
        await slow.aclose()
        await fast.aclose()
        await shared.stop()


async def test_resume_hands_over_to_the_shared_reader_without_loss_or_repeat(
        topics: AntingSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream resumed by Last-Event-ID from well behind the shared reader reads its backlog
    on its own while events keep coming, then joins the shared reader: every event after
    the one it named arrives exactly once, in order; a live stream meanwhile gets them all.
    A stream resumed after the newest event needs no consumer of its own."""
    consumers = Consumers(monkeypatch)
    first = [agreement([ACME], event_id=f"hand-a{i}") for i in range(30)]
    during = [agreement([ACME], event_id=f"hand-b{i}") for i in range(40)]
    async with contextlib.AsyncExitStack() as stack, serving(topics) as (client, _):
        live = await Stream(stack, client).open()
        await _publish(topics, first)
        assert await live.read(len(first)) == _ids(first)
        # resume after the 5th: 25 in the backlog, 40 more written while it reads
        writing = asyncio.create_task(_publish(topics, during))
        resumed = await Stream(stack, client).open(headers={"last-event-id": _ids(first)[4]})
        await writing
        got = await resumed.read(25 + len(during))
        assert await live.read(len(first) + len(during)) == _ids(first + during)
        await asyncio.sleep(1)  # nothing more, nothing twice
        assert resumed.ids == _ids(first[5:] + during)
        assert any(c.startswith(": resuming after") for c in resumed.comments)
        # resuming after the newest event: caught up already, no consumer of its own
        latest = await Stream(stack, client).open(headers={"last-event-id": _ids(during)[-1]})
        assert any(c.startswith(": resuming after") for c in latest.comments)
        one_more = agreement([ACME], event_id="hand-c")
        await _publish(topics, [one_more])
        assert await latest.read(1) == _ids([one_more])
    assert got == _ids(first[5:] + during)
    assert consumers.made == {"tail": 1, "backlog": 1}


async def test_each_stream_keeps_its_filter(topics: AntingSettings) -> None:
    """Two streams on the one reader, one filtered to announcements of SMIIA: each gets only
    what its own filter lets through."""
    events = [agreement([ACME], event_id="f-1"),
              announcement([ALLIANCE], kind="alliance_established", event_id="f-2"),
              agreement([ACME], event_id="f-3")]
    async with contextlib.AsyncExitStack() as stack, serving(topics) as (client, app):
        everything = await Stream(stack, client).open()
        smiia = await Stream(stack, client).open({"organizations": "smiia", "types": "conference.announcement"})
        await _publish(topics, events)
        assert await everything.read(3) == _ids(events)
        assert await smiia.read(1) == _ids(events[1:2])
        await asyncio.sleep(1)
        assert smiia.ids == _ids(events[1:2])
        assert app.state.stream_tail.consumers_started == 1


async def test_a_failing_reader_ends_its_streams_and_the_next_stream_starts_another(
        topics: AntingSettings) -> None:
    """The shared reader failing (a fetch error) ends every live stream with a comment saying
    why — none is left waiting — and the next stream starts a new reader; stopping it (notify
    stopping) ends the streams too."""
    settings = notify_settings(topics)
    shared = SharedTail(settings)
    first = sse_events(settings, Filter(), "latest", _Connected(), tail=shared)  # type: ignore[arg-type]
    try:
        assert await anext(first) == sse.comment("connected")
        consumer = shared._consumer
        assert consumer is not None

        async def refused(*_: Any, **__: Any) -> Any:
            raise TopicAuthorizationFailedError(settings.topic(ENRICHED_EVENTS))

        consumer.getmany = refused  # type: ignore[method-assign]
        async with asyncio.timeout(10):
            rest = [chunk async for chunk in first]
        assert len(rest) == 1 and b"may not Read" in rest[0], rest
        assert not shared.running and not shared.followers

        second = sse_events(settings, Filter(), "latest", _Connected(), tail=shared)  # type: ignore[arg-type]
        assert await anext(second) == sse.comment("connected")
        assert shared.running and shared.consumers_started == 2
        await shared.stop()
        async with asyncio.timeout(10):
            assert [chunk async for chunk in second] == [sse.comment("the server is stopping")]
    finally:
        await first.aclose()
        await shared.stop()


async def test_no_broker_ends_the_stream_saying_so(topics: AntingSettings) -> None:
    """No broker answering the shared reader: the stream says it cannot read and ends, at once."""
    settings = notify_settings(topics, kafka=topics.kafka.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}))
    shared = SharedTail(settings)
    try:
        async with asyncio.timeout(30):
            out = [chunk async for chunk in sse_events(settings, Filter(), "latest", _Connected(),  # type: ignore[arg-type]
                                                       tail=shared)]
        assert len(out) == 1 and out[0].startswith(b": the stream cannot read events now"), out
        assert not shared.running
    finally:
        await shared.stop()


def test_stopping_notify_ends_its_streams(settings: AntingSettings, tmp_path: Path) -> None:
    """SIGTERM to `anting serve notify` with a stream open: the stream ends with a comment
    saying the server is stopping (its client reconnects elsewhere or later, resuming), and
    the process exits 0 without waiting on the stream."""
    asyncio.run(create_topics(settings))
    port = free_port()
    service = ServiceProcess("notify", settings, tmp_path / "notify.log", ANTING_NOTIFY_PORT=str(port))
    service.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, service.log()[-3000:]
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=20) as client, client.stream("GET", "/v1/stream") as resp:
            lines = resp.iter_lines()
            while next(lines) != ": connected":
                pass
            t0 = time.monotonic()
            code = service.terminate()
            took = time.monotonic() - t0
            rest = list(lines)
    finally:
        code = service.terminate()
    assert code == 0, service.log()[-3000:]
    assert ": the server is stopping" in rest, rest
    assert took < 8, took  # the server's own wait for open requests is 10 s
