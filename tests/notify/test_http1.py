"""The webhook HTTP/1.1 client against raw local servers that answer exactly the
bytes each test scripts: keep-alive, close-delimited and chunked answers, a peer
that drops an idle connection, garbage, silence, header injection, and TLS with a
throwaway CA."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from services.notify.channels.http1 import BadResponse, InvalidURL, WebhookClient, target
from services.notify.ssrf import GuardedResolver

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


async def _to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def client(timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> WebhookClient:
    return WebhookClient(GuardedResolver(LOOPBACK, _to_loopback), timeout, ssl_context=ssl_context,
                         user_agent="test/1")


class Server:
    """A raw HTTP server: ``answer(request_number)`` gives the bytes to write back
    (``None``: close without answering; ``b""``: stay silent)."""

    def __init__(self, answer: Callable[[int], bytes | None], ssl_context: ssl.SSLContext | None = None,
                 close_after: bool = False) -> None:
        self.answer = answer
        self.ssl = ssl_context
        self.close_after = close_after
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                out = self.answer(len(self.requests))
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    async with Server(lambda n: OK) as srv:
        c = client()
        try:
            for i in range(5):
                r = await c.post(f"http://hooks.example:{srv.port}/in?x=1", b'{"n":%d}' % i,
                                 [("content-type", "application/json"), ("webhook-id", "msg_1")])
                assert r.status == 200
        finally:
            await c.aclose()
    assert srv.connections == 1
    head, body = srv.requests[4]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /in?x=1 HTTP/1.1"
    assert f"host: hooks.example:{srv.port}" in lines
    assert "webhook-id: msg_1" in lines and "user-agent: test/1" in lines
    assert "content-length: 7" in lines and body == b'{"n":4}'


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 201 Created\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 201 Created\r\n\r\nbody delimited by the close",
    b"HTTP/1.0 201 Created\r\ncontent-length: 3\r\n\r\nabc",
])
async def test_answers_that_end_the_connection(answer: bytes) -> None:
    """Connection: close, a close-delimited body, HTTP/1.0: the status is read and the next request
    opens a new connection."""
    async with Server(lambda n: answer, close_after=True) as srv:
        c = client()
        try:
            assert (await c.post(f"http://h:{srv.port}/", b"x", [])).status == 201
            assert (await c.post(f"http://h:{srv.port}/", b"y", [])).status == 201
        finally:
            await c.aclose()
    assert srv.connections == 2


async def test_informational_answers_are_skipped() -> None:
    answer = b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n" + OK
    async with Server(lambda n: answer) as srv:
        c = client()
        try:
            assert (await c.post(f"http://h:{srv.port}/", b"x", [])).status == 200
            assert (await c.post(f"http://h:{srv.port}/", b"x", [])).status == 200
        finally:
            await c.aclose()
    assert srv.connections == 1


async def test_a_connection_that_answers_twice_is_not_reused() -> None:
    """Bytes after the answer (a second, unasked-for answer) make the connection unusable: the
    next request goes on a new one and gets its own answer."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 500 Stale\r\ncontent-length: 0\r\n\r\n"
    async with Server(lambda n: answer) as srv:
        c = client()
        try:
            assert (await c.post(f"http://h:{srv.port}/", b"x", [])).status == 200
            await asyncio.sleep(0.05)
            assert (await c.post(f"http://h:{srv.port}/", b"y", [])).status == 200
        finally:
            await c.aclose()
    assert srv.connections == 2


async def test_chunked_answer_and_headers() -> None:
    answer = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nslow \r\n5\r\ndown!\r\n0\r\n\r\n")
    async with Server(lambda n: answer) as srv:
        c = client()
        try:
            r = await c.post(f"http://h:{srv.port}/", b"x", [])
            r2 = await c.post(f"http://h:{srv.port}/", b"x", [])
        finally:
            await c.aclose()
    assert (r.status, r.headers["retry-after"], r2.status) == (429, "7", 429)
    assert srv.connections == 1  # the chunked body was read to its end, so the connection was reused


