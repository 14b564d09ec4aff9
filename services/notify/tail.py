"""One Kafka reader of the enriched topic shared by every SSE stream of a notify process.

A stream that is caught up ("live") does not read Kafka itself: :class:`SharedTail` has
one consumer, assigned every partition of the topic and reading from its end as it was
when the first stream joined, and hands each record to every live stream through that
stream's own bounded queue (:class:`Follower`). 500 streams are one consumer and one set
of broker connections, not 500.

Nothing a stream does can hold the reader or the other streams back: the reader only ever
puts into a queue without waiting. A stream whose queue is full (a client that reads more
slowly than events arrive, ``SSE_FOLLOWER_QUEUE`` records behind) is *ended*: it is
dropped from the fan-out and its generator ends the response with a comment saying so;
the client reconnects with ``Last-Event-ID`` and resumes from its position, reading the
backlog on its own (see ``services/notify/api.py``).

A stream that starts in the past (a ``Last-Event-ID`` resume, or ``from=earliest``)
joins first, so its queue holds everything from the reader's position at that moment,
then reads the backlog with a short-lived consumer of its own up to that position,
and only then takes from its queue, skipping records at offsets it already sent: no
event is lost or sent twice at the hand-over.

When the reader fails (the broker refuses it, the topic is gone, a fetch error), every
follower is ended with the reason and the reader stops; the next stream starts a new one.
:meth:`SharedTail.stop` (notify stopping) ends the followers and closes the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.notify.settings import NotifySettings
from shared.kafka import make_consumer, wait_for_partitions
from shared.kafka_access import Doing, denial
from shared.topology import NOTIFY_STREAM

log = logging.getLogger(__name__)

#: Records a live stream may have waiting before it is ended as too slow.
SSE_FOLLOWER_QUEUE = 1_000


class TailUnavailable(RuntimeError):
    """The shared reader could not start (no broker answers, access refused, the topic has
    no partitions within the wait); the message says why."""


@dataclass(eq=False)
class Follower:
    """One stream's place in the fan-out: ``queue`` holds the records the shared reader
    read since the stream joined (``ConsumerRecord``, in each partition's order), at most
    ``maxsize``; ``start`` is the reader's next offset per partition when it joined (every
    record from there on is queued); ``ended`` is set, with ``reason``, once the reader
    dropped this follower (its queue overflowed, the reader failed or stopped)."""

    start: dict[int, int]
    maxsize: int = SSE_FOLLOWER_QUEUE
    queue: asyncio.Queue[ConsumerRecord[Any, Any]] = field(init=False)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.maxsize)

    def end(self, reason: str) -> None:
        """Mark this follower ended for ``reason`` (the first reason is kept)."""
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()

    async def next(self, timeout: float) -> ConsumerRecord[Any, Any] | None:
        """The next queued record, waiting up to ``timeout`` seconds; ``None`` when none
        came in that time or the follower is ended and its queue is empty."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        if self.ended.is_set():
            return None
        getter = asyncio.ensure_future(self.queue.get())
        ended = asyncio.ensure_future(self.ended.wait())
        try:
            await asyncio.wait({getter, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        return None


class SharedTail:
    """The one consumer of ``settings``' enriched topic that feeds every live SSE stream
    of this process (see the module). Started by the first :meth:`join`, stopped by
    :meth:`stop`. ``consumers_started`` counts the consumers it made (tests and metrics:
    it stays 1 however many streams join while the reader runs)."""

    def __init__(self, settings: NotifySettings, queue_size: int = SSE_FOLLOWER_QUEUE) -> None:
        self.settings = settings
        self.topic = NOTIFY_STREAM.input(settings.topic_prefix)
        self.queue_size = queue_size
        self.followers: set[Follower] = set()
        self.positions: dict[int, int] = {}  # the reader's next offset per partition
        self.consumers_started = 0
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Whether the reader is reading now."""
        # no consumer once it failed, even while that consumer is still closing
        return self._consumer is not None and self._task is not None and not self._task.done()

    async def join(self) -> Follower:
        """A new follower, queued every record from the reader's position now on (started
        first if it is not running). Raises :class:`TailUnavailable` when the reader cannot
        start; the caller ends its stream then."""
        async with self._lock:
            if not self.running:
                await self._start()
            follower = Follower(dict(self.positions), self.queue_size)
            self.followers.add(follower)
            return follower

    def leave(self, follower: Follower) -> None:
        """Drop ``follower`` from the fan-out (its stream ended); twice does nothing."""
        self.followers.discard(follower)

    async def _start(self) -> None:
        consumer = make_consumer(self.settings, group_id=None, auto_offset_reset="latest")
        try:
            await consumer.start()
            tps = await wait_for_partitions(consumer, self.topic, timeout=5.0)
            if not tps:
                raise TailUnavailable(f"topic {self.topic} has no partitions")
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            self.positions = {tp.partition: await consumer.position(tp) for tp in tps}
        except BaseException as exc:  # the joining client gone (cancelled) too: no consumer left open
            with contextlib.suppress(Exception):
                await asyncio.shield(consumer.stop())
            if isinstance(exc, TailUnavailable) or not isinstance(exc, Exception):
                raise
            raise TailUnavailable(self._why(exc)) from exc
        self.consumers_started += 1
        self._consumer = consumer
        self._task = asyncio.create_task(self._read(consumer), name="sse-shared-tail")

    def _why(self, exc: BaseException) -> str:
        line = denial(exc, self.settings.kafka, Doing(reads=(self.topic,)))
        return line or f"reading {self.topic} failed: {type(exc).__name__}: {exc}"

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        reason = "the server is stopping"
        try:
            while True:
                # a batch never fills a queue alone: a stream that keeps up is never ended
                batch = await consumer.getmany(timeout_ms=500, max_records=min(500, self.queue_size))
                for tp, records in batch.items():
                    for r in records:
                        self._fan_out(r)
                    # past any control or aborted records too (read_committed)
                    self.positions[tp.partition] = await consumer.position(tp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = self._why(exc)
            log.warning("the shared stream reader stopped", extra={"reason": reason})
        finally:
            self._consumer = None
            for follower in list(self.followers):
                follower.end(reason)
            self.followers.clear()
            with contextlib.suppress(Exception):
                await asyncio.shield(consumer.stop())

    def _fan_out(self, record: ConsumerRecord[Any, Any]) -> None:
        self.positions[record.partition] = record.offset + 1
        for follower in list(self.followers):
            try:
                follower.queue.put_nowait(record)
            except asyncio.QueueFull:
                # never wait for one stream: the others and the reader go on
                self.followers.discard(follower)
                follower.end(f"this stream fell {follower.maxsize} events behind; "
                             "reconnect with Last-Event-ID to resume")

    async def stop(self) -> None:
        """Stop the reader (notify stopping): every follower is ended and the consumer
        closed. Never raises; the next :meth:`join` starts it again."""
        async with self._lock:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # a task cancelled before its first step never ran its own clean-up
            consumer, self._consumer = self._consumer, None
            for follower in list(self.followers):
                follower.end("the server is stopping")
            self.followers.clear()
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(consumer.stop())


__all__ = ["SSE_FOLLOWER_QUEUE", "Follower", "SharedTail", "TailUnavailable"]
