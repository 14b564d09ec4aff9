"""The durable retry schedule: records on ``notify-retries`` (key = idempotency key,
value = the delivery with its next attempt number, header ``anting.due_ms``).

A record carries its key (and its events, each with its source and id): every later
attempt uses that key, never one made again, so a delivery keeps its ``webhook-id`` to
the end — also one scheduled before keys were made from (source, id, subscription).

Its own consumer group reads them; each record waits in a task until it is due
(never blocking the poll), then is attempted. Its offset is committed only after
that attempt finished or wrote the next retry record, so a restart resumes the
schedule. Records made stale by a newer attempt, or whose key the ledger shows
delivered, stand down. A dead letter replayed here (attempt 1 of a dead key)
gets a fresh set of attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from services.notify.consume import Abandoned
from services.notify.delivery import DUE_HEADER, Deliverer
from services.notify.ledger import Ledger
from services.notify.notification import Delivery
from shared.deadletters import DeadLetterWriter, from_record

log = logging.getLogger(__name__)


def due_ms(record: Any) -> int:
    for k, v in record.headers or ():
        if k == DUE_HEADER:
            return int(v.decode() or 0)
    return 0


class RetrySchedule:
    def __init__(self, deliverer: Deliverer, ledger: Ledger, dlq: DeadLetterWriter, stop: asyncio.Event) -> None:
        self.deliverer = deliverer
        self.ledger = ledger
        self.dlq = dlq
        self.stop = stop

    def _stands_down(self, delivery: Delivery) -> bool:
        st = self.ledger.state(delivery.key)
        if st is None:
            return False
        state, attempt = st.get("state"), int(st.get("attempt") or 0)
        if state in ("delivered", "digested"):
            return True
        if state == "dead":
            return delivery.attempt > 1  # attempt 1 of a dead key is a replayed dead letter
        return state == "scheduled" and attempt > delivery.attempt

    async def handle(self, record: Any) -> None:
        try:
            delivery = Delivery.from_json(record.value)
            due = due_ms(record)
        except Exception as exc:
            await self.dlq.send_and_wait(from_record(record, stage="notify", error=exc))
            return
        if self._stands_down(delivery):
            return
        wait = due / 1000 - time.time()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)
        if self.stop.is_set():
            raise Abandoned
        if self._stands_down(delivery):
            return
        st = self.ledger.state(delivery.key)
        replay = st is not None and st.get("state") == "dead"
        await self.deliverer.run(delivery, replay=replay)
