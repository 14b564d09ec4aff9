"""A compacted topic read into memory: catch up to the end at start, then follow it.

Both the subscriptions store and the delivered-ledger are such views, so every
notify instance sees the same state and a restart rebuilds it from Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import TopicPartition

from shared.kafka import make_consumer
from shared.settings import AntingSettings

log = logging.getLogger(__name__)
V = TypeVar("V")


class CompactedView(Generic[V]):
    """key → decoded value for every live key of a topic (a null value deletes)."""

    def __init__(self, settings: AntingSettings, topic: str, decode: Callable[[bytes], V],
                 **consumer_options: Any) -> None:
        self.settings = settings
        self.consumer_options = consumer_options
        self.topic = topic
        self.decode = decode
        self.items: dict[str, V] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._changed = asyncio.Condition()

    def apply(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.items.pop(key, None)
            return
        try:
            decoded = self.decode(value)
            # re-inserted, not updated in place: the dict stays in order of last write,
            # oldest first (the ledger forgets from the front)
            self.items.pop(key, None)
            self.items[key] = decoded
        except Exception as exc:  # one bad record must not hide the rest
            log.warning("unreadable record skipped", extra={"topic": self.topic, "key": key, "error": str(exc)})

    async def start(self, timeout: float = 60.0) -> None:
        """Catch up to the end offsets, then keep following in the background."""
        consumer = make_consumer(self.settings, group_id=None, **self.consumer_options)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self.topic)
            for _ in range(100):
                if parts:
                    break
                await asyncio.sleep(0.1)
                await consumer._client.force_metadata_update()  # the topic may be brand new
                parts = consumer.partitions_for_topic(self.topic)
            if not parts:
                raise RuntimeError(f"topic {self.topic} not found")
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            async with asyncio.timeout(timeout):
                while True:
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                        break
                    await self._poll(consumer, 500)
        except BaseException:
            await consumer.stop()
            raise
        self.ready.set()
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name=f"follow {self.topic}")

    async def _poll(self, consumer: object, timeout_ms: int) -> None:
        batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=5000)  # type: ignore[attr-defined]
        for records in batch.values():
            for r in records:
                if r.key is not None:
                    self.apply(r.key.decode(), r.value)
        if batch:
            async with self._changed:
                self._changed.notify_all()

    async def _follow(self, consumer: object) -> None:
        while True:
            try:
                await self._poll(consumer, 1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("following %s failed; retrying", self.topic, exc_info=True)
                await asyncio.sleep(1)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until the followed state satisfies ``predicate`` (e.g. another instance's write)."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
        return predicate()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            # stopped here, not in the task: a task cancelled before it ever ran has no finally
            await self._consumer.stop()
            self._consumer = None
