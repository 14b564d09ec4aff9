"""The notify flow, wired: consume ``enriched-events`` → match every active
subscription → deliver (or collect into a digest), with bounded concurrency and
off the poll path; a second consumer runs the retry schedule. This is the
composition root: tests build a :class:`Notifier` with their own channels or
resolver through the same door.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from services.notify.channels import Channel
from services.notify.channels.chat import AppriseSender
from services.notify.channels.log import LogSender
from services.notify.channels.smtp import EmailSender
from services.notify.channels.webhook import WebhookSender
from services.notify.delivery import Deliverer
from services.notify.digest import Digests
from services.notify.ledger import Ledger
from services.notify.matching import decode, match
from services.notify.notification import Delivery, idempotency_key
from services.notify.retries import RetrySchedule
from services.notify.settings import NotifySettings
from services.notify.ssrf import Resolver, system_resolver
from services.notify.subscriptions import SubscriptionStore
from shared.consumer_loop import ConsumerLoop
from shared.deadletters import DeadLetterWriter, from_record
from shared.events import record_event_bytes
from shared.kafka import RecordBatches, ensure_topics, make_consumer, make_producer
from shared.metrics import STAGE_SECONDS
from shared.topics import ENRICHED_EVENTS, NOTIFY_RETRIES

log = logging.getLogger(__name__)
_STAGE = STAGE_SECONDS.labels("notify")


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()




def ingested_ms(record: Any) -> int:
    """When the event was accepted: enrich gives each enriched record its input
    record's timestamp (as Kafka Streams does), i.e. when ingest or any producer wrote it."""
    return int(record.timestamp)


def default_channels(settings: NotifySettings, resolver: Resolver = system_resolver) -> dict[str, Channel]:
    return {
        "webhook": WebhookSender(settings.networks(), settings.timeout_seconds, settings.concurrency, resolver),
        "email": EmailSender(
            settings.smtp_host, settings.smtp_port, settings.smtp_from,
            username=settings.smtp_username, password=settings.smtp_password,
            starttls=settings.smtp_starttls, timeout=settings.timeout_seconds,
        ),
        "apprise": AppriseSender(),
        "log": LogSender(settings.log_path),
    }


