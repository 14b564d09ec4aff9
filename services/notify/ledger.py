"""The delivered-ledger: idempotency key → where that delivery stands, on the
compacted ``notify-ledger`` topic, read into memory at start (so a restart does
not resend what was already delivered) and followed while running.

States: ``delivered``; ``scheduled`` (a retry record with ``attempt`` exists, so
the first-attempt path and older retry records leave it alone); ``dead``;
``digested`` (the event went out inside a digest).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from services.notify.table import CompactedView
from shared.settings import AntingSettings
from shared.topics import NOTIFY_LEDGER

FINAL = frozenset({"delivered", "dead", "digested"})


class Ledger:
    def __init__(self, settings: AntingSettings, producer: Any) -> None:
        self.topic = settings.topic(NOTIFY_LEDGER)
        self.producer = producer
        # Following mostly reads back this instance's own writes (already applied in
        # memory), one per delivery: fetch them in batches of up to 256 KiB or 200 ms
        # instead of one fetch request per few records.
        self.view: CompactedView[dict[str, Any]] = CompactedView(
            settings, self.topic, orjson.loads, fetch_min_bytes=256 * 1024, fetch_max_wait_ms=200)

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()

    def state(self, key: str) -> dict[str, Any] | None:
        return self.view.items.get(key)

    def is_final(self, key: str) -> bool:
        st = self.view.items.get(key)
        return st is not None and st.get("state") in FINAL

    async def mark(self, key: str, state: str, subscription_id: str, attempt: int) -> Any:
        """Record the state; returns the broker-ack future (await it before committing)."""
        entry = {"state": state, "subscription": subscription_id, "attempt": attempt,
                 "at": datetime.now(UTC).isoformat()}
        self.view.items[key] = entry
        return await self.producer.send(self.topic, key=key.encode(), value=orjson.dumps(entry))
