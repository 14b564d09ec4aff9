"""The webhook client's limits against hostile receivers on real sockets: a header flood,
a 1.2 MB Location, an endless body, a head dripped one byte a second, a status line
without end. Each is a failed attempt (``retry``) with its reason, soon; notify's memory
stays flat meanwhile, and a well-behaved receiver keeps being delivered."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from services.notify.channels import Result
from services.notify.channels.http1 import Limits, ResponseTooLarge, WebhookClient
from services.notify.channels.webhook import WebhookSender
from services.notify.notification import Delivery
from services.notify.ssrf import GuardedResolver
from shared.subscriptions import Subscription, WebhookChannel

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
MB = 1024 * 1024

Chunks = Callable[[], AsyncIterator[bytes]]


async def _flood() -> AsyncIterator[bytes]:
    """300,000 distinct headers, then the end of the head (if the client is still reading)."""
    yield b"HTTP/1.1 200 OK\r\n"
    for start in range(0, 300_000, 1000):
        yield b"".join(b"x-flood-%07d: value-%07d\r\n" % (i, i) for i in range(start, start + 1000))
    yield b"content-length: 0\r\n\r\n"


async def _location() -> AsyncIterator[bytes]:
    yield (b"HTTP/1.1 302 Found\r\nlocation: http://example.invalid/" + b"x" * 1_200_000
           + b"\r\ncontent-length: 0\r\n\r\n")


async def _endless_body() -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"b" * 0x10000 + b"\r\n"
    while True:
        yield chunk


async def _drip() -> AsyncIterator[bytes]:
    for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"s" * 100:
        yield bytes([byte])
        await asyncio.sleep(1.0)


async def _endless_status() -> AsyncIterator[bytes]:
    yield b"HTTP/1.1 200 "
    while True:
        yield b"O" * 0x10000


HOSTILE: dict[str, tuple[Chunks, str]] = {  # what the receiver sends, what the attempt's error says
    "header flood": (_flood, "more than 100 response headers"),
    "1.2 MB Location": (_location, "response head over 65536 bytes"),
    "endless body": (_endless_body, "response body over 1048576 bytes"),
    "slow drip": (_drip, "response head not complete 1.5 s after its first byte"),
    "endless status line": (_endless_status, "status line over 8190 bytes"),
}


class Hostile:
    """A raw server on 127.0.0.1 that reads each request and answers with ``chunks()``,
    as fast as the client takes them, until it has sent them all or the client has gone."""

    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks
        self.sent = 0  # bytes written
        self.requests = 0

    async def __aenter__(self) -> Hostile:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                if self.chunks is _ok:
                    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                    continue
                async for chunk in self.chunks():
                    if writer.is_closing():
                        break
                    writer.write(chunk)
                    self.sent += len(chunk)
                    await writer.drain()
                break
        writer.close()


async def _ok() -> AsyncIterator[bytes]:  # the well-behaved receiver (answered in _serve)
    yield b""


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def _sender() -> WebhookSender:
    sender = WebhookSender(LOOPBACK, timeout=10.0, concurrency=4, resolver=_to_loopback)
    sender.client.limits = Limits(head_seconds=1.5)  # the drip is found out sooner than by default
    return sender


def _sub(port: int, path: str = "/hook") -> Subscription:
    return Subscription(name="t", channel=WebhookChannel(type="webhook", url=f"http://hooks.test:{port}{path}"),
                        id="sub_t", created_at=datetime.now(UTC), secrets=["whsec_" + "A" * 43])


def _delivery() -> Delivery:
    return Delivery("msg_x", "sub_t", [{"specversion": "1.0", "id": "e1", "type": "agreement.signed",
                                        "source": "/t", "data": {"title": "x"}}], [[]])


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_answer_is_a_failed_attempt_with_its_reason(case: str) -> None:
    """Each hostile answer fails the attempt as ``retry``, naming the limit, within 3 s
    (the total timeout is 10 s), and the connection is dropped."""
    chunks, reason = HOSTILE[case]
    sender = _sender()
    try:
        async with Hostile(chunks) as server:
            started = time.monotonic()
            result = await sender.send(_sub(server.port), _delivery())
            took = time.monotonic() - started
    finally:
        await sender.aclose()
    assert result.verdict == "retry" and reason in (result.error or ""), result
    assert took < 3.0, (case, took)
    assert sender.client._idle.get((False, "hooks.test", server.port), []) == []  # not pooled


async def test_client_raises_response_too_large() -> None:
    """The client itself raises ResponseTooLarge (a ConnectionError) for an answer over a limit."""
    client = WebhookClient(GuardedResolver(LOOPBACK, _to_loopback), 5.0, limits=Limits(headers=10))
    async def eleven() -> AsyncIterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(11)) + b"\r\n"

    try:
        async with Hostile(eleven) as server:
            with pytest.raises(ResponseTooLarge, match="more than 10 response headers"):
                await client.post(f"http://h:{server.port}/", b"x", [])
    finally:
        await client.aclose()


async def test_limits_leave_ordinary_answers_alone() -> None:
    """An answer with 100 headers of 8 KB in all, a 1 MiB body and a 103 before it is read whole."""
    async def ordinary() -> AsyncIterator[bytes]:
        yield b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
        yield b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%02d: %s\r\n" % (i, b"v" * 70) for i in range(99))
        yield b"content-length: %d\r\n\r\n" % MB + b"b" * MB

    client = WebhookClient(GuardedResolver(LOOPBACK, _to_loopback), 5.0)
    try:
        async with Hostile(ordinary) as server:
            response = await client.post(f"http://h:{server.port}/", b"x", [])
    finally:
        await client.aclose()
    assert response.status == 200 and len(response.headers) == 100


async def test_memory_stays_flat_and_a_good_receiver_is_served_meanwhile() -> None:
    """All five hostile receivers at once, twice over, through one sender (as notify has):
    resident memory grows by less than 40 MB at any moment, and a well-behaved receiver is
    delivered every 50 ms throughout, each attempt ok."""
    sender = _sender()
    async with contextlib.AsyncExitStack() as stack:
        servers = [await stack.enter_async_context(Hostile(chunks)) for chunks, _ in HOSTILE.values()]
        good = await stack.enter_async_context(Hostile(_ok))
        base = _rss()
        peak = base
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss())
                await asyncio.sleep(0.02)

        good_results: list[Result] = []

        async def deliver_good() -> None:
            while not done.is_set():
                good_results.append(await sender.send(_sub(good.port, "/good"), _delivery()))
                await asyncio.sleep(0.05)

        watcher, steady = asyncio.create_task(watch()), asyncio.create_task(deliver_good())
        try:
            hostile = await asyncio.gather(*(sender.send(_sub(s.port), _delivery())
                                             for s in servers for _ in range(2)))
        finally:
            done.set()
            await asyncio.gather(watcher, steady)
            await sender.aclose()
    assert [r.verdict for r in hostile] == ["retry"] * 10, hostile
    assert peak - base < 40 * MB, f"grew by {(peak - base) / MB:.0f} MB"
    assert len(good_results) >= 10 and all(r.verdict == "ok" for r in good_results), good_results
