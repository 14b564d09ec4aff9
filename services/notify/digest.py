"""Digests: a subscription with ``digest.window_seconds`` gets one message per window
instead of one per event ("about 20 companies signed agreements" is one ping).

Open windows are durable state in Kafka, not held offsets. The event pipeline writes
each event it collects to ``notify-digests`` (:meth:`Digests.collect`: a one-event
delivery as JSON, keyed by the subscription) and the event's own offset is committed
as soon as the broker has that record — so ``enriched-events`` lag stays honest and a
restart does not re-read hours of traffic. notify's digests group reads
``notify-digests`` (:meth:`Digests.handle`, a stage of :mod:`shared.stage`):
the first record of a subscription opens its window, which closes ``window_seconds``
after that record's timestamp (or when it holds :data:`MAX_EVENTS`); then the events go
out as one ``anting.digest`` delivery, with the usual retries, and only then are their
``notify-digests`` records committed. A crash re-reads the uncommitted records and
reopens each window at its original time, so the digest is sent once, on time.

Keyed by subscription, one subscription's records are in one partition, so one instance
of the group holds a whole window; a window whose partition moved to another instance is
dropped here and sent there. The digest's line on ``notifications`` lists its events
(sources and ids), so the ledger marks each event's own key ``digested`` and neither the
pipeline nor a re-read collects it again. This is the retry schedule's machinery (a topic
of deliveries waiting, read by a group that commits once they are done), used for
waiting on a window instead of a delay.

An event is its (source, id) pair throughout: two publishers' events with the same id
are two events of the digest, and the digest's key is made from the pairs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

from services.notify.delivery import Deliverer
from services.notify.ledger import Ledger
from services.notify.notification import Delivery, digest_key
from services.notify.store import SubscriptionStore
from shared.deadletters import DeadLetterWriter, from_record
from shared.metrics import NOTIFY_DELIVERIES
from shared.subscriptions import Subscription

__all__ = ["MAX_EVENTS", "Digests"]

log = logging.getLogger(__name__)

#: The most events one digest holds; a full window is sent at once.
MAX_EVENTS = 500


@dataclass
class _Window:
    """One subscription's open window, as read from ``notify-digests``."""

    tp: TopicPartition  # where its records are: the window is this instance's while it holds tp
    opened_ms: int  # the first record's timestamp: the window closes window_seconds after it
    events: list[Delivery] = field(default_factory=list)  # one-event deliveries, in order
    keys: set[str] = field(default_factory=set)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    timer: asyncio.TimerHandle | None = None


class Digests:
    """Collects events into their subscriptions' windows (see the module).

    ``holds(tp)`` says whether this instance still holds a ``notify-digests`` partition
    (a window whose partition moved away is dropped, not sent); ``time_scale`` divides
    every window (tests and demos run them faster, as the retry schedule's).
    """

    def __init__(self, deliverer: Deliverer, ledger: Ledger, store: SubscriptionStore,
                 producer: AIOKafkaProducer, topic: str, dlq: DeadLetterWriter, *,
                 time_scale: float = 1.0, holds: Callable[[TopicPartition], bool] | None = None) -> None:
        self.deliverer = deliverer
        self.ledger = ledger
        self.store = store
        self.producer = producer
        self.topic = topic
        self.dlq = dlq
        self.time_scale = time_scale
        self.holds = holds or (lambda _tp: True)
        self.windows: dict[str, _Window] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def collect(self, sub: Subscription, delivery: Delivery) -> asyncio.Future[RecordMetadata]:
        """Write the event (a one-event ``delivery`` for ``sub``) to ``notify-digests``;
        returns the broker acknowledgement, after which the event's own offset may be
        committed. The caller has asked the ledger first (an event digested already is
        not collected again)."""
        NOTIFY_DELIVERIES.labels(sub.channel.type, "suppressed").inc()  # folded into the digest
        ack: asyncio.Future[RecordMetadata] = await self.producer.send(
            self.topic, key=sub.id.encode(), value=delivery.to_json())
        return ack

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> asyncio.Future[None] | None:
        """Put one ``notify-digests`` record into its window; returns the window's future,
        resolved once its digest is delivered or scheduled (the record is committed then),
        or ``None`` when there is nothing to wait for (the event was digested already, or its
        subscription no longer collects: then it is delivered on its own now). A record
        that is not a delivery goes to ``dead-letters``."""
        try:
            one = Delivery.from_json(record.value or b"")
        except Exception as exc:
            await self.dlq.send_and_wait(from_record(record, stage="notify", error=exc))
            return None
        if self.ledger.suppresses(one.key) is not None:
            return None  # went out in a digest already (this record read again after a crash)
        sub = self.store.get(one.subscription_id)
        if sub is None or sub.digest is None:
            # deleted (the deliverer counts it suppressed), or its digest was switched off
            await self.deliverer.run(one)
            return None
        window = self.windows.get(sub.id)
        if window is not None and one.key in window.keys:  # the same event twice in one window
            return window.done
        if window is None:
            window = self.windows[sub.id] = _Window(TopicPartition(record.topic, record.partition),
                                                    record.timestamp)
            closes_in = window.opened_ms / 1000 + sub.digest.window_seconds / self.time_scale - time.time()
            window.timer = asyncio.get_running_loop().call_later(max(0.0, closes_in), self._close, sub.id)
        window.events.append(one)
        window.keys.add(one.key)
        done = window.done
        if len(window.events) >= MAX_EVENTS:
            self._close(sub.id)
        return done

    def _close(self, sub_id: str) -> None:
        window = self.windows.pop(sub_id, None)
        if window is None:
            return
        if window.timer:
            window.timer.cancel()
        if not self.holds(window.tp):
            # handed over: the instance holding the partition now reads these records again
            # and sends the digest; this one's records stay uncommitted here
            log.info("digest window handed over", extra={"subscription": sub_id, "events": len(window.events)})
            window.done.cancel()
            return
        task = asyncio.create_task(self._send(sub_id, window))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, sub_id: str, window: _Window) -> None:
        try:
            events = [e.decoded()[0] for e in window.events]
            delivery = Delivery(
                key=digest_key(sub_id, [(str(e.get("source")), str(e.get("id"))) for e in events]),
                subscription_id=sub_id, events=events, reasons=[e.reasons[0] for e in window.events],
                ingested_ms=min((e.ingested_ms for e in window.events if e.ingested_ms), default=None),
                digest=True, created_at=datetime.now(UTC).isoformat(),
            )
            # its line on notifications (whatever the outcome) marks every event in it
            # ``digested`` in the ledger
            await self.deliverer.run(delivery)
            window.done.set_result(None)
        except asyncio.CancelledError:
            window.done.cancel()  # shutting down: its records stay uncommitted
            raise
        except Exception as exc:
            log.exception("digest send failed; its records stay uncommitted")
            window.done.set_exception(exc)

