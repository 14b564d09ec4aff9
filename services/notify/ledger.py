"""The delivered-ledger: idempotency key → where that delivery stands, folded from the
delivery log on ``notifications`` — read into memory at start (so a restart does not
resend what was already delivered) and followed while running.

The log is the ledger's changelog: every outcome is written once, as its line on
``notifications``, and that line says all the ledger needs (the idempotency key, the
outcome, the attempt, the time, and a digest's events as ``event_sources`` and
``event_ids``: an event is its (source, id) pair, so each event's own key is made from
both). Kafka Streams does the same
when a table is read from its source topic instead of a changelog of its own. Before,
each delivery wrote a second record to a compacted ledger topic; with one record instead
of two, notify spent 0.075 instead of 0.091 CPU-s per 1,000 deliveries (medians of five
paired runs), and the log and the ledger cannot disagree.

States, from the outcomes: ``delivered``; ``scheduled`` (from ``retried``: a retry record
with ``attempt`` + 1 exists, so the first-attempt path and older retry records leave it
alone); ``dead``; ``digested`` (every event of a digest's line, whatever its outcome:
the event went out inside that digest, or the digest's retries own it). ``suppressed``
changes nothing.

Following costs a consumed record per delivery, nearly all of them this instance's
own writes (already applied in memory). So it is done only while another instance
may be writing: after every rebalance of any of its consumer groups the log is read up
to its end (the previous owner's last writes are there before any record is taken
again), and followed afterwards only if this instance does not hold every partition
of all three groups (events, retries, digests) — an instance alone delivers everything and is the only writer.

Entries are kept for ``LEDGER_RETENTION_MS`` (a week, as long as a retry record lives,
and the retention of ``notifications``): at start only the lines of that period are
fetched (the view seeks by timestamp, so a log kept longer for audit costs no longer
start-up), and :meth:`Ledger.prune` drops older entries from memory every few minutes,
so a long-running notify does not grow with every delivery it ever made. An event read again after that (an offset reset to last month) is
delivered again — with the same ``webhook-id``.

A digest's line written before lines carried ``event_sources`` names its events by id
only, which no longer makes their keys: its own key's entry is kept, its events' are not.

The same lines also give each subscription's failing state, cheaply (only failures do
any work; a delivered line of a subscription that never failed costs one dict miss):
since when its deliveries have been failing (the first failure after its last success),
its last error, and its deliveries waiting for a retry with the time of the next one.
notify disables a subscription from it (delivery.py) and the API and ``anting
subscriptions list`` show it.

:meth:`Ledger.suppresses` is the one rule that decides, from the ledger, that an attempt
must not be made; every place that could send (an event read, a retry record, a digest's
event) asks it, and :meth:`services.notify.delivery.Deliverer.suppressed` counts and
logs what it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.notify.notification import Delivery, idempotency_key
from shared.compacted import CompactedView
from shared.kafka import RecordBatches
from shared.settings import AntingSettings
from shared.subscriptions import DeliveryOutcome
from shared.topics import LEDGER_RETENTION_MS
from shared.topology import NOTIFY_LEDGER

log = logging.getLogger(__name__)

#: notify's consumer groups (by their loop's name): the events, the retry schedule and the
#: digests. An instance holding every partition of all of them is the only writer.
GROUPS = ("events", "retries", "digests")
FINAL = frozenset({"delivered", "dead", "digested"})

# (state, attempt, when written in ms since the epoch): one small tuple per key
Entry = tuple[str, int, float]
_STATE = {DeliveryOutcome.delivered.value: "delivered", DeliveryOutcome.retried.value: "scheduled",
          DeliveryOutcome.dead.value: "dead"}
_FAILED = frozenset({DeliveryOutcome.retried.value, DeliveryOutcome.dead.value})
# Ledger.suppresses: a retry record older than the delivery's latest attempt (read again
# after a restart). Not a delivery of its own, so not counted as suppressed.
SUPERSEDED = "superseded"


class Failing:
    """A subscription's run of failures, folded from its lines (times in ms since the epoch):
    ``since`` is the first failure after the last success (``None``: not failing). Lines of
    one subscription are read in order (one partition: they are keyed by its id); a line
    applied twice (this instance's own, read back) or late changes nothing, as failures
    before ``last_success`` are ignored and a success clears only failures before it."""

    __slots__ = ("channel", "last_error", "last_failure", "last_success", "since")

    def __init__(self, channel: str | None) -> None:
        self.since: float | None = None
        self.last_failure = 0.0
        self.last_success = 0.0
        self.last_error: str | None = None
        self.channel = channel

    def failed(self, at_ms: float, error: str | None) -> None:
        if at_ms <= self.last_success:
            return
        if self.since is None or at_ms < self.since:
            self.since = at_ms
        if at_ms >= self.last_failure:
            self.last_failure, self.last_error = at_ms, error

    def succeeded(self, at_ms: float) -> None:
        self.last_success = max(self.last_success, at_ms)
        if self.since is not None and self.since <= at_ms:
            self.since = None


@dataclass(frozen=True)
class Health:
    """A subscription's delivery health (times in ms since the epoch): failing since when
    (``None``: its last delivery succeeded, or none failed in the ledger's week), the last
    failure and its error, how many deliveries wait for a retry, and the earliest of
    their next attempts."""

    failing_since_ms: float | None = None
    last_failure_ms: float | None = None
    last_error: str | None = None
    waiting: int = 0
    next_attempt_ms: float | None = None


class LogView(CompactedView[Entry]):
    """``notifications`` read into memory as the ledger: each line read is folded into the
    entries of its idempotency key (and of a digest's events), not kept by record key — a
    global store with a state-update processor of its own, in Kafka Streams' terms (see
    :mod:`shared.compacted`). An unreadable line is skipped with a warning."""

    def __init__(self, settings: AntingSettings, topic: str, *,
                 fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 500) -> None:
        # at start, only the lines of the retention period are fetched (by their Kafka
        # timestamps), however long the log is kept
        super().__init__(settings, topic, _no_decode,
                         since_ms=lambda: time.time() * 1000 - LEDGER_RETENTION_MS,
                         fetch_min_bytes=fetch_min_bytes, fetch_max_wait_ms=fetch_max_wait_ms)
        self.failing: dict[str, Failing] = {}  # subscription id -> its failures (ever failed only)
        self.scheduled: dict[str, tuple[str, float]] = {}  # key -> (subscription id, next attempt ms)

    def apply(self, key: str, value: bytes | None) -> None:
        """Fold one line of the log (``key``: its subscription id; a null value is no line)."""
        if value is None:
            return
        try:
            line = orjson.loads(value)
            at = datetime.fromisoformat(line["at"]).timestamp() * 1000
            if at < time.time() * 1000 - LEDGER_RETENTION_MS:
                return  # pruned anyway: a log kept longer (for audit) does not grow the ledger
            outcome = line["outcome"]
            next_ms = error = channel = None
            if outcome in _FAILED:  # only failures carry what the failing state needs
                nxt = line.get("next_attempt_at")
                next_ms = datetime.fromisoformat(nxt).timestamp() * 1000 if nxt else None
                error, channel = line.get("error"), line.get("channel")
            self.fold(line["idempotency_key"], line["subscription_id"], outcome,
                      int(line["attempt"]), _digested(line), at, next_ms, error, channel)
        except Exception as exc:  # one bad line must not hide the rest
            log.warning("unreadable delivery line skipped", extra={"topic": self.topic, "error": str(exc)})

    def fold(self, key: str, subscription_id: str, outcome: str, attempt: int,
             digest_of: Iterable[tuple[str, str]] | None, at_ms: float,
             next_ms: float | None = None, error: str | None = None, channel: str | None = None) -> None:
        """Apply one outcome line; ``digest_of``: a digest's events as (source, id) pairs;
        ``next_ms``, ``error``, ``channel``: a failure's next attempt (ms since the epoch),
        error and channel type. Entries are re-inserted, not updated in place: the dict stays
        in order of last write, oldest first (pruning reads only the front)."""
        items = self.items
        state = _STATE.get(outcome)
        if state is not None:
            prev = items.pop(key, None)
            if state == "scheduled":
                items[key] = (state, attempt + 1, at_ms)
                self.scheduled[key] = (subscription_id, at_ms if next_ms is None else next_ms)
            else:
                items[key] = (state, attempt, at_ms)
                if prev is not None and prev[0] == "scheduled":
                    self.scheduled.pop(key, None)
            failing = self.failing.get(subscription_id)
            if state == "delivered":
                if failing is not None:
                    failing.succeeded(at_ms)
            else:
                if failing is None:
                    failing = self.failing[subscription_id] = Failing(channel)
                elif channel is not None:
                    failing.channel = channel
                failing.failed(at_ms, error)
        for source, event_id in digest_of or ():
            event_key = idempotency_key(source, event_id, subscription_id)
            items.pop(event_key, None)
            items[event_key] = ("digested", 1, at_ms)


def _digested(line: dict[str, Any]) -> list[tuple[str, str]] | None:
    """A digest line's events as (source, id) pairs; ``None`` for a one-event line, and for
    a digest line written before lines named the events' sources (see the module)."""
    if not line.get("digest"):
        return None
    ids, sources = line.get("event_ids") or [], line.get("event_sources")
    if sources is None or len(sources) != len(ids):
        return None
    return [(str(s), str(i)) for s, i in zip(sources, ids, strict=True)]


def _no_decode(value: bytes) -> Entry:
    raise AssertionError("LogView folds lines in apply()")  # pragma: no cover


class Ledger:
    """Where each delivery stands, from ``notifications`` (``view``, a :class:`LogView`):
    recorded here and on the log at once (:meth:`record`), asked before every attempt
    (:meth:`suppresses`), and the source of each subscription's :class:`Health`."""

    def __init__(self, settings: AntingSettings, producer: AIOKafkaProducer, batches: RecordBatches | None = None) -> None:
        self.topic = NOTIFY_LEDGER.input(settings.topic_prefix)
        self.batches = batches or RecordBatches(producer)
        # Following mostly reads back this instance's own lines (already applied in
        # memory), one per delivery: fetch them in batches of up to 256 KiB or 200 ms
        # instead of one fetch request per few records.
        self.view = LogView(settings, self.topic, fetch_min_bytes=256 * 1024, fetch_max_wait_ms=200)
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
        alone = len(self._holds_all) >= len(GROUPS) and all(self._holds_all.values())
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
        for key, (_state, _attempt, at) in self.view.items.items():
            if at >= cutoff:
                break
            expired.append(key)
        scheduled = self.view.scheduled
        for key in expired:
            if self.view.items.pop(key)[0] == "scheduled":
                scheduled.pop(key, None)
        if expired:
            log.info("ledger entries past retention forgotten", extra={"count": len(expired)})
        return len(expired)

    def state(self, key: str) -> dict[str, Any] | None:
        """Where the delivery of idempotency key ``key`` stands (``state``, ``attempt``,
        ``at_ms``), or ``None`` when the log has no line of it in the retention period."""
        entry = self.view.items.get(key)
        if entry is None:
            return None
        return {"state": entry[0], "attempt": entry[1], "at_ms": entry[2]}

    def is_final(self, key: str) -> bool:
        """Whether ``key`` is delivered, dead or digested: nothing more to send for it."""
        entry = self.view.items.get(key)
        return entry is not None and entry[0] in FINAL

    def suppresses(self, key: str, attempt: int = 1, *, retry: bool = False) -> str | None:
        """Why the ledger stops attempt ``attempt`` of the delivery ``key``; ``None``: go ahead.

        A first attempt (an event read, for the first time or again: re-published, read
        again after a crash or an offset reset) is stopped by any entry: ``delivered``,
        ``digested``, ``dead`` (its dead letter is the way to send it again), or
        ``scheduled`` (the retry schedule owns it). A retry record (``retry``) is stopped
        by ``delivered``, ``digested`` or ``dead`` at its own attempt or later — except
        attempt 1 of a dead key, a dead letter replayed for a fresh set of attempts — and
        is :data:`SUPERSEDED` when a later attempt was scheduled or made (an older record,
        read again after a restart)."""
        entry = self.view.items.get(key)
        if entry is None:
            return None
        state = entry[0]
        if not retry:
            return state
        if state == "dead" and attempt == 1:
            return None
        if entry[1] > attempt:
            return SUPERSEDED
        return None if state == "scheduled" else state

    def failing_since(self, subscription_id: str) -> float | None:
        """When the subscription's current run of failures began (ms since the epoch), or
        ``None`` when its last delivery succeeded or none failed within the ledger's week."""
        failing = self.view.failing.get(subscription_id)
        return None if failing is None else failing.since

    def channel_of(self, subscription_id: str) -> str | None:
        """The channel type the subscription's failures were recorded with, if any."""
        failing = self.view.failing.get(subscription_id)
        return None if failing is None else failing.channel

    def health(self, subscription_ids: Iterable[str]) -> dict[str, Health]:
        """Each subscription's :class:`Health`; one pass over the deliveries waiting."""
        wanted = set(subscription_ids)
        counts: dict[str, int] = {}
        earliest: dict[str, float] = {}
        for sub_id, next_ms in self.view.scheduled.values():
            if sub_id in wanted:
                counts[sub_id] = counts.get(sub_id, 0) + 1
                earliest[sub_id] = min(earliest.get(sub_id, next_ms), next_ms)
        out = {}
        for sub_id in wanted:
            failing = self.view.failing.get(sub_id)
            count, first = counts.get(sub_id, 0), earliest.get(sub_id)
            if failing is None or failing.since is None:
                out[sub_id] = Health(waiting=count, next_attempt_ms=first)
            else:
                out[sub_id] = Health(failing.since, failing.last_failure, failing.last_error, count, first)
        return out

    async def record(self, delivery: Delivery, outcome: DeliveryOutcome, line: bytes, *,
                     channel: str | None = None, error: str | None = None,
                     next_ms: float | None = None) -> Any:
        """Write the outcome's ``line`` to ``notifications`` (keyed by subscription id) and
        apply it here at once (``channel``, ``error``, ``next_ms``: what the line says of a
        failure, for the failing state); returns the broker-ack future (await it before
        committing)."""
        self.view.fold(delivery.key, delivery.subscription_id, outcome.value, delivery.attempt,
                       list(zip(delivery.event_sources, delivery.event_ids, strict=True)) if delivery.digest
                       else None, time.time() * 1000, next_ms, error, channel)
        key = delivery.subscription_id.encode()
        partition = await self.batches.partition_for(self.topic, key)
        return self.batches.append(self.topic, partition, key, line)


__all__ = ["FINAL", "GROUPS", "SUPERSEDED", "Entry", "Failing", "Health", "Ledger", "LogView"]
