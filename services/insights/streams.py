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
from typing import Any

import faust

from services.insights.route import Route
from services.insights.settings import InsightsSettings
from services.insights.state import Entity, Fact
from shared.kafka_access import AccessStatus
from shared.metrics import INSIGHTS_ENTITIES, INSIGHTS_FACTS, INSIGHTS_RECOVERY_SECONDS
from shared.topics import INSIGHTS_FACTS as FACTS_TOPIC

__all__ = ["TABLE", "Insights"]

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
        self._stop_routing = asyncio.Event()
        self._routing: asyncio.Task[None] | None = None
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
        """Join the groups (the faust app's and the route's); the table recovers in the
        background (see :meth:`recovered`)."""
        self.started_at = time.monotonic()
        self.app.finalize()
        await self.app.start()
        self._routing = asyncio.create_task(self.route.run(self._stop_routing), name="insights route")

    async def stop(self) -> None:
        """Leave the groups (the route and faust commit what they processed)."""
        self._stop_routing.set()
        if self._routing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._routing, 15)
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
