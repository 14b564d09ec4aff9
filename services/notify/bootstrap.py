"""notify's composition root: builds every part once and wires them — the producer, the
subscriptions and the ledger (compacted views of their topics), the channels, the
deliverer, digests, the dead-letter writer, the event pipeline and the retry schedule —
and runs the two consumer groups. Tests build a :class:`Notifier` with their own
channels or resolver through the same door. (The shape is cosmicpython's
``bootstrap.py``: handlers do not build what they use.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from services.notify.channels import Sender
from services.notify.channels.chat import AppriseSender
from services.notify.channels.log import LogSender
from services.notify.channels.smtp import EmailSender
from services.notify.channels.webhook import WebhookSender
from services.notify.delivery import Deliverer
from services.notify.digest import Digests
from services.notify.ledger import Ledger
from services.notify.pipeline import EventPipeline
from services.notify.retries import RetrySchedule
from services.notify.settings import NotifySettings
from services.notify.ssrf import Resolver, system_resolver
from services.notify.store import SubscriptionStore
from shared.consumer_loop import ConsumerLoop
from shared.deadletters import DeadLetterWriter, from_record
from shared.kafka import (
    RecordBatches,
    RenewingProducer,
    cluster_answers,
    ensure_topics,
    make_consumer,
    make_producer,
)
from shared.kafka_access import AccessStatus, Doing, until_allowed
from shared.topology import (
    NOTIFY,
    NOTIFY_DIGEST_WINDOWS,
    NOTIFY_EVENTS,
    NOTIFY_LEDGER,
    NOTIFY_RETRY_SCHEDULE,
    NOTIFY_STORE,
)

__all__ = ["Notifier", "default_channels"]

log = logging.getLogger(__name__)


def default_channels(settings: NotifySettings, resolver: Resolver = system_resolver) -> dict[str, Sender]:
    """One sender per channel type (``webhook``, ``email``, ``apprise``, ``log``), from the
    settings; ``resolver`` answers the webhook client's DNS lookups (tests give their own)."""
    return {
        "webhook": WebhookSender(settings.networks(), settings.timeout_seconds, settings.concurrency, resolver),
        "email": EmailSender(
            settings.smtp_host, settings.smtp_port, settings.smtp_from,
            username=settings.smtp_username, password=settings.smtp_password,
            starttls=settings.smtp_starttls, timeout=settings.timeout_seconds,
        ),
        "apprise": AppriseSender(settings.egress(), settings.timeout_seconds),
        "log": LogSender(settings.log_dir, settings.log_path),
    }