async def test_idle_connection_closed_by_the_peer_is_replaced() -> None:
    """The receiver closes a keep-alive connection between requests: the next request goes on a new
    connection and arrives once."""
    async with Server(lambda n: OK, close_after=True) as srv:
        c = client()
        try:
            assert (await c.post(f"http://h:{srv.port}/", b"1", [])).status == 200
            await asyncio.sleep(0.05)
            assert (await c.post(f"http://h:{srv.port}/", b"2", [])).status == 200
        finally:
            await c.aclose()
    assert [b for _, b in srv.requests] == [b"1", b"2"] and srv.connections == 2


async def test_reused_connection_closed_before_any_answer_is_retried_once() -> None:
    """The peer drops a reused connection as the request arrives (no byte of an answer): the
    request is sent once more on a new connection; a second silent close is an error."""
    answers = iter([OK, None, OK, OK, None, None])
    async with Server(lambda n: next(answers)) as srv:
        c = client()
        try:
            assert (await c.post(f"http://h:{srv.port}/", b"1", [])).status == 200
            assert (await c.post(f"http://h:{srv.port}/", b"2", [])).status == 200
            assert (await c.post(f"http://h:{srv.port}/", b"3", [])).status == 200
            with pytest.raises(BadResponse):
                await c.post(f"http://h:{srv.port}/", b"4", [])
        finally:
            await c.aclose()
    assert [b for _, b in srv.requests] == [b"1", b"2", b"2", b"3", b"4", b"4"]
    assert srv.connections == 3


async def test_closed_without_answer_and_garbage_are_errors() -> None:
    async with Server(lambda n: None) as srv:
        c = client()
        try:
            with pytest.raises(BadResponse, match="closed before an answer"):
                await c.post(f"http://h:{srv.port}/", b"x", [])
        finally:
            await c.aclose()
    # the head cut off by the close: no status was read, so no answer either
    async with Server(lambda n: b"HTTP/1.1 200 OK\r\ncontent-le", close_after=True) as srv:
        c = client()
        try:
            with pytest.raises(BadResponse, match="closed before an answer"):
                await c.post(f"http://h:{srv.port}/", b"x", [])
        finally:
            await c.aclose()
    async with Server(lambda n: b"SMTP ready\r\n\r\n") as srv:
        c = client()
        try:
            with pytest.raises(BadResponse, match="invalid HTTP response"):
                await c.post(f"http://h:{srv.port}/", b"x", [])
        finally:
            await c.aclose()


async def test_silence_times_out_and_the_connection_is_not_reused() -> None:
    """A silent peer fails the request at its deadline (the client's sweep, not a timer
    per request: on time within a sweep interval, and again after the client was closed
    and used once more)."""
    answers = iter([b"", OK, b""])
    async with Server(lambda n: next(answers)) as srv:
        c = client(timeout=0.3)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await c.post(f"http://h:{srv.port}/", b"x", [])
            assert 0.3 <= loop.time() - t0 < 1.0
            assert (await c.post(f"http://h:{srv.port}/", b"y", [])).status == 200
            await c.aclose()
            with pytest.raises(TimeoutError):
                await c.post(f"http://h:{srv.port}/", b"z", [])
        finally:
            await c.aclose()
    assert srv.connections == 3


async def test_nothing_injectable_reaches_the_wire() -> None:
    c = client()
    with pytest.raises(ValueError):
        await c.post("http://h:1/", b"x", [("x-a", "1\r\nx-injected: yes")])
    for bad in ("ftp://h/x", "http:///nohost", "http://h/a b", "http://h:99999/"):
        with pytest.raises(InvalidURL):
            target(bad)
    assert target("https://[2001:db8::1]/p").head == b"POST /p HTTP/1.1\r\nhost: [2001:db8::1]\r\n"


async def test_tls_checks_the_certificate_against_the_url_host() -> None:
    """HTTPS to a checked IP keeps the URL's host for SNI and certificate checks: a certificate
    for ``hooks.example`` passes, the same server reached as ``other.example`` does not."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("hooks.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with Server(lambda n: OK, ssl_context=server_ctx) as srv:
        c = client(ssl_context=client_ctx)
        try:
            assert (await c.post(f"https://hooks.example:{srv.port}/in", b"x", [])).status == 200
            with pytest.raises(ssl.SSLCertVerificationError):
                await c.post(f"https://other.example:{srv.port}/in", b"x", [])
        finally:
            await c.aclose()
    assert [b for _, b in srv.requests] == [b"x"]
