"""The ``anting`` CLI's client of notify's HTTP API (``services/notify/api.py``).

Every command that reads or changes a tenant's subscriptions, and ``anting subscribe``,
goes through here with ``ANTING_API_KEY`` (else the first of ``ANTING_API_KEYS``), so it
sees and changes exactly what that key may: the API scopes each route to the key's
tenant. Nothing here touches Kafka. When notify does not answer, :class:`NotifyUnreachable`
names the URL tried; the caller fails with it and never writes a topic itself (a broker
on ``KAFKA_BOOTSTRAP_SERVERS`` may be another stack's, and Kafka knows no tenants).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx
import orjson

from shared.access import client_key

#: seconds to wait for notify's answer to one request (the stream has no read limit)
TIMEOUT_SECONDS = 10.0


class NotifyUnreachable(Exception):
    """Nothing answered at ``url`` (connection refused, timed out, a name that does not
    resolve); ``why`` is the transport's error."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"notify did not answer at {url} ({why}); is it running "
                         "(`anting serve notify`)? Set ANTING_NOTIFY_URL, or "
                         "ANTING_NOTIFY_HOST/ANTING_NOTIFY_PORT or ANTING_PORT_OFFSET, to where it runs")
        self.url = url


class NotifyRefused(Exception):
    """notify answered ``status`` (not 2xx) at ``url``; ``detail`` is its problem's detail
    and ``errors`` its field paths (``[{"path", "message"}]``)."""

    def __init__(self, url: str, status: int, detail: str, errors: list[dict[str, Any]]) -> None:
        paths = "; ".join(f"{e.get('path')}: {e.get('message')}" for e in errors)
        hint = {401: " (send a key: ANTING_API_KEY)",
                403: " (the key lacks the scope; `anting keys new` makes one with it)"}.get(status, "")
        said = f"{detail}: {paths}" if paths and detail else paths or detail
        super().__init__(f"notify at {url} answered {status}: {said}{hint}")
        self.url = url
        self.status = status
        self.detail = detail
        self.errors = errors


def base_url(environ: Mapping[str, str] = os.environ) -> str:
    """Where notify answers: ``ANTING_NOTIFY_URL``, else ``http://<ANTING_NOTIFY_HOST>:
    <ANTING_NOTIFY_PORT>`` (a wildcard host is asked on 127.0.0.1). Raises
    :class:`shared.settings.SettingsError` for a bad host or port."""
    given = environ.get("ANTING_NOTIFY_URL", "").strip()
    if given:
        return given.rstrip("/")
    from services.notify.settings import NotifySettings
    from shared.settings import load

    settings = load(NotifySettings)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def _problem(resp: httpx.Response) -> tuple[str, list[dict[str, Any]]]:
    """A problem+json answer's detail (else its title, else the start of its body) and errors."""
    try:
        doc = resp.json()
    except ValueError:
        return resp.text[:300], []
    if not isinstance(doc, dict):
        return resp.text[:300], []
    errors = doc.get("errors")
    return str(doc.get("detail") or doc.get("title") or ""), errors if isinstance(errors, list) else []


class NotifyClient:
    """notify's API at ``base`` (``http://host:port``), sending ``key`` as a Bearer token."""

    def __init__(self, base: str, key: str | None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NotifyClient:
        """The client of :func:`base_url` with the CLI's key (:func:`shared.access.client_key`)."""
        return cls(base_url(environ), client_key(environ))

    def url(self, path: str) -> str:
        return self.base + path

    def call(self, method: str, path: str, *, body: bytes | None = None) -> Any:  # Any: the JSON answer
        """One request; the answer's JSON (``None`` for 204). Raises
        :class:`NotifyUnreachable` or :class:`NotifyRefused`."""
        url = self.url(path)
        headers = dict(self.headers)
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            resp = httpx.request(method, url, content=body, headers=headers, timeout=TIMEOUT_SECONDS)
        except httpx.TransportError as exc:
            raise NotifyUnreachable(url, type(exc).__name__) from None
        if not resp.is_success:
            raise NotifyRefused(url, resp.status_code, *_problem(resp))
        return None if resp.status_code == 204 or not resp.content else resp.json()

    def subscriptions(self) -> list[dict[str, Any]]:
        """The key's tenant's subscriptions (an admin key's: every tenant's), each with its
        delivery health, oldest first."""
        return list(self.call("GET", "/v1/subscriptions")["subscriptions"])

    def subscription(self, sub_id: str) -> dict[str, Any]:
        """One subscription; :class:`NotifyRefused` 404 for one the key may not see."""
        return dict(self.call("GET", f"/v1/subscriptions/{_segment(sub_id)}"))

    def create(self, request_json: bytes) -> dict[str, Any]:
        """Create a subscription from its request (JSON); the answer holds a webhook's secret."""
        return dict(self.call("POST", "/v1/subscriptions", body=request_json))

    def delete(self, sub_id: str) -> None:
        self.call("DELETE", f"/v1/subscriptions/{_segment(sub_id)}")

    def enable(self, sub_id: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/subscriptions/{_segment(sub_id)}/enable"))

    def disable(self, sub_id: str) -> dict[str, Any]:
        return dict(self.call("POST", f"/v1/subscriptions/{_segment(sub_id)}/disable"))

    async def stream(self, params: Mapping[str, list[str]], start: str,
                     idle: float | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """The matching events of ``GET /v1/stream`` from ``start`` (``latest`` or
        ``earliest``), each the enriched event with its ``reason``; ends after ``idle``
        seconds without one, or when the server ends the stream. Raises
        :class:`NotifyUnreachable` or :class:`NotifyRefused`."""
        url = self.url("/v1/stream")
        query: list[tuple[str, str | int | float | bool | None]] = [
            (k, v) for k, values in params.items() for v in values]
        query.append(("from", start))
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=None)  # heartbeats come every 15 s
        async with httpx.AsyncClient(timeout=timeout) as http:
            try:
                async with http.stream("GET", url, params=query, headers=self.headers) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        raise NotifyRefused(url, resp.status_code, *_problem(resp))
                    lines = resp.aiter_lines()
                    data: list[str] = []
                    loop = asyncio.get_running_loop()
                    # measured from the last event: keep-alive comments do not count
                    deadline = None if idle is None else loop.time() + idle
                    while True:
                        left = None if deadline is None else max(0.0, deadline - loop.time())
                        try:
                            line = await asyncio.wait_for(anext(lines), left)
                        except (StopAsyncIteration, TimeoutError):
                            return
                        if line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif not line and data:  # a blank line ends a message
                            yield orjson.loads("\n".join(data))
                            data = []
                            deadline = None if idle is None else loop.time() + idle
            except httpx.TransportError as exc:
                raise NotifyUnreachable(url, type(exc).__name__) from None


def _segment(sub_id: str) -> str:
    """``sub_id`` as one path segment: a ``/`` or ``?`` in what a user typed stays in the id."""
    from urllib.parse import quote

    return quote(sub_id, safe="")


__all__ = ["TIMEOUT_SECONDS", "NotifyClient", "NotifyRefused", "NotifyUnreachable", "base_url"]
