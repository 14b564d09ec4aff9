"""insights on faust-streaming: the table, its fold, and who answers a key.

- :class:`services.insights.route.Route` writes, per ``enriched-events`` record, one fact
  per entity it names to ``insights-facts``, keyed by the entity (a plain aiokafka loop:
  see its module for why it is not a faust agent).
- ``fold``, a faust agent, reads ``insights-facts`` in batches (``take_events``) and folds
  each fact into the ``entities`` table (:class:`services.insights.state.Entity`), writing
  every entity a batch touched once. The table is faust's: in memory, backed by the
  compacted changelog ``<app id>-entities-changelog``, restored from it when partitions
  are assigned (on start, after a crash, on a rebalance) before the agent runs again.

faust is at-least-once here (its exactly-once lost and duplicated records under SIGKILL:
``tests/enrich/faust_eos_probe.py``); updates are made idempotent instead, by the replay
guard every entity keeps beside its counts (see ``services.insights.state``).

Who answers a key: the instance whose partition of ``insights-facts`` the key hashes to
(the table is co-partitioned with it), found with faust's router
(``app.router.key_store``: the group assignment carries each member's ``canonical_url``),
as ``@app.table_route`` does; Kafka Streams calls these *interactive queries*.

What an answer reflects: the fold writes, per partition of ``insights-facts``, a *position
marker* into the table beside the entities (a key of its own that hashes to that
partition, so that it travels in the same changelog partition, in order with them):
``{"next": N, "dirty": D}``. Before a batch's entities it raises ``dirty`` to the batch's
end, after them ``next``: every entity of the partition then reflects exactly the facts
below ``next``. A crash between the two leaves ``dirty > next`` in the changelog: some
entities carry facts the others do not yet, and whoever recovers the partition answers
nothing from it until its fold has passed ``dirty`` again (the replay guard makes the
facts already applied change nothing). A partition is *servable* (:meth:`Insights.servable`)
only when this instance holds it in the group's current assignment, its recovery for that
assignment has completed, no rebalance is in progress, and its marker is clean; the
position reported is then ``next`` (Kafka Streams refuses queries against restoring or
standby state the same way, unless asked with ``enableStaleStores``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import faust
import orjson
from aiokafka.partitioner import murmur2

from services.insights.route import Route
from services.insights.settings import InsightsSettings
from services.insights.state import Entity, decode_rows
from shared.kafka import SAFE_PRODUCER
from shared.kafka_access import AccessStatus
from shared.metrics import (
    INSIGHTS_ENTITIES,
    INSIGHTS_FACTS,
    INSIGHTS_RECOVERY_RESTARTS,
    INSIGHTS_RECOVERY_SECONDS,
)
from shared.topology import INSIGHTS_TABLE

__all__ = ["MARKER_PREFIX", "TABLE", "Insights", "RecoveryWatchdog", "key_partition", "marker_keys"]

log = logging.getLogger(__name__)

TABLE = "entities"
#: bytes a fetch of faust's consumer takes from one partition (``insights-facts``, the
#: changelog on recovery) at most
FETCH_BYTES = 8 * 1024 * 1024
#: the table keys of the position markers start with this (no entity key does: entity
#: keys start with their namespace, ``org:`` …)
MARKER_PREFIX = b"~position:"


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the producers' default partitioner (murmur2, as Java's) gives ``key``:
    the route's for facts, faust's for the table's changelog (``use_partitioner``)."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def marker_keys(partitions: int) -> dict[int, bytes]:
    """For each partition, the first key ``~position:<i>`` that hashes to it: where the
    fold keeps that partition's position marker."""
    keys: dict[int, bytes] = {}
    i = 0
    while len(keys) < partitions:
        key = MARKER_PREFIX + str(i).encode()
        keys.setdefault(key_partition(key, partitions), key)
        i += 1
    return keys


def _credentials(settings: InsightsSettings) -> Any:
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    ssl = k.client_options().get("ssl_context")
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism or "PLAIN", ssl_context=ssl)
    return faust.SSLCredentials(ssl)


