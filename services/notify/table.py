"""A topic read into memory: catch up to the end at start, then follow it
(a view can stop following, and catch up again when asked: see :meth:`catch_up`).

The subscriptions store (a compacted topic: key → value) and the delivered-ledger
(folded from the delivery log: see ledger.py) are such views, so every notify
instance sees the same state and a restart rebuilds it from Kafka.
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
                 since_ms: Callable[[], float] | None = None, **consumer_options: Any) -> None:
        self.settings = settings
        self.consumer_options = consumer_options
        self.topic = topic
        self.decode = decode
        # read at start only the records written at or after this time (ms since the epoch),
        # not the whole topic: for a log kept longer than the view needs
        self.since_ms = since_ms
        self.items: dict[str, V] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None
        self._changed = asyncio.Condition()
        self._tps: list[TopicPartition] = []
        self._stopping: asyncio.Task[None] | None = None  # a follow task being cancelled
        self._catching_up = asyncio.Lock()

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
            self._tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(self._tps)
            await self._seek_start(consumer)
            await self._read_to_end(consumer, timeout)
        except BaseException:
            await consumer.stop()
            raise
        self.ready.set()
        self._consumer = consumer
        self.set_following(True)

    async def _seek_start(self, consumer: Any) -> None:
        if self.since_ms is None:
            await consumer.seek_to_beginning(*self._tps)
            return
        since = int(self.since_ms())
        found = await consumer.offsets_for_times({tp: since for tp in self._tps})
        for tp in self._tps:
            at = found.get(tp)
            if at is None:  # nothing written since: start at the end
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, at.offset)

    async def _read_to_end(self, consumer: Any, timeout: float) -> None:
        ends = await consumer.end_offsets(self._tps)
        async with asyncio.timeout(timeout):
            while True:
                positions = [await consumer.position(tp) for tp in self._tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, self._tps, strict=True)):
                    return
                await self._poll(consumer, 500)

    @property
    def following(self) -> bool:
        return self._task is not None

    def set_following(self, on: bool) -> None:
        """Follow the topic in the background, or stop (its partitions paused: nothing is
        fetched or held) until :meth:`catch_up` or the next ``set_following(True)``."""
        consumer = self._consumer
        if consumer is None or on == self.following:
            return
        if on:
            consumer.resume(*self._tps)
            self._task = asyncio.create_task(self._follow(consumer), name=f"follow {self.topic}")
        else:
            assert self._task is not None
            self._task.cancel()
            self._stopping, self._task = self._task, None
            consumer.pause(*self._tps)

    async def catch_up(self, timeout: float = 60.0) -> None:
        """Read everything written up to now (the end offsets at this call), then go back
        to following or not, as before."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._catching_up:
            following = self.following
            self.set_following(False)
            if self._stopping is not None:  # one reader of the consumer at a time
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stopping
                self._stopping = None
            consumer.resume(*self._tps)
            try:
                await self._read_to_end(consumer, timeout)
            finally:
                consumer.pause(*self._tps)
                self.set_following(following)

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
        for task in (self._task, self._stopping):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._stopping = None
        if self._consumer is not None:
            # stopped here, not in the task: a task cancelled before it ever ran has no finally
            await self._consumer.stop()
            self._consumer = None
