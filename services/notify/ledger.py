"""The delivered-ledger: idempotency key → where that delivery stands, on the
compacted ``notify-ledger`` topic, read into memory at start (so a restart does
not resend what was already delivered) and followed while running.

States: ``delivered``; ``scheduled`` (a retry record with ``attempt`` exists, so
the first-attempt path and older retry records leave it alone); ``dead``;
``digested`` (the event went out inside a digest).
"""

from __future__ import annotations

import zlib
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
        # instead of one fetch request per few records, and keep the values as bytes,
        # decoded only when looked up (most are never looked up again).
        self.view: CompactedView[bytes] = CompactedView(
            settings, self.topic, bytes, fetch_min_bytes=256 * 1024, fetch_max_wait_ms=200)
        self._partitions = 0

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()

    def state(self, key: str) -> dict[str, Any] | None:
        raw = self.view.items.get(key)
        if raw is None:
            return None
        entry: dict[str, Any] = orjson.loads(raw)
        return entry

    def is_final(self, key: str) -> bool:
        st = self.state(key)
        return st is not None and st.get("state") in FINAL

    async def mark(self, key: str, state: str, subscription_id: str, attempt: int) -> Any:
        """Record the state; returns the broker-ack future (await it before committing)."""
        value = orjson.dumps({"state": state, "subscription": subscription_id, "attempt": attempt,
                              "at": datetime.now(UTC).isoformat()})
        self.view.items[key] = value
        if not self._partitions:
            self._partitions = len(await self.producer.partitions_for(self.topic))
        # Every key is new (one per delivery), so Kafka's murmur2 partitioner, pure Python
        # in aiokafka, would run for each (~6 µs, the largest single cost of recording a
        # delivery). Only this method writes the ledger, and all it needs is that one key
        # always lands on one partition (compaction keeps its last state): crc32 does that.
        partition = zlib.crc32(key.encode()) % self._partitions
        return await self.producer.send(self.topic, key=key.encode(), value=value, partition=partition)
