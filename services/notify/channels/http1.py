"""The webhook channel's HTTP/1.1 client: one POST, one answer, on pooled
keep-alive connections opened only to addresses the SSRF guard checked.

Why not aiohttp (the client this replaced): at 32 concurrent POSTs to a local
receiver aiohttp spends ~60 µs of CPU per request in its request/response
machinery, and a webhook dispatcher is CPU-bound on exactly that; this client,
which writes the request head itself and leaves parsing to llhttp (httptools,
the parser uvicorn uses), spends ~20 µs (``make bench``: baseline.http_client vs
baseline.http_lean). It does no more than webhooks need: POST with a body,
HTTP/1.1 over TCP or TLS, keep-alive, a total timeout, redirects never followed
(the 3xx is the answer), the body of the answer read and dropped.

A receiver controls the answer, so the answer has limits (:class:`Limits`, each
as aiohttp, h11 or llhttp-based servers bound it): its status line, each header
field, the number of headers, the head's total bytes, the time from its first byte
to the end of its head, the body's bytes, and the whole exchange (``timeout``).
A breach fails the request with :class:`ResponseTooLarge` (or ``TimeoutError``) as
soon as it is seen, and the connection is closed: nothing a receiver sends makes
notify hold more than the limits.

Connections are opened by :func:`open_connection` (one place, so tests can watch
every socket the client opens) to the IPs :meth:`GuardedResolver.checked`
returned, with the URL's host kept for the ``Host`` header, SNI and certificate
checks — so a DNS answer cannot steer the socket past the guard.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

from ..ssrf import GuardedResolver, url_host

IDLE_SECONDS = 30.0  # an idle pooled connection older than this is closed, not reused
SWEEP_SECONDS = 0.05  # how often requests past their deadline are failed (at most)


class InvalidURL(ValueError):
    """Not an http(s) URL this client can send to."""


class BadResponse(ConnectionError):
    """The peer answered something that is not HTTP/1.x, or closed before answering."""


class ResponseTooLarge(BadResponse):
    """The answer broke one of the :class:`Limits`; the message says which."""


@dataclass(frozen=True)
class Limits:
    """What an answer may be. Defaults: aiohttp's ``max_line_size``/``max_field_size``
    (8190 bytes), at most 100 headers, a 64 KiB head (h11's
    ``max_incomplete_event_size`` is 16 KiB), the head complete within 5 s of its first
    byte (a receiver that takes its time before answering is bounded by the total timeout
    only), and 1 MiB of body (read and dropped: a webhook's answer is its status)."""

    status_line_bytes: int = 8190  # the reason phrase, the one part of it that can be long
    field_bytes: int = 8190  # one header's name and value
    headers: int = 100
    head_bytes: int = 64 * 1024  # every byte before the body, informational answers included
    head_seconds: float = 5.0  # from the answer's first byte to the end of its head
    body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """The parts of a URL a request needs, split once per URL."""

    tls: bool
    host: str  # as resolved and checked (no brackets; an IDN host in A-labels)
    port: int
    head: bytes  # "POST <path> HTTP/1.1\r\nhost: ...\r\n"

    @property
    def origin(self) -> tuple[bool, str, int]:
        return self.tls, self.host, self.port


@lru_cache(maxsize=4096)
def target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidURL(f"not an http(s) URL: {url!r}")
    try:
        host = url_host(url)  # the form the guard checks: an IDN host as its A-labels
    except ValueError as exc:
        raise InvalidURL(str(exc)) from None
    if not host:
        raise InvalidURL(f"no host in {url!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError as exc:
        raise InvalidURL(f"bad port in {url!r}") from exc
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != (443 if tls else 80):
        authority += f":{parts.port}"
    line = f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n"
    if not line.isascii() or any(c in path for c in " \r\n\t") or "\r" in authority or "\n" in authority:
        raise InvalidURL(f"URL cannot be sent as a request line: {url!r}")
    return Target(tls, host, port, line.encode("ascii"))


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased; the last value wins


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.response: Response | None = None
        self.closed = False
        self.got_bytes = False  # any byte of an answer to the current request
        self.idle_since = time.monotonic()
        self.deadline = 0.0  # loop time after which the request in flight has timed out
        # the answer measured against the limits (reset per request)
        self.head_done = False
        self.head_len = 0
        self.head_by = 0.0  # loop time by which its head must be complete (0: no byte yet)
        self.status_len = 0
        self.header_count = 0
        self.body_len = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        if not self.got_bytes:
            self.got_bytes = True
            self.head_by = asyncio.get_running_loop().time() + self.limits.head_seconds
        try:
            if self.head_done:
                self.parser.feed_data(data)
            else:
                self._feed_head(data)
        except ResponseTooLarge as exc:
            self._fail(exc)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("unexpected protocol upgrade"))
        except httptools.HttpParserCallbackError as exc:  # a limit raised in a callback
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ResponseTooLarge) else BadResponse(f"invalid HTTP response: {exc}"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"invalid HTTP response: {exc}"))

    def _feed_head(self, data: bytes) -> None:
        """Feed ``data`` while the head is incomplete: no more of it than the head may
        still take, so llhttp never buffers a head (a header's name and value) past
        ``head_bytes``; the rest once the head has ended."""
        room = self.limits.head_bytes - self.head_len
        piece = data if len(data) <= room else data[:room]
        self.head_len += len(piece)
        self.parser.feed_data(piece)
        if len(piece) < len(data):
            if not self.head_done:
                raise ResponseTooLarge(f"response head over {self.limits.head_bytes} bytes")
            self.parser.feed_data(data[len(piece):])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.response is not None and self.response.status:  # the head came; its body ends at close
                self.waiter.set_result(self.response)
            else:
                self.waiter.set_exception(BadResponse(
                    "connection closed before an answer" + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # a second answer to one request
        self.response = Response(0)
        self.header_count = 0
        self.status_len = 0

    def on_status(self, reason: bytes) -> None:  # the reason phrase, perhaps in pieces
        self.status_len += len(reason)
        if self.status_len > self.limits.status_line_bytes:
            raise ResponseTooLarge(f"status line over {self.limits.status_line_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_count += 1
        if self.header_count > self.limits.headers:
            raise ResponseTooLarge(f"more than {self.limits.headers} response headers")
        if len(name) + len(value) > self.limits.field_bytes:
            raise ResponseTooLarge(f"response header {name[:64].decode('latin-1')!r} over "
                                   f"{self.limits.field_bytes} bytes")
        if self.response is not None:
            self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        if self.response is not None:
            self.response.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)
        if self.body_len > self.limits.body_bytes:
            raise ResponseTooLarge(f"response body over {self.limits.body_bytes} bytes")

    def on_message_complete(self) -> None:
        if self.response is not None and 100 <= self.response.status < 200:
            self.response = None  # informational (103 Early Hints, ...): the answer follows
            self.head_done = False  # its head counts towards the answer's head_bytes
            return
        if not self.parser.should_keep_alive():
            self.close()
        if self.waiter is not None and not self.waiter.done() and self.response is not None:
            self.waiter.set_result(self.response)

    # ours
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes, deadline: float) -> asyncio.Future[Response]:
        """Write the request; the answer's future. ``deadline`` (loop time) is kept for
        the client's sweep, which fails the future with ``TimeoutError`` after it."""
        assert self.transport is not None
        self.response = None
        self.got_bytes = False
        self.deadline = deadline
        self.head_done = False
        self.head_len = self.status_len = self.header_count = self.body_len = 0
        self.head_by = 0.0
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return waiter

    def expire(self, now: float) -> None:
        """Fail the request in flight if its deadline has passed, or if its answer began
        more than ``head_seconds`` ago and its head has not ended."""
        if self.waiter is None or self.waiter.done():
            return
        if now >= self.deadline:
            self._fail(TimeoutError())
        elif self.head_by and not self.head_done and now >= self.head_by:
            self._fail(TimeoutError(f"response head not complete {self.limits.head_seconds:g} s "
                                    f"after its first byte"))


async def open_connection(ip: str, port: int, server_hostname: str | None,
                          ssl_context: ssl.SSLContext | None, limits: Limits = Limits()) -> _Connection:
    """Every socket the client opens is opened here, to an already checked ``ip``."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(
        lambda: _Connection(limits), ip, port, ssl=ssl_context, server_hostname=server_hostname)
    return conn


class WebhookClient:
    """POST bodies to URLs; pooled connections per (scheme, host, port); answers within
    ``limits``."""

    def __init__(self, resolver: GuardedResolver, timeout: float, *, max_idle_per_origin: int = 64,
                 ssl_context: ssl.SSLContext | None = None, user_agent: str = "",
                 limits: Limits = Limits()) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.limits = limits
        self.max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._ua = f"user-agent: {user_agent}\r\n".encode("latin-1") if user_agent else b""
        # Requests in flight, and one task that fails those past their deadline every
        # SWEEP_SECONDS while there are any: a timer handle per request (uvloop: a libuv
        # timer started and closed) cost ~3 µs of CPU per delivery, this ~0.2.
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_every = min(SWEEP_SECONDS, timeout / 20)

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _connect(self, t: Target) -> _Connection:
        last: Exception | None = None
        for ip in await self.resolver.checked(t.host, t.port):  # raises RefusedAddress
            try:
                return await open_connection(str(ip), t.port, t.host if t.tls else None,
                                             self._ssl_context() if t.tls else None, self.limits)
            except OSError as exc:
                last = exc
        raise last or ConnectionError(f"cannot connect to {t.host}:{t.port}")

    def _pooled(self, t: Target) -> _Connection | None:
        idle = self._idle.get(t.origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if (not conn.closed and conn.transport is not None and not conn.transport.is_closing()
                    and now - conn.idle_since < IDLE_SECONDS):
                return conn
            conn.close()
        return None

    def _release(self, t: Target, conn: _Connection) -> None:
        if conn.closed:
            return
        idle = self._idle.setdefault(t.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]) -> Response:
        """POST ``body``; the answer's status and headers. Raises :class:`RefusedAddress`
        (a guarded address), :class:`InvalidURL`, ``TimeoutError`` (``timeout`` for the
        whole exchange, connecting included; or a head still incomplete ``head_seconds``
        after its first byte), :class:`ResponseTooLarge` (an answer over :class:`Limits`)
        or ``OSError``/``ConnectionError``."""
        t = target(url)
        head = [t.head, self._ua]
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} cannot be sent")
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        head.append(body)
        data = b"".join(head)
        deadline = asyncio.get_running_loop().time() + self.timeout
        conn = self._pooled(t)
        if conn is not None:
            try:
                return await self._exchange(t, conn, data, deadline)
            except BadResponse:
                # the peer closed an idle keep-alive connection as we reused it (no
                # byte of an answer came): send once more on a new connection
                if conn.got_bytes:
                    raise
        async with asyncio.timeout_at(deadline):
            conn = await self._connect(t)
        return await self._exchange(t, conn, data, deadline)

    async def _exchange(self, t: Target, conn: _Connection, data: bytes, deadline: float) -> Response:
        busy = self._busy
        busy.add(conn)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            response = await conn.send(data, deadline)
        except BaseException:
            conn.close()  # timed out or cancelled mid-exchange: the connection is unusable
            raise
        finally:
            busy.discard(conn)
        self._release(t, conn)
        return response

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._busy:
                await asyncio.sleep(self._sweep_every)
                now = loop.time()
                for conn in list(self._busy):  # expire() may close it: a copy
                    conn.expire(now)
        finally:
            if self._sweeper is asyncio.current_task():
                self._sweeper = None

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await asyncio.sleep(0)


__all__ = ["IDLE_SECONDS", "SWEEP_SECONDS", "BadResponse", "InvalidURL", "Limits", "Response", "ResponseTooLarge",
           "Target",
           "WebhookClient", "open_connection", "target"]