class Notifier:
    def __init__(self, settings: NotifySettings, channels: Mapping[str, Channel] | None = None) -> None:
        self.settings = settings
        self.producer = make_producer(settings, linger_ms=20)
        self.store = SubscriptionStore(settings, self.producer)
        self.batches = RecordBatches(self.producer)  # the notifications lines (the ledger's log)
        self.ledger = Ledger(settings, self.producer, self.batches)
        self.channels = channels or default_channels(settings)
        self.deliverer = Deliverer(settings, self.producer, self.store, self.ledger, self.channels)
        self.digests = Digests(self.deliverer, self.ledger)
        self.dlq = DeadLetterWriter(self.producer, settings)
        self.stop_event = asyncio.Event()
        self.retry_schedule = RetrySchedule(self.deliverer, self.ledger, self.dlq, self.stop_event, self.store)
        self.store.health = self.ledger.health  # the API shows each subscription's failing state
        if settings.retry_time_scale != 1:
            log.warning("retry schedule and disabling run %g times faster (ANTING_NOTIFY_RETRY_TIME_SCALE): "
                        "for tests and demos only", settings.retry_time_scale)
        self.started = False
        self._consumers: list[Any] = []

    async def start(self) -> None:
        """Topics, producer, and the in-memory state caught up with Kafka."""
        await ensure_topics(self.settings)
        await self.producer.start()
        await self.store.start()
        await self.ledger.start()
        self.started = True

    async def ready(self) -> tuple[bool, str]:
        """Ready when the state is loaded and the broker answers a metadata request."""
        if not (self.started and self.store.view.ready.is_set() and self.ledger.view.ready.is_set()):
            return False, "loading subscriptions and ledger"
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), 3.0)
        except Exception as exc:
            return False, f"broker unreachable: {type(exc).__name__}"
        return True, "broker reachable, state loaded"

    async def handle_event(self, record: Any) -> list[asyncio.Future[Any]] | None:
        """Match the event and make every first attempt; returns what its offset must wait
        for — the broker acknowledgements of the records those attempts wrote, and the
        digests it went into (the consumer loop commits the offset once they resolve) —
        or ``None`` when nothing is pending."""
        t0 = time.perf_counter()
        try:
            # either content mode of the CloudEvents Kafka binding: a record written
            # straight to enriched-events may be binary (ce_* headers, the value is data)
            raw = record_event_bytes(record.value, record.headers)
            event = decode(raw)
        except Exception as exc:
            await self.dlq.send_and_wait(from_record(record, stage="notify", error=exc))
            return None
        at = ingested_ms(record)
        # the webhook body splices two attributes into the record's bytes (see Delivery.source),
        # unless the event has members of those names already
        source = None if "subscription" in event or "reason" in event else raw
        acks: list[asyncio.Future[Any]] = []
        jobs: list[Coroutine[Any, Any, Any]] = []
        suppressed: list[tuple[str, str, str]] | None = None
        for sub in self.store.active():
            reasons = match(event, sub.filter)
            if reasons is None:
                continue
            key = idempotency_key(event["source"], event["id"], sub.id)
            why = self.ledger.suppresses(key)
            if why is not None:
                # delivered, digested, dead, or owned by the retry schedule: told once per event below
                (suppressed := suppressed or []).append((sub.channel.type, sub.id, why))
                continue
            if sub.digest is not None:
                collected = self.digests.add(sub, event, reasons, at)
                if collected is not None:  # the offset waits for the digest, no task does
                    acks.append(collected)
                continue
            delivery = (Delivery(key, sub.id, [event], [reasons], 1, at) if source is None
                        else Delivery.of_record(key, sub.id, source, event["source"], event["id"], reasons, at))
            jobs.append(self.deliverer.run(delivery, acks=acks))
        if suppressed:
            self.deliverer.suppressed(event["source"], event["id"], suppressed)
        del event  # freed now, while still in the CPU's caches (see Delivery.of_record)
        if len(jobs) == 1:
            await jobs[0]
        elif jobs:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for fut in acks:  # the records written are fine; the offset stays uncommitted
                    fut.add_done_callback(_consume_exception)
                raise errors[0]  # left uncommitted: read again after a restart
        _STAGE.observe(time.perf_counter() - t0)
        return acks or None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work, commit and flush."""
        group = self.settings.group
        opts = {"max_poll_records": 1000, "session_timeout_ms": self.settings.session_timeout_ms,
                "heartbeat_interval_ms": min(3000, self.settings.session_timeout_ms // 3)}
        events = make_consumer(self.settings, group_id=group, **opts)
        retries = make_consumer(self.settings, group_id=f"{group}-retries", **opts)
        self._consumers = [events, retries]
        await events.start()
        await retries.start()
        main = ConsumerLoop(
            events, self.settings.topic(ENRICHED_EVENTS), self.handle_event,
            max_in_flight=max(4 * self.settings.concurrency, 256),
            commit_interval=self.settings.commit_interval_seconds, name="events",
            # first attempts end within the delivery timeout; the group gives a member
            # its session timeout to rejoin, so wait at most half of that
            revoke_grace=min(self.settings.timeout_seconds, self.settings.session_timeout_ms / 2000),
            on_assigned=functools.partial(self.ledger.assigned, "events"),
        )
        sched = ConsumerLoop(
            retries, self.settings.topic(NOTIFY_RETRIES), self.retry_schedule.handle,
            max_in_flight=50_000, commit_interval=self.settings.commit_interval_seconds, name="retries",
            on_assigned=functools.partial(self.ledger.assigned, "retries"),
        )
        main.subscribe()
        sched.subscribe()

        async def relay() -> None:
            await stop.wait()
            self.stop_event.set()
            self.store.wake_all()  # retries waiting for a disabled subscription give up for now

        relay_task = asyncio.create_task(relay())
        try:
            await asyncio.gather(main.run(self.stop_event), sched.run(self.stop_event, grace=2.0))
        finally:
            relay_task.cancel()
            for c in (events, retries):
                with contextlib.suppress(Exception):
                    await c.stop()

    async def close(self) -> None:
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.aclose()
        await self.store.stop()
        await self.ledger.stop()
        with contextlib.suppress(Exception):
            await self.batches.flush()
        with contextlib.suppress(Exception):
            await self.producer.stop()