class RecoveryWatchdog:
    """Starts faust's table recovery over when it stops making progress.

    faust-streaming's recovery (``faust.tables.recovery.Recovery``) reads each active
    changelog partition up to the high watermark it took when it started, and waits for
    that. Its users report the wait lasting for ever, the remaining offsets standing still
    (faust-streaming#74, robinhood/faust#218); faust only logs it ("No event received for
    active tp … since recovery start"). Here it happened, rarely and on a loaded machine,
    to an instance that joined the group while another held every partition and was
    writing the changelog: the new instance never became ready.

    :meth:`check`, called every ``interval`` seconds by :meth:`run`, reads how many
    changelog offsets recovery still needs (``active_remaining_total()``). When recovery
    is in progress and that number has not moved for ``stall_seconds`` (seconds, on
    ``clock``), it logs one line, counts ``anting_insights_recovery_restarts_total`` and
    sets ``signal_recovery_start``, the event faust's own rebalance handler sets: recovery
    starts over, reads the high watermarks and the table's offsets again, seeks the
    changelog partitions there and resumes fetching them. Starting over is safe at any
    point: changelog records are whole entities, applied again they give the same table.

    ``recovery`` is faust's ``app.tables.recovery`` (or anything with ``in_recovery``,
    ``active_remaining_total()`` and ``signal_recovery_start``)."""

    def __init__(self, recovery: Any, stall_seconds: float,  # Any: faust's Recovery is untyped
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.recovery = recovery
        self.stall_seconds = stall_seconds
        self.clock = clock
        self.restarts = 0
        # the remaining count last seen and since when it has not moved (None: not recovering)
        self._seen: tuple[int, float] | None = None

    def check(self) -> bool:
        """Look at recovery once; returns whether it was started over."""
        if not self.recovery.in_recovery:
            self._seen = None
            return False
        now = self.clock()
        remaining = int(self.recovery.active_remaining_total())
        if self._seen is None or self._seen[0] != remaining:
            self._seen = (remaining, now)
            return False
        if now - self._seen[1] < self.stall_seconds:
            return False
        log.warning("insights table recovery made no progress; starting it over",
                    extra={"remaining_offsets": remaining, "stalled_seconds": round(now - self._seen[1], 1)})
        self.restarts += 1
        INSIGHTS_RECOVERY_RESTARTS.inc()
        self._seen = None
        self.recovery.signal_recovery_start.set()
        return True

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """:meth:`check` every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                break
            try:
                self.check()
            except Exception:  # faust's internals moved under it: say so, keep watching
                log.exception("insights recovery watchdog could not read faust's recovery")
                await asyncio.sleep(60)  # not every second


class Insights:
    """The faust app, its topics, table and agents, for one instance. :meth:`start` joins
    the group (recovering the table partitions it is given), :meth:`stop` leaves it.
    Queries read the table (:meth:`entity`, :meth:`local_entities`) and ask the router
    who owns a key (:meth:`owner`, :meth:`members`)."""

    def __init__(self, settings: InsightsSettings, access: AccessStatus | None = None) -> None:
        self.settings = settings
        #: what the broker refuses insights now (the route's fetch, commit or writes; the
        #: start), for readiness; faust's own clients are not covered
        self.access = access or AccessStatus()
        self.url = settings.url()
        # faust's working directory holds nothing durable here (the table is in memory and
        # in its changelog): a throwaway one unless configured, removed on stop
        self._scratch = None if settings.data_dir else tempfile.mkdtemp(prefix="anting-insights-")
        datadir = settings.data_dir or self._scratch
        self.app = faust.App(
            settings.topic_prefix + settings.group,
            broker=[f"kafka://{hp.strip()}" for hp in settings.kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(settings),
            store="memory://",
            web_enabled=False,
            autodiscover=False,
            datadir=datadir,
            canonical_url=self.url,
            topic_partitions=settings.partitions,
            # serve() puts the cluster's in settings before building the app; an app built
            # without it (one broker) takes 1
            topic_replication_factor=settings.replication_factor or 1,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_seconds,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000),
            # faust's defaults starved the fold: a fetch of 1 MB a partition holds a few dozen
            # facts records (each up to FACTS_PER_RECORD facts, tens of KB), and a producer
            # batch of 16 KB holds one entity (~15 KB for a busy one) while aiokafka sends one
            # batch per partition per request, so a fold batch's changelog writes went out
            # one round trip each and backed up into faust's producer buffer
            consumer_max_fetch_size=FETCH_BYTES,
            producer_max_batch_size=SAFE_PRODUCER["max_batch_size"],
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        # the facts topic the table folds, as declared
        self.facts_topic = INSIGHTS_TABLE.input(settings.topic_prefix)
        self.facts = self.app.topic(self.facts_topic, partitions=settings.partitions, **raw)
        self.table = self.app.Table(TABLE, default=None, key_type=bytes, value_type=bytes,
                                    partitions=settings.partitions, use_partitioner=True)
        self.app.agent(self.facts, name="fold")(self._fold)
        self.markers = marker_keys(settings.partitions)
        self._partitions: dict[bytes, int] = {}
        # table key → (the bytes the fold last wrote there, the entity they are the dump of):
        # reused while the table holds those very bytes (see _load)
        self._entities: dict[bytes, tuple[bytes, Entity]] = {}
        # partitions whose recovery completed for the current assignment; None from a
        # revocation or an assignment until faust says the table is recovered
        self._recovered_for: frozenset[int] | None = None
        self.app.on_partitions_revoked.connect(self._on_assignment_change)
        self.app.on_partitions_assigned.connect(self._on_assignment_change)
        self.table.on_recover(self._on_table_recovered)
        self.route = Route(settings, self.access)
        self._stopping = asyncio.Event()
        self._routing: asyncio.Task[None] | None = None
        self.watchdog: RecoveryWatchdog | None = None  # made on start, beside faust's recovery
        self._watching: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.recovered_after: float | None = None

    # --- the agents --------------------------------------------------------------

    async def _fold(self, stream: Any) -> None:  # Any: faust.StreamT does not declare take_events
        """insights-facts → the table, a batch at a time: each entity touched is read
        once, folded, and written once (one changelog record per entity per batch),
        between the two writes of each partition's position marker (see the module)."""
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_seconds):
            held = self.held_partitions()
            touched: dict[bytes, Entity] = {}
            changed: set[bytes] = set()
            ends: dict[int, int] = {}
            applied = replays = stale = 0
            try:
                for event in events:
                    partition, offset = event.message.partition, event.message.offset
                    if partition not in held:
                        # taken before a revocation: the partition's new owner folds it from
                        # the committed offset, and a write here would reach the changelog
                        # behind its own
                        stale += 1
                        continue
                    ends[partition] = max(ends.get(partition, 0), offset + 1)
                    key: bytes = event.key
                    fact_key, name, rows = decode_rows(event.value)
                    entity = touched.get(key)
                    if entity is None:
                        entity = touched[key] = self._load(key, fact_key, name)
                    n, past = entity.apply_rows(name, rows)
                    if past:
                        changed.add(key)
                    applied += n
                    replays += len(rows) - n
            except BaseException:
                # entities kept between batches may hold facts this batch will not write
                self._entities.clear()
                raise
            # no await from here to the end of the batch: a query sees a partition before
            # its batch or after it, never half-way
            marks = {p: self._marker(p) for p in ends}
            for p, end in ends.items():
                if marks[p]["dirty"] < end:
                    marks[p]["dirty"] = end
                    self.table[self.markers[p]] = orjson.dumps(marks[p])
            for key in changed:
                stored = self.table[key] = touched[key].dump()
                self._entities[key] = (stored, touched[key])
            for p, end in ends.items():
                marks[p]["next"] = max(marks[p]["next"], end)
                self.table[self.markers[p]] = orjson.dumps(marks[p])
            INSIGHTS_FACTS.labels("applied").inc(applied)
            INSIGHTS_FACTS.labels("replay").inc(replays)
            if stale:
                INSIGHTS_FACTS.labels("revoked").inc(stale)

    def _load(self, key: bytes, fact_key: str, name: str) -> Entity:
        """The entity of table key ``key`` for the fold: the one the fold wrote last while
        the table still holds the very bytes it wrote then (no parse of a document a batch
        left as it was), else parsed from the table (a recovery or a rebalance wrote it),
        else new."""
        stored = self.table.get(key)
        if stored is None:
            self._entities.pop(key, None)
            INSIGHTS_ENTITIES.labels(fact_key.split(":", 1)[0]).inc()
            return Entity.new(fact_key, name)
        kept = self._entities.get(key)
        if kept is not None and kept[0] is stored:
            return kept[1]
        entity = Entity.load(stored)
        self._entities[key] = (stored, entity)
        return entity

    def _marker(self, partition: int) -> dict[str, int]:
        stored = self.table.get(self.markers[partition])
        return dict(orjson.loads(stored)) if stored is not None else {"next": 0, "dirty": 0}

    # --- the assignment and recovery -------------------------------------------------

    def _on_assignment_change(self, sender: object, /, *args: object, signal: object, **kwargs: object) -> None:
        """faust's revocation and assignment signals: nothing is servable until the
        table's recovery for the new assignment has completed."""
        self._recovered_for = None

    async def _on_table_recovered(self) -> None:
        """faust's table recovery completed (called before it resumes the streams and ends
        the rebalance): the partitions held now are restored."""
        self._recovered_for = frozenset(self.held_partitions())

    def held_partitions(self) -> set[int]:
        """The partitions of ``insights-facts`` (and of the table) that the group's
        current assignment gives this instance, as faust's assignor last heard it."""
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.facts_topic}

    def partition_of(self, key: str | bytes) -> int:
        """The table (and ``insights-facts``) partition of ``key``."""
        raw = key.encode() if isinstance(key, str) else key
        partition = self._partitions.get(raw)
        if partition is None:
            partition = self._partitions[raw] = key_partition(raw, self.settings.partitions)
        return partition

    def servable(self, partition: int) -> int | str:
        """The position of ``partition`` (the ``insights-facts`` offset below which every
        fact is folded, and none above) when this instance may answer from it, else why
        not (a sentence for a 503)."""
        tables: Any = self.app.tables
        if self.app.rebalancing or tables.recovery.in_recovery or self._recovered_for is None:
            return "the group is rebalancing or the table is recovering from the changelog"
        if partition not in self._recovered_for or partition not in self.held_partitions():
            return f"partition {partition} is not held by this instance"
        marker = self._marker(partition)
        if marker["dirty"] > marker["next"]:
            return (f"partition {partition} is catching up: the changelog holds facts up to offset "
                    f"{marker['dirty']}, folded in full up to {marker['next']}")
        return marker["next"]

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Join the groups (the route's, started first, and the faust app's). Returns once
        faust's first table recovery completed (faust's ``App.on_started`` waits for it); later ones, on a
        rebalance, run in the background (see :meth:`recovered`)."""
        self.started_at = time.monotonic()
        self.app.finalize()
        # watched from before the start: faust's app.start() returns only once the first
        # recovery completed, and that is the wait that can last for ever
        tables: Any = self.app.tables  # TableManagerT does not declare recovery
        self.watchdog = RecoveryWatchdog(tables.recovery, self.settings.recovery_stall_seconds)
        self._watching = asyncio.create_task(self.watchdog.run(self._stopping), name="insights recovery watchdog")
        # the route needs nothing of the table: it joins its group while faust joins its own
        # and recovers (each join takes seconds), and its facts wait on the topic for the fold
        self._routing = asyncio.create_task(self.route.run(self._stopping), name="insights route")
        await self.app.start()

    async def stop(self) -> None:
        """Leave the groups (the route and faust commit what they processed)."""
        self._stopping.set()
        if self._routing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._routing, 15)
        if self._watching is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._watching, 5)
        await self.app.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def recovered(self) -> bool:
        """Whether the table's partitions are restored from the changelog and the fold and
        the route run: faust's recovery completed, no rebalance in progress, the route's
        consumer started."""
        tables: Any = self.app.tables
        done = (bool(tables.recovery.completed.is_set()) and not self.app.rebalancing
                and not tables.recovery.in_recovery and self._recovered_for is not None
                and self.route.running)
        if done and self.recovered_after is None:
            self.recovered_after = time.monotonic() - self.started_at
            INSIGHTS_RECOVERY_SECONDS.set(self.recovered_after)
            log.info("insights table recovered", extra={"seconds": round(self.recovered_after, 3),
                                                         "entities": len(self.table)})
        return done

    # --- queries -------------------------------------------------------------------

    def owner(self, key: str) -> str:
        """The URL of the instance that owns ``key`` (faust's router); raises ``KeyError``
        when no member owns its partition yet (a rebalance is in progress) or the app has
        not started (its producer has no metadata yet, and faust's partitioner raises
        ``TypeError``)."""
        try:
            return str(self.app.router.key_store(TABLE, key.encode())).rstrip("/")
        except TypeError:
            raise KeyError(key) from None

    def members(self) -> set[str]:
        """The URLs of every instance with partitions of the table, this one included."""
        urls = {str(u).rstrip("/") for u in self.app.router.table_metadata(TABLE)}
        return urls | {self.url}

    def entity(self, key: str) -> Entity | None:
        """The entity of ``key`` in this instance's table (None when it never saw it)."""
        stored = self.table.get(key.encode())
        return Entity.load(stored) if stored is not None else None

    def local_entities(self, namespace: str, partitions: set[int]) -> list[Entity]:
        """Entities of a namespace (``org``, ``unresolved``, ``sector``, ``city``) in
        ``partitions`` (the servable ones this instance holds: the table keeps what it
        recovered of partitions it no longer holds)."""
        prefix = f"{namespace}:".encode()
        return [Entity.load(value) for key, value in list(self.table.items())
                if key.startswith(prefix) and self.partition_of(key) in partitions]
