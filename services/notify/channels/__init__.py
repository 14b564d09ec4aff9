"""Delivery channels: each turns a :class:`~services.notify.notification.Delivery`
into one outbound message and says how it went (a :class:`Result`), never raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from shared.subscriptions import Subscription

from ..notification import Delivery

Verdict = Literal["ok", "retry", "permanent", "gone"]


@dataclass(frozen=True)
class Result:
    """How an attempt went: ``ok``; ``retry`` (transient: timeout, 5xx, 429, ...);
    ``permanent`` (another 4xx, a refused address); ``gone`` (410: stop sending)."""

    verdict: Verdict
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


class Sender(Protocol):
    """What delivers on one channel type (``shared.subscriptions.Channel`` is the
    subscription's configuration of it): ``send`` makes one attempt and never raises;
    ``aclose`` releases connections and files."""

    async def send(self, sub: Subscription, delivery: Delivery) -> Result: ...

    async def aclose(self) -> None: ...


__all__ = ["Result", "Sender", "Verdict"]