class Notifier:
    """notify, wired: :meth:`start` (topics, producer, state loaded), :meth:`run` (the
    ``enriched-events``, ``notify-retries`` and ``notify-digests`` groups until stopped),
    :meth:`close`. ``channels`` replaces :func:`default_channels` (tests)."""

    def __init__(self, settings: NotifySettings, channels: Mapping[str, Sender] | None = None) -> None:
        self.settings = settings
        # one producer for every part of notify, replaced after a failed write (its
        # sequence numbers spent: shared/kafka.py); the parts hold this one object
        # (typed as the producer it stands for: every call is the current producer's)
        self.producer = cast(AIOKafkaProducer, RenewingProducer(lambda: make_producer(settings, linger_ms=20)))
        self.store = SubscriptionStore(settings, self.producer)
        self.batches = RecordBatches(self.producer)  # the notifications lines (the ledger's log)
        self.ledger = Ledger(settings, self.producer, self.batches)
        self.channels = channels or default_channels(settings)
        self.deliverer = Deliverer(settings, self.producer, self.store, self.ledger, self.channels)
        self.dlq = DeadLetterWriter(self.producer, settings)
        self.digests = Digests(self.deliverer, self.ledger, self.store, self.producer,
                               NOTIFY_DIGEST_WINDOWS.input(settings.topic_prefix), self.dlq, time_scale=settings.retry_time_scale)
        self.pipeline = EventPipeline(self.store, self.ledger, self.deliverer, self.digests, self.dlq)
        self.stop_event = asyncio.Event()
        self.retry_schedule = RetrySchedule(self.deliverer, self.ledger, self.dlq, self.stop_event, self.store)
        self.store.health = self.ledger.health  # the API shows each subscription's failing state
        if settings.retry_time_scale != 1:
            log.warning("retry schedule and disabling run %g times faster (ANTING_NOTIFY_RETRY_TIME_SCALE): "
                        "for tests and demos only", settings.retry_time_scale)
        self.started = False
        self._consumers: list[AIOKafkaConsumer] = []
        self.loops: list[ConsumerLoop] = []  # the consumer loops, once running
        # the broker refusing notify (credentials, certificate, an ACL): readiness says it,
        # one line per 30 s says it, each part retries with backoff until allowed
        self.access = AccessStatus()
        #: the topics notify's handlers write (a refused one is named as refused Write)
        self.writes = NOTIFY.writes(settings.topic_prefix)

    async def start(self, stop: asyncio.Event | None = None) -> None:
        """Topics, producer, and the in-memory state caught up with Kafka. While the broker
        refuses notify each step is tried again with backoff (see ``access``); returns
        early, not started, when ``stop`` is set meanwhile."""
        stop = stop or asyncio.Event()
        kafka = self.settings.kafka
        steps: tuple[tuple[Callable[[], Awaitable[object]], Doing], ...] = (
            (lambda: ensure_topics(self.settings, NOTIFY.checks),
             Doing(topic_operation="Create", cluster_operation="Create")),
            (self.producer.start, Doing(writes=self.writes)),
            (self.store.start, NOTIFY_STORE.reading(self.settings.topic_prefix)),
            (self.ledger.start, NOTIFY_LEDGER.reading(self.settings.topic_prefix)),
        )
        for step, doing in steps:
            await until_allowed(step, self.access, kafka, doing, stop)
            if stop.is_set():
                return
        self.started = True

    async def ready(self) -> tuple[bool, str]:
        """(ready, why): ready when the broker refuses nothing, the state is loaded and the
        broker answers a metadata request; else the refusal (who may not do what), or why."""
        if self.access.reason is not None:
            return False, self.access.reason
        if not (self.started and self.store.view.ready.is_set() and self.ledger.view.ready.is_set()):
            return False, "loading subscriptions and ledger"
        for loop in self.loops:
            trouble = loop.trouble()
            if trouble is not None:  # a record that keeps failing holds its partition's commits
                return False, trouble
        try:
            await asyncio.wait_for(cluster_answers(self.producer), 3.0)
        except Exception as exc:
            return False, f"broker unreachable: {type(exc).__name__}"
        return True, "broker reachable, state loaded"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work, commit and flush."""
        group, prefix = self.settings.group, self.settings.topic_prefix
        # the loops' groups and topics as declared, under the group setting's value
        retries_group = NOTIFY.group_under(NOTIFY_RETRY_SCHEDULE, group)
        digests_group = NOTIFY.group_under(NOTIFY_DIGEST_WINDOWS, group)
        opts = {"max_poll_records": 1000, "session_timeout_ms": self.settings.session_timeout_ms,
                "heartbeat_interval_ms": min(3000, self.settings.session_timeout_ms // 3)}
        events = make_consumer(self.settings, group_id=group, **opts)
        retries = make_consumer(self.settings, group_id=retries_group, **opts)
        digests = make_consumer(self.settings, group_id=digests_group, **opts)
        self._consumers = [events, retries, digests]
        for consumer in self._consumers:
            await until_allowed(consumer.start, self.access, self.settings.kafka, Doing(), stop)
            if stop.is_set():
                return
        # each loop: the broker refusing it (fetch, commit, its handler's writes) is a wait, not an exit
        kafka, access, writes = self.settings.kafka, self.access, self.writes
        # the loop's consumer, whichever it is now (a loop may replace it: consumer_loop.py)
        self.digests.holds = lambda tp: tp in windows.consumer.assignment()
        main = ConsumerLoop(
            events, NOTIFY_EVENTS.input(prefix), self.pipeline.handle_event,
            max_in_flight=max(4 * self.settings.concurrency, 256),
            commit_interval=self.settings.commit_interval_seconds, name="events",
            # first attempts end within the delivery timeout; the group gives a member
            # its session timeout to rejoin, so wait at most half of that
            revoke_grace=min(self.settings.timeout_seconds, self.settings.session_timeout_ms / 2000),
            on_assigned=functools.partial(self.ledger.assigned, "events"),
            group=group, access=access, kafka=kafka, writes=writes, dead_letter=self._dead_letter,
            new_consumer=lambda: make_consumer(self.settings, group_id=group, **opts),
        )
        sched = ConsumerLoop(
            retries, NOTIFY_RETRY_SCHEDULE.input(prefix), self.retry_schedule.handle,
            max_in_flight=50_000, commit_interval=self.settings.commit_interval_seconds, name="retries",
            on_assigned=functools.partial(self.ledger.assigned, "retries"),
            group=retries_group, access=access, kafka=kafka, writes=writes,
            dead_letter=self._dead_letter,
            new_consumer=lambda: make_consumer(self.settings, group_id=retries_group, **opts),
        )
        windows = ConsumerLoop(
            digests, NOTIFY_DIGEST_WINDOWS.input(prefix), self.digests.handle,
            max_in_flight=50_000, commit_interval=self.settings.commit_interval_seconds, name="digests",
            on_assigned=functools.partial(self.ledger.assigned, "digests"),
            group=digests_group, access=access, kafka=kafka, writes=writes,
            dead_letter=self._dead_letter,
            new_consumer=lambda: make_consumer(self.settings, group_id=digests_group, **opts),
        )
        self.loops = [main, sched, windows]
        for loop in self.loops:
            loop.subscribe()

        async def relay() -> None:
            await stop.wait()
            self.stop_event.set()
            self.store.wake_all()  # retries waiting for a disabled subscription give up for now

        relay_task = asyncio.create_task(relay())
        try:
            await asyncio.gather(main.run(self.stop_event), sched.run(self.stop_event, grace=2.0),
                                 windows.run(self.stop_event, grace=2.0))
        finally:
            relay_task.cancel()
            for c in {*self._consumers, *(loop.consumer for loop in self.loops)}:
                with contextlib.suppress(Exception):
                    await c.stop()

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> Any:
        """A record whose work failed for a reason of its own, again and again, to
        ``dead-letters`` (the consumer loops' ``dead_letter``); returns the write's ack."""
        return await self.dlq.send(from_record(record, stage="notify", error=exc))

    async def close(self) -> None:
        """Close the channels, stop the state's readers, flush the ledger's lines, stop the producer."""
        for ch in self.channels.values():
            with contextlib.suppress(Exception):
                await ch.aclose()
        await self.store.stop()
        await self.ledger.stop()
        with contextlib.suppress(Exception):
            await self.batches.flush()
        with contextlib.suppress(Exception):
            await self.producer.stop()
