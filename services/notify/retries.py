"""The durable retry schedule: records on ``notify-retries`` (key = idempotency key,
value = the delivery with its next attempt number and channel, header ``anting.due_ms``).

A record carries its key (and its events, each with its source and id): every later
attempt uses that key, never one made again, so a delivery keeps its ``webhook-id`` to
the end — also one scheduled before keys were made from (source, id, subscription).

Its own consumer group reads them; each record waits in a task until it is due
(never blocking the poll), then is attempted. Its offset is committed only after
that attempt finished or wrote the next retry record, so a restart resumes the
schedule: a record due in ten hours is still uncommitted, read again after a restart
and waits for the rest of its time (its due time is in the record, not in memory). While
it waits, only the record's bytes are held, not the decoded delivery: with a schedule of
hours, many more deliveries wait at once than with one of seconds.

The ledger decides whether a record is still to be attempted
(:meth:`~services.notify.ledger.Ledger.suppresses`): a record made stale by a newer
attempt stands down quietly; one whose delivery the ledger shows finished is counted as
suppressed. A dead letter replayed here (attempt 1 of a dead key) gets a fresh set of
attempts.

A due record of a disabled subscription waits until the subscription is enabled again
(then it is attempted at once) or deleted (then it is suppressed); after a restart it
waits again, for as long as ``notify-retries`` keeps it (7 days).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import ConsumerRecord

from services.notify.delivery import DUE_HEADER, Deliverer
from services.notify.ledger import Ledger
from services.notify.notification import Delivery
from services.notify.store import SubscriptionStore
from shared.deadletters import DeadLetterWriter, from_record
from shared.stage import Abandoned

log = logging.getLogger(__name__)


def due_ms(record: ConsumerRecord[bytes, bytes]) -> int:
    """The record's due time (``anting.due_ms``, ms since the epoch); 0 when it has none."""
    for k, v in record.headers or ():
        if k == DUE_HEADER:
            return int(v.decode() or 0)
    return 0


class RetrySchedule:
    """The handler of the ``notify-retries`` stage: wait until due, then attempt."""

    def __init__(self, deliverer: Deliverer, ledger: Ledger, dlq: DeadLetterWriter,
                 stop: asyncio.Event, store: SubscriptionStore | None = None) -> None:
        self.deliverer = deliverer
        self.ledger = ledger
        self.dlq = dlq
        self.stop = stop
        self.store = store or deliverer.store

    def _stands_down(self, delivery: Delivery) -> bool:
        """Whether the ledger stops this record (counted and told by the deliverer)."""
        why = self.ledger.suppresses(delivery.key, delivery.attempt, retry=True)
        if why is None:
            return False
        sub = self.store.get(delivery.subscription_id)
        self.deliverer.suppressed(delivery.event_source, delivery.event_id,
                                  [(self.deliverer.channel_of(delivery, sub), delivery.subscription_id, why)])
        return True

    async def handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Attempt the delivery a retry record holds once it is due (a record that is not one
        goes to ``dead-letters``); raises :class:`~shared.stage.Abandoned` when notify
        stops before then, so the record is read again."""
        try:
            delivery = Delivery.from_json(record.value or b"")
            due = due_ms(record)
        except Exception as exc:
            await self.dlq.send_and_wait(from_record(record, stage="notify", error=exc))
            return
        if self._stands_down(delivery):
            return
        sub_id = delivery.subscription_id
        del delivery  # while it waits, only the record's bytes are held
        wait = due / 1000 - time.time()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)
        while True:
            await self._until_enabled(sub_id)
            delivery = Delivery.from_json(record.value or b"")
            if await self.deliverer.run(delivery, retry=True) is not None:  # None: parked
                return

    async def _until_enabled(self, sub_id: str) -> None:
        """Return once the subscription is enabled or gone; :class:`Abandoned` at shutdown."""
        parked = False
        while True:
            if self.stop.is_set():
                raise Abandoned
            sub = self.store.get(sub_id)
            if sub is None or not sub.disabled:
                if parked:
                    log.debug("retry resumes", extra={"subscription": sub_id})
                return
            parked = True
            await self.store.next_change(sub_id).wait()


__all__ = ["RetrySchedule", "due_ms"]
