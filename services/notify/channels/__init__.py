"""Delivery channels: each turns a :class:`~services.notify.notification.Delivery`
into one outbound message and says how it went (a :class:`Result`), never raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from shared.subscriptions import Subscription

from ..notification import Delivery

Verdict = Literal["ok", "retry", "permanent", "gone"]


#: the most characters of an attempt's ``error`` kept: the text often quotes the receiver
#: (a ``Location``, a reason phrase, an SMTP reply), which a receiver can make as large as
#: it likes, and it is written into the ``notifications``, retry and dead-letter records
MAX_ERROR_CHARS = 1000


@dataclass(frozen=True)
class Result:
    """How an attempt went: ``ok``; ``retry`` (transient: timeout, 5xx, 429, ...);
    ``permanent`` (another 4xx, a refused address); ``gone`` (410: stop sending).
    ``error`` is cut to :data:`MAX_ERROR_CHARS` (an ellipsis and the length say so)."""

    verdict: Verdict
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait

    def __post_init__(self) -> None:
        if self.error is not None and len(self.error) > MAX_ERROR_CHARS:
            cut = f"{self.error[:MAX_ERROR_CHARS]}… ({len(self.error)} characters)"
            object.__setattr__(self, "error", cut)


class Sender(Protocol):
    """What delivers on one channel type (``shared.subscriptions.Channel`` is the
    subscription's configuration of it): ``send`` makes one attempt and never raises;
    ``aclose`` releases connections and files."""

    async def send(self, sub: Subscription, delivery: Delivery) -> Result: ...

    async def aclose(self) -> None: ...


__all__ = ["MAX_ERROR_CHARS", "Result", "Sender", "Verdict"]
