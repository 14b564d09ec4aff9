"""notify's composition root: builds every part once and wires them — the producer, the
subscriptions and the ledger (compacted views of their topics), the channels, the
deliverer, digests, the dead-letter writer, the event pipeline and the retry schedule —
and runs its three stages (events, retries, digest windows) on :mod:`shared.stage`.
Tests build a :class:`Notifier` with their own channels or resolver through the same
door. (The shape is cosmicpython's ``bootstrap.py``: handlers do not build what they
use.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiokafka import AIOKafkaProducer, ConsumerRecord

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
from shared.deadletters import DeadLetterWriter, from_record
from shared.kafka import (
    RecordBatches,
    RenewingProducer,
    cluster_answers,
    ensure_topics,
    make_producer,
)
from shared.kafka_access import AccessStatus, Doing, until_allowed
from shared.stage import Guarantee, Stage, StageRunner
from shared.topics import DEAD_LETTERS
from shared.topology import (
    NOTIFY,
    NOTIFY_DIGEST_WINDOWS,
    NOTIFY_EVENTS,
    NOTIFY_LEDGER,
    NOTIFY_RETRY_SCHEDULE,
    NOTIFY_STORE,
    Part,
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
        self.runners: list[StageRunner] = []  # the three stages, once running
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
        for runner in self.runners:
            trouble = runner.trouble
            if trouble is not None:  # a record that keeps failing holds its partition's commits
                return False, trouble
        try:
            await asyncio.wait_for(cluster_answers(self.producer), 3.0)
        except Exception as exc:
            return False, f"broker unreachable: {type(exc).__name__}"
        return True, "broker reachable, state loaded"

    def stage(self, part: Part, name: str, group: str, *, max_in_flight: int,
              revoke_grace_ms: int = 0, stop_grace_ms: int = 2000) -> Stage:
        """``part`` of notify (its topics as declared in :mod:`shared.topology`) as a
        concurrent stage in ``group`` (its group setting's value), in order per key."""
        prefix, s = self.settings.topic_prefix, self.settings
        return Stage(
            name=name, inputs=part.inputs(prefix), outputs=part.outputs(prefix),
            dead_letters=s.topic(DEAD_LETTERS), group=group,
            guarantee=Guarantee.AT_LEAST_ONCE_CONCURRENT, batch_max_records=1000,
            commit_interval_ms=max(1, round(s.commit_interval_seconds * 1000)),
            session_timeout_ms=s.session_timeout_ms, max_in_flight=max_in_flight,
            revoke_grace_ms=revoke_grace_ms, stop_grace_ms=stop_grace_ms)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work, commit and flush."""
        group = self.settings.group
        # the stages' groups as declared, under the group setting's value
        retries_group = NOTIFY.group_under(NOTIFY_RETRY_SCHEDULE, group)
        digests_group = NOTIFY.group_under(NOTIFY_DIGEST_WINDOWS, group)
        # the broker refusing a stage (fetch, commit, its handler's writes) is a wait, not an exit
        settings, access = self.settings, self.access
        events = StageRunner(
            self.stage(NOTIFY_EVENTS, "events", group,
                       max_in_flight=max(4 * settings.concurrency, 256),
                       # first attempts end within the delivery timeout; the group gives a
                       # member its session timeout to rejoin, so wait at most half of that
                       revoke_grace_ms=round(min(settings.timeout_seconds * 1000,
                                                 settings.session_timeout_ms / 2)),
                       stop_grace_ms=10_000),
            settings, self.pipeline.handle_event, access=access,
            on_assigned=functools.partial(self.ledger.assigned, "events"), dead_letter=self._dead_letter)
        retries = StageRunner(
            self.stage(NOTIFY_RETRY_SCHEDULE, "retries", retries_group, max_in_flight=50_000),
            settings, self.retry_schedule.handle, access=access,
            on_assigned=functools.partial(self.ledger.assigned, "retries"), dead_letter=self._dead_letter)
        windows = StageRunner(
            self.stage(NOTIFY_DIGEST_WINDOWS, "digests", digests_group, max_in_flight=50_000),
            settings, self.digests.handle, access=access,
            on_assigned=functools.partial(self.ledger.assigned, "digests"), dead_letter=self._dead_letter)
        self.digests.holds = lambda tp: tp in windows.assignment()
        self.runners = [events, retries, windows]

        async def relay() -> None:
            await stop.wait()
            self.stop_event.set()
            self.store.wake_all()  # retries waiting for a disabled subscription give up for now

        relay_task = asyncio.create_task(relay())
        runs = [asyncio.create_task(runner.run(self.stop_event)) for runner in self.runners]
        try:
            await asyncio.gather(*runs)
        finally:
            relay_task.cancel()
            for run in runs:  # one failed: the others stop with it (each closes its consumer)
                run.cancel()
            await asyncio.gather(*runs, return_exceptions=True)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> Any:
        """A record whose work failed for a reason of its own, again and again, to
        ``dead-letters`` (the stages' ``dead_letter``); returns the write's ack."""
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
