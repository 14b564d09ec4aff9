"""Webhooks per Standard Webhooks: ``webhook-id`` (the stable idempotency key),
``webhook-timestamp``, ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` with
every current secret of the subscription, space-separated, so a receiver keeps
verifying through a rotation). Redirects are never followed; the SSRF guard is
the client's resolver (for literal addresses as for names), so the address
connected to is the address checked.

The HTTP exchange is :mod:`.http1`'s (why not aiohttp or httpx: see there).
"""

from __future__ import annotations

import base64
import email.utils
import hmac
import time
from binascii import b2a_base64
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import urlsplit

from opentelemetry import propagate, trace

from shared import tracing
from shared.subscriptions import Subscription

from ..notification import Delivery
from ..rendering import body as render_body
from ..ssrf import GuardedResolver, Network, RefusedAddress, Resolver, system_resolver
from ..store import signing_secrets
from . import Result
from .http1 import InvalidURL, WebhookClient

CONTENT_TYPE = "application/cloudevents+json"
USER_AGENT = "anting-notify/0.1"


@lru_cache(maxsize=4096)
def _hmac(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with a ``whsec_`` secret (decoded as standardwebhooks decodes
    it), to be copied per message: the key's padding is hashed once, not per message."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    if not key:
        raise ValueError("empty webhook secret")
    return hmac.new(key, digestmod="sha256")


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` per secret, space-separated —
    the Standard Webhooks scheme, on the body's bytes as sent (no str round trip)."""
    prefix = b"%s.%d." % (msg_id.encode(), int(timestamp.timestamp()))
    out = []
    for s in secrets:
        mac = _hmac(s).copy()
        mac.update(prefix)
        mac.update(body)
        out.append("v1," + b2a_base64(mac.digest(), newline=False).decode())
    return " ".join(out)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (RFC 9110 §10.2.3): delta-seconds (ASCII digits only, so
    not ``²``; a value too large for a float is ``inf``) or an HTTP date (a past one is
    0). None for anything else (negative numbers, fractions, garbage): never raises. How
    far it may move the next attempt is the retry schedule's business
    (:meth:`~services.notify.delivery.Deliverer.retry_delay`)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)  # a str of digits never overflows: a huge one is inf
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):  # what odd dates raise inside email.utils
        return None


def classify(code: int, headers: Mapping[str, str]) -> Result:
    if 200 <= code < 300:
        return Result("ok", code)
    if code == 410:
        return Result("gone", code, "410 Gone: the receiver asked to stop")
    if code in (429, 503):
        return Result("retry", code, f"HTTP {code}", retry_after_seconds(headers.get("retry-after")))
    if code == 408 or code >= 500:
        return Result("retry", code, f"HTTP {code}")
    if 300 <= code < 400:
        where = headers.get("location", "?")
        return Result("permanent", code, f"HTTP {code} redirect to {where} not followed")
    return Result("permanent", code, f"HTTP {code}")


@lru_cache(maxsize=4096)
def _span_attributes(url: str) -> dict[str, str | int]:
    """The client span's attributes of a webhook URL: method, scheme, host and port, not
    ``url.full``: a webhook URL's path or query is often the subscriber's secret, and a
    trace is read by others."""
    attributes: dict[str, str | int] = {"http.request.method": "POST"}
    try:
        parts = urlsplit(url)
        attributes["url.scheme"] = parts.scheme
        attributes["server.address"] = parts.hostname or ""
        attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        pass
    return attributes


class WebhookSender:
    def __init__(
        self,
        networks: list[Network],
        timeout: float,
        concurrency: int,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.networks = networks
        self.client = WebhookClient(GuardedResolver(networks, resolver), timeout,
                                    max_idle_per_origin=max(1, concurrency), user_agent=USER_AGENT)

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "webhook"
        body = render_body(delivery)
        now = datetime.now(UTC)
        headers = (
            ("content-type", CONTENT_TYPE),
            ("webhook-id", delivery.key),
            ("webhook-timestamp", str(int(now.timestamp()))),
            ("webhook-signature", sign(signing_secrets(sub, now), delivery.key, now, body)),
        )
        url = sub.channel.url
        tracer = tracing.tracer("notify")
        if tracer is None:
            return await self._post(url, body, headers)
        # the HTTP client span (semantic conventions for HTTP: named by its method), whose
        # context the receiver gets in `traceparent`, so its own spans join the trace
        with tracer.start_as_current_span("POST", kind=trace.SpanKind.CLIENT,
                                          attributes=_span_attributes(url)) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            result = await self._post(url, body, headers + tuple(carrier.items()))
            if result.status_code is not None:
                span.set_attribute("http.response.status_code", result.status_code)
            if result.verdict != "ok":
                span.set_status(trace.StatusCode.ERROR, result.error)
                span.set_attribute("error.type", str(result.status_code or result.verdict))
            return result

    async def _post(self, url: str, body: bytes, headers: tuple[tuple[str, str], ...]) -> Result:
        """POST and classify the answer; a failure to send is a :class:`Result` too."""
        try:
            # the guard is the client's resolver (ssrf.GuardedResolver): literal hosts in
            # any spelling are checked there too, by the rule subscription creation uses
            response = await self.client.post(url, body, headers)
        except RefusedAddress as exc:
            return Result("permanent", None, f"refused: {exc}")
        except (InvalidURL, ValueError) as exc:
            return Result("permanent", None, str(exc))
        except TimeoutError as exc:  # the whole exchange, or a head that came too slowly
            return Result("retry", None, f"timeout: {exc or type(exc).__name__}")
        except OSError as exc:  # connection refused/reset, TLS, DNS, a garbled, missing or too large answer
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return classify(response.status, response.headers)

    async def aclose(self) -> None:
        await self.client.aclose()


__all__ = ["CONTENT_TYPE", "USER_AGENT", "WebhookSender", "classify", "retry_after_seconds", "sign"]
