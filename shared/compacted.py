"""A topic held in memory as a table: Kafka Streams' *global table*, faust's ``GlobalTable``.

Kafka Streams describes a ``GlobalKTable`` as a changelog stream read as a primary-keyed
table: each record is an update of the row of its key (a null value deletes the row, a
record with no key is dropped), and the table is *fully replicated*: every instance
consumes every partition of the topic, so each holds all of it and no co-partitioning is
needed. ``KafkaStreams.start()`` blocks until its global tables are *restored* (read to
the end of the topic); after that a global thread keeps them current. faust's
``GlobalTable`` is the same idea (a table every worker recovers in full, with an
``on_changelog_event`` callback). :class:`CompactedView` is that, for one asyncio
process: no consumer group and no commits — every start restores the whole topic, or,
with ``since_ms``, what was written since then.

Users: enrich's organization catalog (``services/enrich/catalog.py``), notify's
subscriptions (``services/notify/store.py``) and its delivered-ledger
(``services/notify/ledger.py``), which folds each record into state of another shape —
Kafka Streams' ``addGlobalStore`` with a state-update processor of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.kafka import make_consumer, wait_for_partitions
from shared.settings import AntingSettings

__all__ = ["CompactedView"]

log = logging.getLogger(__name__)
V = TypeVar("V")


class CompactedView(Generic[V]):
    """Key → decoded value of every live key of ``topic``: restored to the end at
    :meth:`start`, then kept current in the background.

    ``items`` is the table (a ``dict``, in order of last write, oldest first). A record's
    value goes through ``decode`` (bytes → ``V``) and replaces its key's row; a null value
    (a tombstone) deletes it; a record without a key is dropped. ``ready`` is set once
    the view is restored: every record up to the end offsets at start (read_committed: the
    last stable offsets) is applied.

    Optional, for the user that needs it:

    * ``key_of(key, value)``: the row a decoded value goes to, when the value names its
      own key (the catalog: an organization's id wins over the record key). Tombstones
      delete the record key's row.
    * ``on_change(keys)``: called after each batch read with the keys whose row was written
      or deleted (faust's ``on_changelog_event``, once per batch).
    * ``on_invalid(record, error)``: a value ``decode`` (or ``key_of``) refused. The key
      keeps its previous row, ``skipped`` counts it, and the rest of the topic is read
      on: one bad record must not hide the others, and a table that commits nothing
      would meet a dead letter again at every start. Default: a warning
      (``unreadable record skipped``) naming the topic, partition, offset and key.
    * ``since_ms()``: restore only records written (Kafka timestamp, ms since the epoch)
      at or after this time, for a log kept longer than the view needs.
    * ``consumer_options``: passed to :func:`shared.kafka.make_consumer` (fetch sizes and
      waits).

    ``positions`` holds, per partition, the offset after the last one read (transaction
    markers and compacted gaps included): the point of the topic the table shows.
    :meth:`catch_up` waits until that is the topic's end as of the call; a view can also
    stop following and pick up later (:meth:`set_following`).

    A subclass may override :meth:`apply` to fold records into state of another shape
    (notify's ledger does); ``items`` is then whatever it keeps there.
    """

    def __init__(
        self,
        settings: AntingSettings,
        topic: str,
        decode: Callable[[bytes], V],
        *,
        key_of: Callable[[str, V], str] | None = None,
        on_change: Callable[[Sequence[str]], None] | None = None,
        on_invalid: Callable[[ConsumerRecord[bytes, bytes], Exception], None] | None = None,
        since_ms: Callable[[], float] | None = None,
        **consumer_options: object,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.decode = decode
        self.key_of = key_of
        self.on_change = on_change
        self.on_invalid = on_invalid or self._unreadable
        self.since_ms = since_ms
        self.consumer_options = consumer_options
        self.items: dict[str, V] = {}
        self.positions: dict[int, int] = {}
        self.skipped = 0
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        # end offsets are asked on a client of its own: on the follower's connection the
        # request would queue behind its long-poll fetch (up to fetch_max_wait_ms)
        self._probe: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None  # the follower, while following
        self._readers: set[asyncio.Task[None]] = set()  # followers not finished yet
        self._progress = asyncio.Condition()  # notified after every poll
        self._catching_up = asyncio.Lock()

    # --- one record ------------------------------------------------------------------

    def apply(self, key: str, value: bytes | None) -> str | None:
        """Apply one record: the key whose row was written or deleted, or ``None``.
        Raises what ``decode`` (or ``key_of``) raises: the row is then left as it was."""
        if value is None:
            return key if self.items.pop(key, None) is not None else None
        decoded = self.decode(value)
        row = key if self.key_of is None else self.key_of(key, decoded)
        # re-inserted, not updated in place: the dict stays in order of last write
        self.items.pop(row, None)
        self.items[row] = decoded
        return row

    def _take(self, record: ConsumerRecord[bytes, bytes], changed: list[str]) -> None:
        if record.key is None:
            return  # no row to write (a compacted topic refuses such records anyway)
        try:
            row = self.apply(record.key.decode(errors="replace"), record.value)
        except Exception as exc:  # one bad record must not hide the rest
            self.skipped += 1
            self.on_invalid(record, exc)
            return
        if row is not None:
            changed.append(row)

    def _unreadable(self, record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        log.warning("unreadable record skipped", extra={
            "topic": self.topic, "partition": record.partition, "offset": record.offset,
            "key": (record.key or b"").decode(errors="replace"), "error": str(exc)[:300]})

    # --- restore, follow, catch up ---------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        """Restore the view (read to the end offsets as of now), set ``ready``, then follow
        the topic in the background. Raises ``RuntimeError`` when the topic does not
        exist (after waiting 10 s for its metadata), ``TimeoutError`` when the restore
        takes longer than ``timeout`` seconds, and the client's errors (broker down)."""
        consumer = make_consumer(self.settings, group_id=None, **self.consumer_options)
        await consumer.start()
        try:
            self._tps = await wait_for_partitions(consumer, self.topic)
            if not self._tps:
                raise RuntimeError(f"topic {self.topic} not found")
            consumer.assign(self._tps)
            await self._seek_start(consumer)
            self._consumer = consumer
            ends = await consumer.end_offsets(self._tps)
            async with asyncio.timeout(timeout):
                while not self._reached(ends):
                    await self._poll(500)
        except BaseException:
            self._consumer = None
            await consumer.stop()
            raise
        self.ready.set()
        self.set_following(True)

    async def _seek_start(self, consumer: AIOKafkaConsumer) -> None:
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

    def _reached(self, ends: dict[TopicPartition, int]) -> bool:
        return all(self.positions.get(tp.partition, 0) >= end for tp, end in ends.items())

    async def _poll(self, timeout_ms: int) -> None:
        """One fetch: its records applied, ``positions`` moved on, ``on_change`` told,
        waiters of :meth:`catch_up` woken. The only reader of the consumer at a time."""
        consumer = self._consumer
        assert consumer is not None
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(
            timeout_ms=timeout_ms, max_records=5000)
        changed: list[str] = []
        for records in batch.values():
            for record in records:
                self._take(record, changed)
        # the consumer's position, not last record + 1: past transaction markers and
        # compacted gaps too (no suspension here: the positions are valid once read)
        for tp in self._tps:
            self.positions[tp.partition] = await consumer.position(tp)
        try:
            if changed and self.on_change is not None:
                self.on_change(changed)
        finally:
            async with self._progress:
                self._progress.notify_all()

    @property
    def following(self) -> bool:
        """Whether the topic is followed in the background now."""
        return self._task is not None

    def set_following(self, on: bool) -> None:
        """Follow the topic in the background, or stop (its partitions paused: nothing is
        fetched or held) until :meth:`catch_up` or the next ``set_following(True)``.
        Does nothing before :meth:`start`."""
        consumer = self._consumer
        if consumer is None or on == self.following:
            return
        if on:
            consumer.resume(*self._tps)
            task = asyncio.create_task(self._follow(set(self._readers)), name=f"follow {self.topic}")
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
            self._task = task
        else:
            assert self._task is not None
            self._task.cancel()
            self._task = None
            consumer.pause(*self._tps)

    async def _follow(self, previous: set[asyncio.Task[None]]) -> None:
        if previous:  # a follower being cancelled: one reader of the consumer at a time
            await asyncio.wait(previous)
        while True:
            try:
                await self._poll(500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("following %s failed; retrying", self.topic, exc_info=True)
                await asyncio.sleep(1)

    async def catch_up(self, timeout: float = 60.0) -> None:
        """Return once every record written before this call is applied: the topic's end
        offsets (read_committed: last stable offsets) are asked now, then the view reads
        up to them — following meanwhile if it was not, and going back to not following
        after. Raises ``TimeoutError`` after ``timeout`` seconds, ``RuntimeError`` before
        :meth:`start`, and the client's errors."""
        if self._consumer is None:
            raise RuntimeError(f"{self.topic}: catch_up before start")
        async with self._catching_up:
            if self._probe is None:
                self._probe = make_consumer(self.settings, group_id=None)
                await self._probe.start()
            ends = await self._probe.end_offsets(self._tps)
            if self._reached(ends):
                return
            following = self.following
            self.set_following(True)
            try:
                async with asyncio.timeout(timeout), self._progress:
                    await self._progress.wait_for(lambda: self._reached(ends))
            finally:
                self.set_following(following)

    async def stop(self) -> None:
        """Stop following and close the clients; the table stays as it is."""
        self._task = None
        readers = set(self._readers)
        for task in readers:
            task.cancel()
        if readers:
            # stopped here, not in the task: a task cancelled before it ever ran has no finally
            await asyncio.wait(readers)
        for client in (self._consumer, self._probe):
            if client is not None:
                await client.stop()
        self._consumer = self._probe = None
