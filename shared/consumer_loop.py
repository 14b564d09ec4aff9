"""A consumer group member that works on records concurrently and commits only finished
work (notify's event pipeline and its retry schedule run on it): fetch,
hand each record to a task (so slow deliveries never block the poll), take no
more records while too much is in flight, and commit in batches — per partition
only up to the oldest record whose work is not finished (or durably scheduled) yet,
and up to the consumer's position once every record fetched from it is done.

A handler may return an awaitable (or a list of futures) instead of awaiting it:
the broker acknowledgements of the records its work wrote. The task ends there (so a slot
for the next record frees up as soon as the outbound call is done, not a producer
linger and a broker round trip later), and the record counts as done only once
that awaitable resolves — offsets still never pass unacknowledged work.

At least once: a record whose handler fails, or whose writes fail, is not committed; it
is tried again in this process after a backoff (1 s doubling to 5 s), never left waiting
for a restart, because a commit never passes it. What the failure means decides how
often (``shared/write_failures.py``): a failure of the producer or the broker (a timeout,
a broker away, ``OutOfOrderSequenceNumber``) is tried again for as long as it lasts; a
write refused for the record itself, or a handler that raises anything but a Kafka
error, is tried :data:`RECORD_ATTEMPTS` times and then the input record goes to
``dead-letters`` (``dead_letter``) with the reason, and the stream goes on. A record a
handler gives up (:class:`Abandoned`: shutting down) is read again after a restart or
rebalance. Records finish out of order;
a commit never passes the first unfinished one of a partition — Spring Kafka's
out-of-order acknowledgements (``asyncAcks``) defer commits the same way, until the gaps
are filled.
enrich does not use this loop: its work is one Kafka transaction per partition and
batch, records processed in order (``services/enrich/pipeline.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError
from aiokafka.structs import OffsetAndMetadata

from shared.aiokafka_ext import restart_offset_fetch
from shared.kafka_access import AccessStatus, Backoff, Doing, check_subscription, denial, refusal
from shared.settings import KafkaSettings
from shared.write_failures import refuses_the_record

__all__ = ["RECORD_ATTEMPTS", "Abandoned", "ConsumerLoop", "DeadLetterer", "FailureLog", "Handler",
           "OffsetTracker"]

log = logging.getLogger(__name__)

#: what a handler returns: ``None`` (its work is done), or the broker acknowledgements of
#: the records it wrote — one awaitable, or a list of futures — to wait for before the
#: record counts as done
Acks = Awaitable[Any] | list[asyncio.Future[Any]] | None
Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[Acks]]
#: writes the input record to ``dead-letters`` with the reason; returns the write's ack
DeadLetterer = Callable[[ConsumerRecord[bytes, bytes], BaseException], Awaitable[Any]]

#: how often a record is tried when the failure is its own (see the module) before it is
#: dead-lettered: the second try is on a renewed producer, after the limits were read again
RECORD_ATTEMPTS = 3


class FailureLog:
    """Logs records left uncommitted by a failure once per kind of failure per ``window``
    seconds, with its traceback, and how many more failed the same way since the last
    line: while a broker is away every record in flight fails alike, and one line (not
    one per record) says what happened. A kind is what failed and the exception's type."""

    def __init__(self, name: str, window: float = 30.0) -> None:
        self.name = name
        self.window = window
        self.reported: dict[tuple[str, str], float] = {}  # kind -> when last logged (monotonic)
        self.since: dict[tuple[str, str], int] = {}  # kind -> failures not logged since

    def failed(self, what: str, exc: BaseException | None) -> None:
        """One record failed (``exc`` None: cancelled); log it unless its kind was logged
        less than ``window`` seconds ago."""
        kind = (what, type(exc).__name__ if exc is not None else "cancelled")
        now = time.monotonic()
        last = self.reported.get(kind)
        if last is not None and now - last < self.window:
            self.since[kind] = self.since.get(kind, 0) + 1
            return
        more = self.since.pop(kind, 0)
        self.reported[kind] = now
        tail = f" ({more} more records failed the same way since the last such line)" if more else ""
        log.error("%s: %s; the record stays uncommitted and is tried again%s",
                  self.name, what, tail, exc_info=exc)


