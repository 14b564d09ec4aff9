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

from services.insights.route import Route
from services.insights.settings import InsightsSettings
from services.insights.state import Entity, Fact
from shared.kafka_access import AccessStatus
from shared.metrics import (
    INSIGHTS_ENTITIES,
    INSIGHTS_FACTS,
    INSIGHTS_RECOVERY_RESTARTS,
    INSIGHTS_RECOVERY_SECONDS,
)
from shared.topics import INSIGHTS_FACTS as FACTS_TOPIC

__all__ = ["TABLE", "Insights", "RecoveryWatchdog"]

log = logging.getLogger(__name__)

TABLE = "entities"


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
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        self.facts = self.app.topic(settings.topic(FACTS_TOPIC), partitions=settings.partitions, **raw)
        self.table = self.app.Table(TABLE, default=None, key_type=bytes, value_type=bytes,
                                    partitions=settings.partitions, use_partitioner=True)
        self.app.agent(self.facts, name="fold")(self._fold)
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
        once, folded, and written once (one changelog record per entity per batch)."""
        async for events in stream.take_events(self.settings.batch_size, within=self.settings.batch_seconds):
            touched: dict[bytes, Entity] = {}
            changed: set[bytes] = set()
            for event in events:
                key: bytes = event.key
                fact = Fact.from_json(event.value)
                entity = touched.get(key)
                if entity is None:
                    stored = self.table.get(key)
                    entity = Entity.load(stored) if stored is not None else Entity.new(fact.key, fact.name)
                    if stored is None:
                        INSIGHTS_ENTITIES.labels(fact.key.split(":", 1)[0]).inc()
                    touched[key] = entity
                if entity.apply(fact):
                    changed.add(key)
                    INSIGHTS_FACTS.labels("applied").inc()
                else:
                    INSIGHTS_FACTS.labels("replay").inc()
            for key in changed:
                self.table[key] = touched[key].dump()

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Join the groups (the faust app's and the route's). Returns once faust's first
        table recovery completed (faust's ``App.on_started`` waits for it); later ones, on a
        rebalance, run in the background (see :meth:`recovered`)."""
        self.started_at = time.monotonic()
        self.app.finalize()
        # watched from before the start: faust's app.start() returns only once the first
        # recovery completed, and that is the wait that can last for ever
        tables: Any = self.app.tables  # TableManagerT does not declare recovery
        self.watchdog = RecoveryWatchdog(tables.recovery, self.settings.recovery_stall_seconds)
        self._watching = asyncio.create_task(self.watchdog.run(self._stopping), name="insights recovery watchdog")
        await self.app.start()
        self._routing = asyncio.create_task(self.route.run(self._stopping), name="insights route")

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
        when no member owns its partition yet (a rebalance is in progress)."""
        return str(self.app.router.key_store(TABLE, key.encode())).rstrip("/")

    def members(self) -> set[str]:
        """The URLs of every instance with partitions of the table, this one included."""
        urls = {str(u).rstrip("/") for u in self.app.router.table_metadata(TABLE)}
        return urls | {self.url}

    def entity(self, key: str) -> Entity | None:
        """The entity of ``key`` in this instance's table (None when it never saw it)."""
        stored = self.table.get(key.encode())
        return Entity.load(stored) if stored is not None else None

    def local_entities(self, namespace: str) -> list[Entity]:
        """Entities of a namespace (``org``, ``unresolved``, ``sector``, ``city``) in the
        partitions this instance owns."""
        prefix = f"{namespace}:".encode()
        out = []
        for key, value in list(self.table.items()):
            if key.startswith(prefix):
                try:
                    if self.owner(key.decode()) != self.url:
                        continue
                except KeyError:
                    continue
                out.append(Entity.load(value))
        return out
