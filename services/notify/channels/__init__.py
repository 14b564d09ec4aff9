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
    verdict: Verdict
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


class Channel(Protocol):
    async def send(self, sub: Subscription, delivery: Delivery) -> Result: ...

    async def aclose(self) -> None: ...