class Abandoned(Exception):
    """A handler gave its record up for now (shutting down): its offset is not committed."""


class OffsetTracker:
    """Per partition: the offsets taken and not done yet, the offset after the last one
    taken, and the offset last committed; what may be committed now."""

    def __init__(self) -> None:
        self.pending: dict[TopicPartition, set[int]] = {}
        self.next: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.generation = 0  # moves on whenever partitions are forgotten (handed over)
        # per partition, how many times it was forgotten: work begun before a handover
        # tells by it that the partition changed hands meanwhile
        self.handovers: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        pending = self.pending.get(tp)
        if pending is None:
            pending = self.pending[tp] = set()
        pending.add(offset)
        if offset >= self.next.get(tp, 0):
            self.next[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        if tp in self.pending:
            self.pending[tp].discard(offset)

    def forget(self, tps: Collection[TopicPartition]) -> None:
        """The partitions changed hands: nothing of them is pending or committed here."""
        self.generation += 1
        for tp in tps:
            self.handovers[tp] = self.handovers.get(tp, 0) + 1
            self.pending.pop(tp, None)
            self.next.pop(tp, None)
            self.committed.pop(tp, None)

    def settled(self) -> list[TopicPartition]:
        """The partitions every record taken from is done (nothing pending)."""
        return [tp for tp in self.next if not self.pending.get(tp)]

    def committable(
        self, positions: dict[TopicPartition, int] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit now, for the partitions whose commit would move on.

        A partition with work pending commits its first offset not done. One with
        nothing pending commits the consumer's position there (``positions``, read just
        before this call) when it is at or past the last record taken, else the offset
        after that record. Why the position (Kafka Streams does the same since
        KAFKA-6607): on a topic written in transactions the offset after a transaction's
        last record is its commit marker, which a consumer skips but never returns;
        committing last record + 1 leaves every partition one behind its end for good,
        so outside tools read a lag of 1 where there is none. The records between the
        last one taken and the position are markers or aborted records: nothing to do."""
        out = {}
        for tp, nxt in self.next.items():
            pending = self.pending.get(tp)
            if pending:
                upto = min(pending)
            else:
                pos = positions.get(tp) if positions else None
                # a position behind ``nxt`` was read before more records were taken
                upto = pos if pos is not None and pos >= nxt else nxt
            if upto > self.committed.get(tp, -1):
                out[tp] = OffsetAndMetadata(upto, "")
        return out

    def in_flight(self) -> int:
        """How many records taken are not done yet."""
        return sum(len(p) for p in self.pending.values())


class _LoopRebalanceListener(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # Finish what is in flight for these partitions and commit it before the group
        # hands them over, so the next owner starts after it instead of sending it again
        # (bounded: the group waits for this member only so long).
        await self.loop.drain(revoked, self.loop.revoke_grace)
        await self.loop.commit()
        self.loop.tracker.forget(revoked)
        for key in [k for k in self.loop.attempts if k[0] in revoked]:
            del self.loop.attempts[key]
        for key in [k for k in self.loop.failing if k[0] in revoked]:
            del self.loop.failing[key]

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        if self.loop.on_assigned is not None:
            total = self.loop.consumer.partitions_for_topic(self.loop.topic) or ()
            await self.loop.on_assigned(len(self.loop.consumer.assignment()), len(total))


class ConsumerLoop:
    """Runs ``handler`` on every record of ``topic`` (a task per record, at most
    ``max_in_flight`` at a time) for a group ``consumer`` not started yet by whoever
    calls :meth:`subscribe`; commits finished work every ``commit_interval`` seconds.

    ``revoke_grace``: seconds a revoke waits for the records in flight of the partitions
    going away. ``on_assigned(held, total)``: awaited after each rebalance, before
    records are taken (notify's ledger catches up there). A handler that raises leaves
    its record uncommitted (logged); :class:`Abandoned` does so silently.

    With ``access`` and ``kafka`` (the connection settings), the broker refusing this
    loop (an ACL missing; ``group`` is the consumer's group, ``writes`` the topics its
    handler writes) is not a failure but a wait: one line naming who may not do what
    (:mod:`shared.kafka_access`), the refusal current in ``access`` (readiness), and a
    retry with backoff up to 5 s — of the poll, of the commit, or of the record whose
    writes were refused (its handler runs again; at least once allows it). Nothing is
    committed past a refused record, and all of it goes on by itself once allowed."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        handler: Handler,
        *,
        max_in_flight: int,
        commit_interval: float = 1.0,
        name: str = "consumer",
        revoke_grace: float = 0.0,
        on_assigned: Callable[[int, int], Awaitable[None]] | None = None,
        access: AccessStatus | None = None,
        kafka: KafkaSettings | None = None,
        group: str | None = None,
        writes: tuple[str, ...] = (),
        dead_letter: DeadLetterer | None = None,
        new_consumer: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        self.consumer = consumer
        # makes a consumer like ``consumer`` (not started) to replace one whose group
        # coordination died (see run); without it such a consumer's error ends the loop
        self.new_consumer = new_consumer
        self.topic = topic
        self.handler = handler
        self.max_in_flight = max_in_flight
        self.commit_interval = commit_interval
        self.name = name
        self.failures = FailureLog(name)
        self.revoke_grace = revoke_grace  # how long a revoke waits for in-flight records
        # awaited after each rebalance, before records are taken: (partitions held, of all)
        self.on_assigned = on_assigned
        self._settled = asyncio.Event()  # set whenever a record is done
        self.tracker = OffsetTracker()
        self.tasks: set[asyncio.Task[None]] = set()
        self.acks: set[asyncio.Future[Any]] = set()  # handed back by handlers, not yet resolved
        self.paused = False  # only after ``stalled_after`` seconds without room (see _poll)
        self.stalled_after = 60.0  # well inside the group's max.poll.interval (300 s)
        self._room = asyncio.Event()  # set when in-flight work drops below the resume mark
        self._full_since: float | None = None  # when in-flight work last reached the maximum
        # the broker refusing this loop (see the class docstring); None: refusals are failures
        self.access = access if kafka is not None else None
        self.kafka = kafka
        self.reading = Doing(reads=(topic,), group=group)
        self.writing = Doing(writes=writes)
        self.backoff = Backoff(cap=access.cap if access is not None else 5.0)
        self._refused: set[str] = set()  # which of poll, commit, writes is refused now
        self._resubscribed = False  # since the group refused this member (see run)
        self.dead_letter = dead_letter
        # per record tried again: how many times it failed for a reason of its own
        self.attempts: dict[tuple[TopicPartition, int], int] = {}
        self.retry_backoff = Backoff(cap=5.0)  # failures that are not refusals
        # per record failing now: since when (monotonic) and the last failure's kind
        self.failing: dict[tuple[TopicPartition, int], tuple[float, str]] = {}

    def subscribe(self) -> None:
        """Subscribe the consumer to the topic, with this loop's rebalance listener."""
        self.consumer.subscribe([self.topic], listener=_LoopRebalanceListener(self))

    async def _replace_consumer(self) -> None:
        """A new consumer in the group in place of one whose coordination died: what the
        old one held is forgotten (the group reassigns it; uncommitted records are read
        again), in-flight work finishes on its own and commits nothing for it."""
        assert self.new_consumer is not None
        log.warning("%s: the consumer's group coordination ended; joining again with a new consumer",
                    self.name)
        self.tracker.forget(list(self.tracker.next))
        self.attempts.clear()
        self.failing.clear()
        old = self.consumer
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(old.stop(), 10.0)
        self.consumer = self.new_consumer()
        await self.consumer.start()
        self.subscribe()

    async def positions(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The consumer's position on each of ``tps`` it still holds; one it cannot tell
        within half a second (being reset) is left out, and the next commit has it."""
        held = self.consumer.assignment()
        out: dict[TopicPartition, int] = {}
        for tp in tps:
            if tp not in held:
                continue
            try:
                out[tp] = await asyncio.wait_for(self.consumer.position(tp), 0.5)
            except Exception:  # e.g. revoked meanwhile: commit the tracked offset instead
                continue
        return out

    def _refuse(self, part: str, line: str) -> None:
        assert self.access is not None
        self._refused.add(part)
        self.access.refused(line, f"{self.name}.{part}")

    def _allow(self, part: str) -> None:
        if part in self._refused:
            self._refused.discard(part)
            assert self.access is not None
            self.access.restored(f"{self.name}.{part}")
            if not self._refused:
                self.backoff.reset()

    def _writes_refused(self, exc: BaseException | None) -> str | None:
        """The refusal line when ``exc`` is the broker refusing this loop's writes."""
        if exc is None or self.access is None or self.kafka is None:
            return None
        return denial(exc, self.kafka, self.writing)

    def _again(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes],
               backoff: Backoff | None = None) -> None:
        """Run the handler on ``record`` again after the backoff (its writes were refused
        or failed); the record stays pending meanwhile, so no commit passes it. If its
        partition changes hands meanwhile the retry is dropped: its new owner reads the
        record again from the committed offset, and a late ``done`` here must not clear
        that owner's pending offset."""
        handovers = self.tracker.handovers.get(tp, 0)
        delay = (backoff or self.backoff).delay()

        async def later() -> None:
            await asyncio.sleep(delay)
            if self.tracker.handovers.get(tp, 0) != handovers:
                return
            await self._run_one(tp, record)

        task = asyncio.create_task(later())
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    async def commit(self) -> None:
        """Commit what :meth:`OffsetTracker.committable` allows, with the consumer's
        positions on the partitions that have nothing pending (see there). A failed
        commit is logged; the next one catches up."""
        generation = self.tracker.generation
        positions = await self.positions(self.tracker.settled())
        if self.tracker.generation != generation:
            # partitions changed hands while the positions were read: they may be from
            # before the handover, past records the new assignment has not done
            positions = {}
        offsets = self.tracker.committable(positions)
        if not offsets:
            if "commit" in self._refused:
                # nothing left to commit (e.g. the partitions went elsewhere): polls go on,
                # and a group that still refuses this member says so there
                self._allow("commit")
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # e.g. a rebalance under way: the next commit catches up
            line = denial(exc, self.kafka, self.reading) if self.access and self.kafka else None
            if line is not None:
                self._refuse("commit", line)
            else:
                log.warning("%s: commit failed", self.name, exc_info=True)
                if "commit" in self._refused:
                    self._allow("commit")  # not refused now: polls go on (and rejoin, if it was that)
            return
        if self._refused:
            self._allow("commit")
        for tp, om in offsets.items():
            self.tracker.committed[tp] = om.offset

    def _finished(self, tp: TopicPartition, offset: int) -> None:
        self.tracker.done(tp, offset)
        self._settled.set()
        if self.attempts and self.attempts.pop((tp, offset), None) is not None and not self.attempts:
            self.retry_backoff.reset()
        if self.failing:
            self.failing.pop((tp, offset), None)
        if self._refused:
            self._allow("writes")

    async def drain(self, tps: Collection[TopicPartition], timeout: float) -> None:
        """Wait (up to ``timeout``) until every record taken from ``tps`` is done."""
        deadline = time.monotonic() + timeout
        while any(self.tracker.pending.get(tp) for tp in tps):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), left)

    async def _run_one(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            acks = await self.handler(record)
        except (Abandoned, asyncio.CancelledError):
            return  # not done: read again after a restart or rebalance
        except Exception as exc:
            self._failed(tp, record, "handler failed", exc)
            return
        if acks is None:
            self._finished(tp, record.offset)
            return
        if isinstance(acks, list):  # broker-ack futures: count them down, no gather per record
            self._count_down(acks, tp, record)
            return
        fut = asyncio.ensure_future(acks)
        self.acks.add(fut)
        fut.add_done_callback(lambda f: self._acked(f, tp, record))

    def _failed(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], what: str,
                exc: BaseException | None) -> None:
        """A record's work failed: refused writes are retried (see the class); any other
        failure is logged once per kind and the record tried again after a backoff, or,
        when the failure is the record's own and it has had :data:`RECORD_ATTEMPTS`
        tries, dead-lettered (see the module)."""
        line = self._writes_refused(exc)
        if line is not None:
            self._refuse("writes", line)
            self._again(tp, record)
            return
        self.failures.failed(what, exc)
        since = self.failing.get((tp, record.offset), (time.monotonic(), ""))[0]
        self.failing[(tp, record.offset)] = (since, f"{what}: {type(exc).__name__ if exc else 'cancelled'}")
        own = exc is not None and (refuses_the_record(exc) or not isinstance(exc, KafkaError))
        if own:
            n = self.attempts[(tp, record.offset)] = self.attempts.get((tp, record.offset), 0) + 1
            if n >= RECORD_ATTEMPTS and self.dead_letter is not None and exc is not None:
                self._give_up(tp, record, exc)
                return
        else:
            self.attempts.setdefault((tp, record.offset), 0)
        self._again(tp, record, self.retry_backoff)

    def trouble(self, after: float = 30.0) -> str | None:
        """What ``/readyz`` says while a record has kept failing for ``after`` seconds or
        more (``None`` otherwise): the loop, the record's coordinates, how long, and why."""
        if not self.failing:
            return None
        (tp, offset), (since, why) = min(self.failing.items(), key=lambda kv: kv[1][0])
        age = time.monotonic() - since
        if age < after:
            return None
        return (f"{self.name}: {tp.topic}[{tp.partition}]@{offset} has been failing for {age:.0f} s "
                f"({why}); it is tried again, and nothing after it on that partition is committed")

    def _give_up(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> None:
        """Write ``record`` to ``dead-letters`` with ``exc`` as the reason; done once the
        letter is acknowledged (a letter that cannot be written is tried again, after the
        backoff, as long as the partition is this loop's)."""
        assert self.dead_letter is not None
        dead_letter = self.dead_letter
        handovers = self.tracker.handovers.get(tp, 0)

        async def write() -> None:
            while self.tracker.handovers.get(tp, 0) == handovers:
                try:
                    ack = await dead_letter(record, exc)
                    if ack is not None:
                        await ack
                except asyncio.CancelledError:
                    return
                except Exception as failed:
                    self.failures.failed("dead letter not written", failed)
                    await asyncio.sleep(self.retry_backoff.delay())
                    continue
                log.warning("%s: record dead-lettered after %d tries", self.name, RECORD_ATTEMPTS,
                            extra={"topic": record.topic, "partition": record.partition,
                                   "offset": record.offset, "error": type(exc).__name__,
                                   "reason": str(exc)[:200]})
                self._finished(tp, record.offset)
                return

        task = asyncio.create_task(write())
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _count_down(self, futures: list[asyncio.Future[Any]], tp: TopicPartition,
                    record: ConsumerRecord[bytes, bytes]) -> None:
        left = len(futures)
        failed = False

        def one(fut: asyncio.Future[Any]) -> None:
            nonlocal left, failed
            left -= 1
            self.acks.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                if not failed:
                    failed = True
                    self._failed(tp, record, "writes not acknowledged",
                                 None if fut.cancelled() else fut.exception())
            elif left == 0 and not failed:
                self._finished(tp, record.offset)

        for fut in futures:
            self.acks.add(fut)
            fut.add_done_callback(one)

    def _acked(self, fut: asyncio.Future[Any], tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self.acks.discard(fut)
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self._failed(tp, record, "writes not acknowledged", fut.exception())
            return
        self._finished(tp, record.offset)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if len(self.tasks) <= self.max_in_flight * 3 // 4:
            self._room.set()

    async def _poll(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """The next records, never more than there is room for in flight.

        Flow control is by how many records are asked for, not by ``pause``: aiokafka
        drops the records it has already fetched for a paused partition, so each pause
        fetched them again after the resume (measured: the topic was read about twice).
        Records not asked for wait in the fetcher's buffer, which then fetches no more
        for that partition. Once full, the loop takes records again when in-flight work
        is down to three quarters (so that it fetches in chunks). Only when nothing frees
        up for long (stuck handlers) does it pause and poll, so that the group does not
        take it for dead; that poll returns only partitions assigned since (not paused),
        and their records are taken, not dropped."""
        if self._full_since is None and len(self.tasks) >= self.max_in_flight:
            self._full_since = time.monotonic()
            self._room.clear()
        if self._full_since is not None:
            if len(self.tasks) > self.max_in_flight * 3 // 4:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)
            if len(self.tasks) > self.max_in_flight * 3 // 4:  # still no room: back to run()
                if not self.paused and time.monotonic() - self._full_since > self.stalled_after:
                    self.paused = True
                    self.consumer.pause(*self.consumer.assignment())
                if self.paused:
                    polled: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = (
                        await self.consumer.getmany(timeout_ms=0))
                    return polled
                return {}
            self._full_since = None
            if self.paused:
                self.consumer.resume(*self.consumer.assignment())
                self.paused = False
        room = self.max_in_flight - len(self.tasks)
        batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await self.consumer.getmany(
            timeout_ms=200, max_records=max(1, min(room, 1000)))
        return batch

    async def run(self, stop: asyncio.Event, grace: float = 10.0) -> None:
        """Take records until ``stop`` is set; then wait up to ``grace`` seconds for the
        work in flight (and its acknowledgements), cancel the rest, and commit what is done."""
        last_commit = time.monotonic()
        committing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                if "commit" in self._refused:
                    # the group refuses this member's commits: records handed on now could
                    # not be committed either (each would be handled again after a restart),
                    # so none are taken until a commit goes through
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.delay())
                    if committing is None or committing.done():
                        committing = asyncio.create_task(self.commit())
                        await asyncio.wait({committing}, timeout=self.backoff.cap)
                    continue
                try:
                    batch = await self._poll()
                    check_subscription(self.consumer)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if self.new_consumer is None or (current is not None and current.cancelling()):
                        raise
                    # not this task's cancellation: aiokafka's group coordination task ended
                    # cancelled (its heartbeat stopped mid-rejoin, seen while the broker
                    # refused the group), and the consumer raises that on every poll for good
                    await self._replace_consumer()
                    continue
                except Exception as exc:
                    line = (await refusal(exc, self.kafka, self.reading)
                            if self.access is not None and self.kafka is not None else None)
                    if line is None:
                        raise
                    self._refuse("poll", line)  # the coordinator and the fetcher retry by themselves
                    if isinstance(exc, GroupAuthorizationFailedError) and not self._resubscribed:
                        # aiokafka (0.14) raises a refused heartbeat's error again on every
                        # poll, even once allowed, until the member rejoins the group: a new
                        # subscription makes it rejoin (refused, then retried, until allowed)
                        self._resubscribed = True
                        self.consumer.unsubscribe()
                        self.subscribe()
                    elif isinstance(exc, TopicAuthorizationFailedError) and not self.consumer.assignment():
                        # refused in the metadata, so given no partition: a new subscription
                        # asks for the metadata again and, once allowed, rejoins with them
                        self.consumer.unsubscribe()
                        self.subscribe()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.backoff.delay())
                    # a refused committed-offset fetch ends aiokafka's task for it, and
                    # its error comes back on every poll, even once allowed: fetch again
                    restart_offset_fetch(self.consumer)
                    continue
                if self._refused:
                    self._allow("poll")
                    self._resubscribed = False
                for tp, records in batch.items():
                    for record in records:
                        self.tracker.add(tp, record.offset)
                        task = asyncio.create_task(self._run_one(tp, record))
                        self.tasks.add(task)
                        task.add_done_callback(self._task_done)
                if time.monotonic() - last_commit >= self.commit_interval and (
                        committing is None or committing.done()):
                    # in the background: the next fetch does not wait for the coordinator
                    committing = asyncio.create_task(self.commit())
                    last_commit = time.monotonic()
        finally:
            if committing is not None:
                with contextlib.suppress(Exception):
                    await committing
            # graceful: let in-flight work finish (bounded), then commit what is done
            deadline = time.monotonic() + grace
            if self.tasks:
                _, rest = await asyncio.wait(set(self.tasks), timeout=grace)
                for task in rest:
                    task.cancel()
                for task in rest:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if self.acks:
                await asyncio.wait(set(self.acks), timeout=max(1.0, deadline - time.monotonic()))
            with contextlib.suppress(Exception):
                await self.commit()
