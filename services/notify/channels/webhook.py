"""Webhooks per Standard Webhooks: ``webhook-id`` (the stable idempotency key),
``webhook-timestamp``, ``webhook-signature`` (``v1,<base64 HMAC-SHA256>`` with
every current secret of the subscription, space-separated, so a receiver keeps
verifying through a rotation). Redirects are never followed; the SSRF guard
checks the address actually connected to.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime
from functools import lru_cache

import httpx
from standardwebhooks.webhooks import Webhook

from shared.subscriptions import Subscription

from ..notification import Delivery
from ..ssrf import GuardedTransport, Network, RefusedAddress, Resolver, system_resolver
from ..subscriptions import signing_secrets
from . import Result

CONTENT_TYPE = "application/cloudevents+json"
USER_AGENT = "anting-notify/0.1"


@lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    return Webhook(secret)


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: bytes) -> str:
    text = body.decode()
    return " ".join(_signer(s).sign(msg_id, timestamp, text) for s in secrets)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def classify(response: httpx.Response) -> Result:
    code = response.status_code
    if 200 <= code < 300:
        return Result("ok", code)
    if code == 410:
        return Result("gone", code, "410 Gone: the receiver asked to stop")
    if code in (429, 503):
        return Result("retry", code, f"HTTP {code}", retry_after_seconds(response.headers.get("retry-after")))
    if code == 408 or code >= 500:
        return Result("retry", code, f"HTTP {code}")
    if 300 <= code < 400:
        where = response.headers.get("location", "?")
        return Result("permanent", code, f"HTTP {code} redirect to {where} not followed")
    return Result("permanent", code, f"HTTP {code}")


class WebhookSender:
    def __init__(
        self,
        networks: list[Network],
        timeout: float,
        concurrency: int,
        resolver: Resolver = system_resolver,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        transport = GuardedTransport(
            networks, inner or httpx.AsyncHTTPTransport(retries=0, limits=limits), resolver
        )
        self.client = httpx.AsyncClient(
            transport=transport, follow_redirects=False, timeout=timeout,
            headers={"user-agent": USER_AGENT},
        )

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "webhook"
        body = delivery.body()
        now = datetime.now(UTC)
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": delivery.key,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign(signing_secrets(sub, now), delivery.key, now, body),
        }
        try:
            response = await self.client.post(sub.channel.url, content=body, headers=headers)
        except RefusedAddress as exc:
            return Result("permanent", None, f"refused: {exc}")
        except httpx.TimeoutException as exc:
            return Result("retry", None, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return classify(response)

    async def aclose(self) -> None:
        await self.client.aclose()
