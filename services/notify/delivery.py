"""One delivery attempt and what follows from its outcome (the handler of the flow).

- 2xx / sent → ``delivered`` (the ledger has it at once, so no resend).
- timeout, connection error, 5xx, 408, 429, 503 → ``retried``: a retry record on
  ``notify-retries`` due after the subscription's retry
  schedule (``retry`` on the subscription, else ``ANTING_NOTIFY_RETRY_SCHEDULE``: by
  default Standard Webhooks' example, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h,
  24 h), with jitter, or after ``Retry-After`` when that is later (it postpones, never
  hastens); the ledger notes the next attempt so older records stand down.
- 3xx (never followed), other 4xx, a refused address, or the schedule used up → ``dead``:
  the record on ``notifications`` and the delivery in ``dead-letters``.
- 410 → ``dead`` as well, and the subscription is disabled.
- A failure when none of the subscription's deliveries has succeeded for
  ``ANTING_NOTIFY_DISABLE_AFTER_DAYS`` (5) while they kept failing disables the
  subscription too (Svix's rule: "If all attempts to a specific endpoint fail for a
  period of 5 days, the endpoint will be disabled"); the delivery stays scheduled and
  resumes once the subscription is enabled again.

Every outcome goes to ``notifications`` (which the ledger is folded from) and
``anting_notify_deliveries_total``
(``failed`` counts every failed attempt: ``failed = retried + dead``). What is not
attempted — the ledger's :meth:`~services.notify.ledger.Ledger.suppresses` says it is
done or owned elsewhere, or its subscription is gone — goes through
:meth:`Deliverer.suppressed`: counted as ``suppressed`` under its real channel and logged
at info once per event.
The caller's offset may be committed once :meth:`Deliverer.run` returns: by then
every record it wrote has been acknowledged by the broker — unless the caller
passes ``acks``, a list that collects the broker-ack futures instead of waiting on
them (the event pipeline hands them to its stage runner, which commits the
offset once they resolve).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.notify.channels import Result, Sender
from services.notify.ledger import SUPERSEDED, Ledger
from services.notify.notification import Delivery
from services.notify.settings import NotifySettings
from services.notify.slots import FairSlots
from services.notify.store import SubscriptionStore
from shared import tracing
from shared.deadletters import DeadLetterWriter, dead_letter
from shared.kafka import PRODUCER_MAX_REQUEST_BYTES, record_size
from shared.metrics import END_TO_END_SECONDS, NOTIFY_DELIVERIES
from shared.subscriptions import DeliveryOutcome, Subscription
from shared.topics import NOTIFY_RETRIES

log = logging.getLogger(__name__)
DUE_HEADER = "anting.due_ms"
DAY_MS = 86_400_000


def next_delay(delays: tuple[int, ...], attempt: int, jitter: float = 0.0, scale: float = 1.0) -> float | None:
    """Seconds to wait after attempt ``attempt`` failed, from a schedule of ``delays``
    (seconds, before the second attempt onwards), each multiplied by uniform(1 - jitter,
    1 + jitter) and divided by ``scale`` (tests run the schedule faster); ``None`` when the
    schedule is used up. Standard Webhooks recommends "some level of random jitter" so
    that failures caused by the retries' own load do not come back together."""
    if attempt > len(delays):
        return None
    return delays[attempt - 1] * random.uniform(1 - jitter, 1 + jitter) / scale


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Deliverer:
    """Attempts deliveries through the channels and settles each outcome (see the module):
    the one place a delivery's attempt, outcome, ledger line, retry record and dead letter
    are decided."""

    def __init__(
        self,
        settings: NotifySettings,
        producer: AIOKafkaProducer,
        store: SubscriptionStore,
        ledger: Ledger,
        channels: Mapping[str, Sender],
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.store = store
        self.ledger = ledger
        self.channels = channels
        # the outbound calls in flight, shared fairly: a subscription and a tenant each
        # hold a few, and a freed slot goes to the waiting tenants in turn (slots.py)
        self.slots = FairSlots(settings.concurrency, settings.max_in_flight_per_subscription,
                               settings.max_in_flight_per_tenant)
        self.retries = settings.topic(NOTIFY_RETRIES)
        self.dlq = DeadLetterWriter(producer, settings)
        # the largest retry record the producer sends (a digest of many events can be larger;
        # dead letters are cut to fit instead, see shared.deadletters.fit)
        self.max_retry_bytes = PRODUCER_MAX_REQUEST_BYTES
        self.default_delays = settings.default_retry().delays()
        # subscriptions this instance is disabling: of the failures that reach the threshold
        # together, one disables it and its line alone says so
        self._disabling: set[str] = set()

    async def run(self, delivery: Delivery, *, retry: bool = False,
                  acks: list[asyncio.Future[Any]] | None = None) -> DeliveryOutcome | None:
        """Attempt the delivery once and record the outcome; returns it (``suppressed``: not
        attempted, see :meth:`suppressed`), or ``None`` for a retry of a disabled
        subscription: nothing done, the retry schedule waits until it is enabled.

        ``retry``: the attempt comes from a retry record (a dead letter replayed included),
        which the ledger judges as such (:meth:`Ledger.suppresses`).
        ``acks``: collect the broker acknowledgements there instead of waiting for them.
        """
        sub = self.store.get(delivery.subscription_id)
        if sub is None or sub.disabled:
            if sub is not None and retry:
                return None
            why = "subscription disabled" if sub else "subscription deleted"
            channel = self.channel_of(delivery, sub)
            self.suppressed(delivery.event_source, delivery.event_id, [(channel, delivery.subscription_id, why)])
            await self._finish([await self._record(sub, delivery, DeliveryOutcome.suppressed,
                                                   Result("permanent", error=why))], acks)
            return DeliveryOutcome.suppressed
        stopped = self.ledger.suppresses(delivery.key, delivery.attempt, retry=retry)
        if stopped is not None:
            self.suppressed(delivery.event_source, delivery.event_id, [(sub.channel.type, sub.id, stopped)])
            return DeliveryOutcome.suppressed
        tracer = tracing.tracer("notify")
        if tracer is None:
            return await self._attempt(sub, delivery, acks)
        # one span per attempt, under the event's process span (a retry's is a root)
        with tracer.start_as_current_span(f"deliver {sub.channel.type}", attributes={
                "anting.subscription.id": sub.id, "anting.delivery.attempt": delivery.attempt,
                "anting.delivery.channel": sub.channel.type}) as span:
            outcome = await self._attempt(sub, delivery, acks)
            span.set_attribute("anting.delivery.outcome", str(outcome))
            return outcome

    async def _attempt(self, sub: Subscription, delivery: Delivery,
                       acks: list[asyncio.Future[Any]] | None) -> DeliveryOutcome:
        """The attempt itself, through the subscription's channel, and its settling."""
        # waiting for the subscription's turn is part of the attempt: the task stays in
        # flight meanwhile, and a slow endpoint's backlog waits here, not in others' way
        await self.slots.acquire(sub.tenant, sub.id)
        try:
            result = await self.channels[sub.channel.type].send(sub, delivery)
        except Exception as exc:  # a channel bug must not lose the delivery
            log.exception("channel raised")
            result = Result("retry", None, f"{type(exc).__name__}: {exc}")
        finally:
            self.slots.release(sub.tenant, sub.id)
        return await self.settle(sub, delivery, result, acks)

    def channel_of(self, delivery: Delivery, sub: Subscription | None) -> str:
        """The channel type of the delivery's subscription, also when it was deleted: from the
        retry record, else from the subscription's failures in the ledger (a retry record
        exists only after a failure, and retry records written before they named their
        channel have one there). "webhook" only if neither knows it."""
        if sub is not None:
            return sub.channel.type
        return delivery.channel or self.ledger.channel_of(delivery.subscription_id) or "webhook"

    @staticmethod
    def suppressed(event_source: str, event_id: str, deliveries: list[tuple[str, str, str]]) -> None:
        """The one place a delivery not made is counted and told: ``deliveries`` lists, for one
        event (or digest), each (channel type, subscription id, why) that was not attempted —
        why being the ledger's state (``delivered``, ``digested``, ``dead``, ``scheduled``) or
        the subscription's (``subscription deleted`` / ``disabled``). Each counts once in
        ``anting_notify_deliveries_total{outcome="suppressed"}`` under its channel, and the
        event gets one info line. A retry record :data:`~services.notify.ledger.SUPERSEDED`
        by a later attempt is no delivery of its own: neither counted nor logged at info."""
        told = []
        for channel, sub_id, why in deliveries:
            if why == SUPERSEDED:
                continue
            _count(channel, "suppressed")
            told.append(f"{sub_id} ({why})")
        if told:
            log.info("not sent again: %s", ", ".join(told),
                     extra={"event_id": event_id, "event_source": event_source, "count": len(told)})
        elif deliveries:
            log.debug("stale retry record skipped", extra={"event_id": event_id, "event_source": event_source})

    @staticmethod
    async def _finish(futures: list[Any], acks: list[asyncio.Future[Any]] | None) -> None:
        if acks is None:
            await asyncio.gather(*futures)
        else:
            acks.extend(futures)

    def retry_delay(self, sub: Subscription, attempt: int, retry_after: float | None) -> float | None:
        """Seconds until the attempt after ``attempt``: the subscription's schedule (or
        notify's) with jitter, or the receiver's ``Retry-After`` (capped at
        ``retry_after_max_seconds``) when that is longer — it may postpone an attempt, never
        hasten it (``Retry-After: 0`` would spend the schedule at once); ``None`` when the
        schedule is used up."""
        delays = sub.retry.delays() if sub.retry is not None else self.default_delays
        delay = next_delay(delays, attempt, self.settings.retry_jitter, self.settings.retry_time_scale)
        if delay is not None and retry_after is not None:
            delay = max(delay, min(retry_after, self.settings.retry_after_max_seconds))
        return delay

    def disable_reason(self, sub: Subscription, result: Result) -> str | None:
        """Why this failure disables the subscription, or ``None``: a 410, or no delivery of it
        succeeding for ``disable_after_days`` while they kept failing — counted from the first
        failure after the last success, or from when it was last enabled, whichever is later
        (Svix's rule). ``None`` as well when it is disabled already, or being disabled by
        another failure here (the store has the subscription as it is now; ``sub`` may be
        the one read before the attempt)."""
        current = self.store.get(sub.id)
        if current is None or current.disabled or sub.id in self._disabling:
            return None
        if result.verdict == "gone":
            return result.error or "410 Gone"
        scale = self.settings.retry_time_scale
        window_ms = self.settings.disable_after_days * DAY_MS / scale
        since = self.ledger.failing_since(sub.id)
        if window_ms <= 0 or since is None:
            return None
        if current.enabled_at is not None:
            since = max(since, current.enabled_at.timestamp() * 1000)
        if time.time() * 1000 - since < window_ms:
            return None
        scaled = f" (time scaled 1/{scale:g})" if scale != 1 else ""
        return (f"no delivery succeeded for {self.settings.disable_after_days:g} days{scaled}, "
                f"failing since {_iso(since)}; last error: {result.error or 'failed'}")

    async def settle(self, sub: Subscription, delivery: Delivery, result: Result,
                     acks: list[asyncio.Future[Any]] | None = None) -> DeliveryOutcome:
        """Record the attempt's ``result`` and act on it — delivered; retried (a retry record
        due after the schedule's delay); dead (a dead letter) — and disable the subscription
        when the failure says so (see the module); returns the outcome."""
        channel = sub.channel.type
        if result.verdict == "ok":
            if delivery.ingested_ms:
                END_TO_END_SECONDS.observe(
                    max(0.0, time.time() - delivery.ingested_ms / 1000),
                    None if tracing.tracer("notify") is None else tracing.exemplar())
            await self._finish([await self._record(sub, delivery, DeliveryOutcome.delivered, result)], acks)
            _count(channel, "delivered")
            return DeliveryOutcome.delivered
        _count(channel, "failed")
        disable = self.disable_reason(sub, result)
        if disable is not None:
            self._disabling.add(sub.id)  # before any await: the failures after this one see it
        delay = self.retry_delay(sub, delivery.attempt, result.retry_after) if result.verdict == "retry" else None
        retry_record: bytes | None = None
        if delay is not None:
            # the record carries the key, never made again: the same webhook-id to the end
            nxt = dataclasses.replace(delivery, attempt=delivery.attempt + 1, channel=channel)
            retry_record = nxt.to_json()
            size = record_size(delivery.key.encode(), retry_record, [(DUE_HEADER, b"0" * 13)])
            if size > self.max_retry_bytes:
                # a record that cannot be written must not stall the stream (the offset would
                # wait for an acknowledgement that never comes): the delivery is dead, now
                delay = None
                result = dataclasses.replace(result, error=(
                    f"{result.error or 'delivery failed'}; no retry: the retry record is {size} "
                    f"bytes, {self.retries} takes at most {self.max_retry_bytes}"))
        if delay is not None and retry_record is not None:
            due = datetime.now(UTC) + timedelta(seconds=delay)
            await self._finish([
                await self.producer.send(
                    self.retries, key=delivery.key.encode(), value=retry_record,
                    headers=[(DUE_HEADER, str(int(due.timestamp() * 1000)).encode())],
                ),
                await self._record(sub, delivery, DeliveryOutcome.retried, result, next_at=due, disabled=disable),
            ], acks)
            _count(channel, "retried")
            outcome = DeliveryOutcome.retried
        else:
            # dead: permanent failure, 410, or the schedule used up
            replayable = dataclasses.replace(delivery, attempt=1, channel=channel)
            letter = dead_letter(
                stage="notify", error=result.error or "delivery failed",
                key=delivery.key.encode(), value=replayable.to_json(),
                headers=[(DUE_HEADER, b"0")], topic=self.retries,
                extra={"subscription": sub.id, "tenant": sub.tenant, "attempts": str(delivery.attempt),
                       "status_code": str(result.status_code or "")},
            )
            await self._finish([
                await self.dlq.send(letter),
                await self._record(sub, delivery, DeliveryOutcome.dead, result, disabled=disable),
            ], acks)
            _count(channel, "dead")
            log.warning("delivery dead", extra={"subscription": sub.id, "key": delivery.key,
                                                "error": result.error, "attempt": delivery.attempt})
            outcome = DeliveryOutcome.dead
        if disable is not None:
            try:
                if await self.store.disable(sub.id, disable):
                    log.warning("subscription %s disabled: %s", sub.id, disable,
                                extra={"subscription": sub.id, "channel": channel})
            finally:
                self._disabling.discard(sub.id)
        return outcome

    async def _record(
        self, sub: Subscription | None, delivery: Delivery, outcome: DeliveryOutcome,
        result: Result, *, next_at: datetime | None = None, disabled: str | None = None,
    ) -> Any:
        """Send the outcome's line to ``notifications`` (the ledger's log too: see ledger.py);
        returns the broker-ack future."""
        channel = self.channel_of(delivery, sub)
        value = notification_record(delivery, channel, outcome, result, next_at, disabled=disabled,
                                    tenant=sub.tenant if sub is not None else None)
        if outcome is DeliveryOutcome.retried or outcome is DeliveryOutcome.dead:
            return await self.ledger.record(
                delivery, outcome, value, channel=channel, error=result.error,
                next_ms=next_at.timestamp() * 1000 if next_at is not None else None)
        return await self.ledger.record(delivery, outcome, value)


def notification_record(
    delivery: Delivery, channel: str, outcome: DeliveryOutcome, result: Result,
    next_at: datetime | None = None, at: datetime | None = None, disabled: str | None = None,
    tenant: str | None = None,
) -> bytes:
    """A :class:`DeliveryRecord` as JSON, built directly: the same bytes as the model's
    ``model_dump(mode="json", exclude_unset=True)`` with every field but
    ``subscription_disabled`` set (a unit test holds them equal), without building and
    validating a model for every delivery. ``event_sources`` goes with ``event_ids``: the
    ledger makes a digest's events' keys from both. ``subscription_disabled`` (``disabled``)
    is written only on the line of the attempt that disabled the subscription; ``tenant``
    (the subscription's) whenever known: not for a retry of a subscription deleted since."""
    ids = delivery.event_ids
    sources = delivery.event_sources
    line: dict[str, Any] = {"subscription_id": delivery.subscription_id}
    if tenant is not None:
        line["tenant"] = tenant
    line |= {
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
    }
    if disabled is not None:
        line["subscription_disabled"] = disabled
    return orjson.dumps(line, option=orjson.OPT_UTC_Z)


@lru_cache(maxsize=64)
def _counter(channel: str, outcome: str) -> Any:
    return NOTIFY_DELIVERIES.labels(channel, outcome)


def _count(channel: str, outcome: str) -> None:
    """``anting_notify_deliveries_total`` with its label children looked up once."""
    _counter(channel, outcome).inc()


__all__ = ["DAY_MS", "DUE_HEADER", "Deliverer", "next_delay", "notification_record"]
