"""Digests: a subscription with ``digest.window_seconds`` gets one message per window
instead of one per event ("about 20 companies signed agreements" is one ping).

The first matching event opens a window; when it closes (or the buffer is full)
the events go out as one ``anting.digest`` delivery, with the usual retries. The
events' offsets stay uncommitted until then, so a crash re-reads and re-collects
them; the digest's line on ``notifications`` lists its events (sources and ids), so
the ledger marks each event's own key ``digested`` and it is not collected again.

An event is its (source, id) pair throughout: two publishers' events with the same id
are two events of the digest, and the digest's key is made from the pairs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.notify.delivery import Deliverer
from services.notify.ledger import Ledger
from services.notify.matching import Reason
from services.notify.notification import Delivery, digest_key, idempotency_key
from shared.metrics import NOTIFY_DELIVERIES
from shared.subscriptions import Subscription

log = logging.getLogger(__name__)
MAX_EVENTS = 500


@dataclass
class _Buffer:
    events: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[list[Reason]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    ingested_ms: int | None = None
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    timer: asyncio.TimerHandle | None = None


class Digests:
    def __init__(self, deliverer: Deliverer, ledger: Ledger) -> None:
        self.deliverer = deliverer
        self.ledger = ledger
        self.buffers: dict[str, _Buffer] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def add(self, sub: Subscription, event: dict[str, Any], reasons: list[Reason],
            ingested_ms: int | None) -> asyncio.Future[None] | None:
        """Collect the event; returns the future of the digest holding it, resolved once that
        digest is delivered or scheduled (``None``: nothing to wait for). The caller holds the
        event's offset until then, not a task: an open window must not use up the records the
        consumer keeps in flight, or every other subscription would wait for it. The caller
        has asked the ledger first (an event digested already is not collected again)."""
        assert sub.digest is not None
        key = idempotency_key(str(event.get("source")), str(event.get("id")), sub.id)
        buf = self.buffers.get(sub.id)
        if buf is not None and key in buf.keys:  # the same event twice in one window
            return buf.done
        if buf is None:
            buf = self.buffers[sub.id] = _Buffer()
            buf.timer = asyncio.get_running_loop().call_later(sub.digest.window_seconds, self._flush_soon, sub.id)
        buf.events.append(event)
        buf.reasons.append(reasons)
        buf.keys.add(key)
        if ingested_ms is not None:
            buf.ingested_ms = min(buf.ingested_ms or ingested_ms, ingested_ms)
        NOTIFY_DELIVERIES.labels(sub.channel.type, "suppressed").inc()  # folded into the digest
        done = buf.done
        if len(buf.events) >= MAX_EVENTS:
            self._flush_soon(sub.id)
        return done

    def _flush_soon(self, sub_id: str) -> None:
        buf = self.buffers.pop(sub_id, None)
        if buf is None:
            return
        if buf.timer:
            buf.timer.cancel()
        task = asyncio.create_task(self._flush(sub_id, buf))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _flush(self, sub_id: str, buf: _Buffer) -> None:
        try:
            delivery = Delivery(
                key=digest_key(sub_id, [(str(e.get("source")), str(e.get("id"))) for e in buf.events]),
                subscription_id=sub_id, events=buf.events, reasons=buf.reasons,
                ingested_ms=buf.ingested_ms, digest=True, created_at=datetime.now(UTC).isoformat(),
            )
            # its line on notifications (whatever the outcome) marks every event in it
            # ``digested`` in the ledger
            await self.deliverer.run(delivery)
            buf.done.set_result(None)
        except BaseException as exc:
            log.exception("digest flush failed")
            buf.done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            raise
