"""The delivered-ledger: idempotency key → where that delivery stands, on the
compacted ``notify-ledger`` topic, read into memory at start (so a restart does
not resend what was already delivered) and followed while running.

States: ``delivered``; ``scheduled`` (a retry record with ``attempt`` exists, so
the first-attempt path and older retry records leave it alone); ``dead``;
``digested`` (the event went out inside a digest).

Following costs a consumed record per delivery, nearly all of them this instance's
own writes (about 5% of notify's CPU per delivery). So it is done only while another
instance may be writing: after every rebalance of either consumer group the ledger is
read up to its end (the previous owner's last writes are there before any record is
taken again), and followed afterwards only if this instance does not hold every
partition of both groups — an instance alone delivers everything and is the only
writer. A deployment of several instances follows as before.

Entries are kept for ``LEDGER_RETENTION_MS`` (a week, as long as a retry record
lives): the topic deletes older segments, and :meth:`Ledger.prune` drops older
entries from memory every few minutes, so a long-running notify does not grow
with every delivery it ever made. An event read again after that (an offset reset
to last month) is delivered again — with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

from services.notify.table import CompactedView
from shared.kafka import RecordBatches
from shared.settings import AntingSettings
from shared.topics import LEDGER_RETENTION_MS, NOTIFY_LEDGER

log = logging.getLogger(__name__)
FINAL = frozenset({"delivered", "dead", "digested"})


class Ledger:
    def __init__(self, settings: AntingSettings, producer: Any, batches: RecordBatches | None = None) -> None:
        self.topic = settings.topic(NOTIFY_LEDGER)
        self.producer = producer
        self.batches = batches or RecordBatches(producer)
        # Following mostly reads back this instance's own writes (already applied in
        # memory), one per delivery: fetch them in batches of up to 256 KiB or 200 ms
        # instead of one fetch request per few records, and keep the values as bytes,
        # decoded only when looked up (most are never looked up again).
        self.view: CompactedView[bytes] = CompactedView(
            settings, self.topic, bytes, fetch_min_bytes=256 * 1024, fetch_max_wait_ms=200)
        self._partitions = 0
        self._pruner: asyncio.Task[None] | None = None
        self._holds_all: dict[str, bool] = {}  # consumer group -> holds all its partitions

    async def start(self, prune_every: float = 300.0) -> None:
        await self.view.start()
        self.prune()
        self._pruner = asyncio.create_task(self._prune_every(prune_every), name="ledger prune")

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        await self.view.stop()

    async def assigned(self, group: str, held: int, total: int) -> None:
        """A rebalance of ``group`` left this instance ``held`` of its ``total`` partitions:
        catch up, then follow only while some other instance may write (see the module)."""
        self._holds_all[group] = total > 0 and held >= total
        try:
            await self.view.catch_up()
        except Exception:  # keep going on what was read, and follow from here on
            log.warning("ledger catch-up failed; following it", exc_info=True)
            self.view.set_following(True)
            return
        alone = len(self._holds_all) >= 2 and all(self._holds_all.values())
        self.view.set_following(not alone)
        log.info("ledger caught up", extra={"group": group, "partitions": f"{held}/{total}",
                                            "following": not alone})

    async def _prune_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.prune()

    def prune(self, now_ms: float | None = None) -> int:
        """Forget the entries last written more than the retention ago; how many.
        The view is in order of last write, so this reads only the expired front."""
        cutoff = (time.time() * 1000 if now_ms is None else now_ms) - LEDGER_RETENTION_MS
        expired = []
        for key, raw in self.view.items.items():
            try:
                at = datetime.fromisoformat(orjson.loads(raw)["at"]).timestamp() * 1000
            except (ValueError, KeyError, TypeError):
                at = 0.0  # unreadable: nothing to protect
            if at >= cutoff:
                break
            expired.append(key)
        for key in expired:
            del self.view.items[key]
        if expired:
            log.info("ledger entries past retention forgotten", extra={"count": len(expired)})
        return len(expired)

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
                              "at": datetime.now(UTC)})  # orjson writes it as isoformat() would
        self.view.items.pop(key, None)  # to the end: the view stays in order of last write
        self.view.items[key] = value
        if not self._partitions:
            self._partitions = len(await self.producer.partitions_for(self.topic))
        # Every key is new (one per delivery), so Kafka's murmur2 partitioner, pure Python
        # in aiokafka, would run for each (~6 µs, the largest single cost of recording a
        # delivery). Only this method writes the ledger, and all it needs is that one key
        # always lands on one partition (compaction keeps its last state): crc32 does that.
        partition = zlib.crc32(key.encode()) % self._partitions
        return self.batches.append(self.topic, partition, key.encode(), value)
