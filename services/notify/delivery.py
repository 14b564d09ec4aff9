"""One delivery attempt and what follows from its outcome (the handler of the flow).

- 2xx / sent → ``delivered`` (the ledger has it at once, so no resend).
- timeout, connection error, 5xx, 408, 429, 503 → ``retried``: a retry record on
  ``notify-retries`` due after ``Retry-After`` (when given) or exponential backoff
  with full jitter; the ledger notes the next attempt so older records stand down.
- 3xx (never followed), other 4xx, a refused address, or the last attempt → ``dead``:
  the record on ``notifications`` and the delivery in ``dead-letters``.
- 410 → ``dead`` as well, and the subscription is disabled.

Every outcome goes to ``notifications`` (which the ledger is folded from) and
``anting_notify_deliveries_total``
(``failed`` counts every failed attempt: ``failed = retried + dead``).
The caller's offset may be committed once :meth:`Deliverer.run` returns: by then
every record it wrote has been acknowledged by the broker — unless the caller
passes ``acks``, a list that collects the broker-ack futures instead of waiting on
them (the event pipeline hands them to its consumer loop, which commits the
offset once they resolve).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from services.notify.channels import Channel, Result
from services.notify.ledger import Ledger
from services.notify.notification import Delivery
from services.notify.settings import NotifySettings
from services.notify.subscriptions import SubscriptionStore
from shared.deadletters import DeadLetterWriter, dead_letter
from shared.metrics import END_TO_END_SECONDS, NOTIFY_DELIVERIES
from shared.subscriptions import DeliveryOutcome, Subscription
from shared.topics import NOTIFY_RETRIES

log = logging.getLogger(__name__)
DUE_HEADER = "anting.due_ms"


def backoff(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


class Slots:
    """At most ``n`` holders at a time, first come first served: what ``async with
    asyncio.Semaphore(n)`` gives, for less (about 3 µs per delivery when 200 deliveries
    wait for 32 slots, as they do under load). A released slot goes straight to the
    next live waiter, so ``free`` is above zero only when nobody waits."""

    __slots__ = ("free", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if self.free > 0:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():  # a cancelled waiter's future is done: skipped
                fut.set_result(None)
                return
        self.free += 1


class Deliverer:
    def __init__(
        self,
        settings: NotifySettings,
        producer: Any,
        store: SubscriptionStore,
        ledger: Ledger,
        channels: Mapping[str, Channel],
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.store = store
        self.ledger = ledger
        self.channels = channels
        self.sem = Slots(settings.concurrency)
        self.retries = settings.topic(NOTIFY_RETRIES)
        self.dlq = DeadLetterWriter(producer, settings)

    async def run(self, delivery: Delivery, *, replay: bool = False,
                  acks: list[asyncio.Future[Any]] | None = None) -> str:
        """Attempt the delivery once and record the outcome; returns it.

        ``replay`` (a dead letter sent back by ``anting dlq replay``) skips the ledger check.
        ``acks``: collect the broker acknowledgements there instead of waiting for them.
        """
        sub = self.store.get(delivery.subscription_id)
        if sub is None or sub.disabled:
            channel = sub.channel.type if sub else "webhook"
            why = "subscription disabled" if sub else "subscription deleted"
            _count(channel, "suppressed")
            await self._finish([await self._record(sub, delivery, DeliveryOutcome.suppressed,
                                                   Result("permanent", error=why))], acks)
            return "suppressed"
        if not replay and self.ledger.is_final(delivery.key):
            _count(sub.channel.type, "suppressed")
            return "suppressed"
        async with self.sem:
            try:
                result = await self.channels[sub.channel.type].send(sub, delivery)
            except Exception as exc:  # a channel bug must not lose the delivery
                log.exception("channel raised")
                result = Result("retry", None, f"{type(exc).__name__}: {exc}")
        return await self.settle(sub, delivery, result, acks)

    @staticmethod
    async def _finish(futures: list[Any], acks: list[asyncio.Future[Any]] | None) -> None:
        if acks is None:
            await asyncio.gather(*futures)
        else:
            acks.extend(futures)

    async def settle(self, sub: Subscription, delivery: Delivery, result: Result,
                     acks: list[asyncio.Future[Any]] | None = None) -> str:
        channel = sub.channel.type
        if result.verdict == "ok":
            if delivery.ingested_ms:
                END_TO_END_SECONDS.observe(max(0.0, time.time() - delivery.ingested_ms / 1000))
            await self._finish([await self._record(sub, delivery, DeliveryOutcome.delivered, result)], acks)
            _count(channel, "delivered")
            return "delivered"
        _count(channel, "failed")
        if result.verdict == "retry" and delivery.attempt < self.settings.max_attempts:
            if result.retry_after is not None:
                delay = min(result.retry_after, self.settings.retry_after_max_seconds)
            else:
                delay = backoff(delivery.attempt, self.settings.backoff_base_seconds,
                                self.settings.backoff_max_seconds)
            due = datetime.now(UTC) + timedelta(seconds=delay)
            nxt = dataclasses.replace(delivery, attempt=delivery.attempt + 1)
            await self._finish([
                await self.producer.send(
                    self.retries, key=delivery.key.encode(), value=nxt.to_json(),
                    headers=[(DUE_HEADER, str(int(due.timestamp() * 1000)).encode())],
                ),
                await self._record(sub, delivery, DeliveryOutcome.retried, result, next_at=due),
            ], acks)
            _count(channel, "retried")
            return "retried"
        # dead: permanent failure, 410, or out of attempts
        if result.verdict == "gone":
            await self.store.disable(sub.id, result.error or "410 Gone")
        replayable = dataclasses.replace(delivery, attempt=1)
        letter = dead_letter(
            stage="notify", error=result.error or "delivery failed",
            key=delivery.key.encode(), value=replayable.to_json(),
            headers=[(DUE_HEADER, b"0")], topic=self.retries,
            extra={"subscription": sub.id, "attempts": str(delivery.attempt),
                   "status_code": str(result.status_code or "")},
        )
        await self._finish([
            await self.dlq.send(letter),
            await self._record(sub, delivery, DeliveryOutcome.dead, result),
        ], acks)
        _count(channel, "dead")
        log.warning("delivery dead", extra={"subscription": sub.id, "key": delivery.key,
                                            "error": result.error, "attempt": delivery.attempt})
        return "dead"

    async def _record(
        self, sub: Subscription | None, delivery: Delivery, outcome: DeliveryOutcome,
        result: Result, *, next_at: datetime | None = None,
    ) -> Any:
        """Send the outcome's line to ``notifications`` (the ledger's log too: see ledger.py);
        returns the broker-ack future."""
        value = notification_record(
            delivery, sub.channel.type if sub else "webhook", outcome, result, next_at)
        return await self.ledger.record(delivery, outcome, value)


def notification_record(
    delivery: Delivery, channel: str, outcome: DeliveryOutcome, result: Result,
    next_at: datetime | None = None, at: datetime | None = None,
) -> bytes:
    """A :class:`DeliveryRecord` as JSON, built directly: the same bytes as the model's
    ``model_dump(mode="json")`` (a unit test holds them equal), without building and
    validating a model for every delivery. ``event_sources`` goes with ``event_ids``: the
    ledger makes a digest's events' keys from both."""
    ids = delivery.event_ids
    sources = delivery.event_sources
    return orjson.dumps({
        "subscription_id": delivery.subscription_id,
        "event_id": delivery.key if delivery.digest else ids[0],
        "event_source": delivery.event_source if delivery.digest else sources[0],
        "idempotency_key": delivery.key,
        "channel": channel,
        "outcome": outcome,  # an Enum: orjson writes its value
        "attempt": delivery.attempt,
        "at": at or datetime.now(UTC),
        "status_code": result.status_code,
        "error": result.error,
        "next_attempt_at": next_at,
        "reason": delivery.reasons[0] if len(delivery.reasons) == 1 else delivery.all_reasons(),
        "event_ids": ids,
        "event_sources": sources,
        "digest": delivery.digest,
    }, option=orjson.OPT_UTC_Z)


@lru_cache(maxsize=64)
def _counter(channel: str, outcome: str) -> Any:
    return NOTIFY_DELIVERIES.labels(channel, outcome)


def _count(channel: str, outcome: str) -> None:
    """``anting_notify_deliveries_total`` with its label children looked up once."""
    _counter(channel, outcome).inc()
