"""insights on faust-streaming: two agents and one table.

- ``route`` reads ``enriched-events`` (read committed, see :class:`ReadCommittedTransport`)
  and writes, per event, one fact per entity it names to ``insights-facts``, keyed by the
  entity (:func:`services.insights.state.facts_of`): the repartition faust's
  ``group_by`` does, written by hand so that each fact carries its event's position.
- ``fold`` reads ``insights-facts`` in batches (``take_events``) and folds each fact into
  the ``entities`` table (:class:`services.insights.state.Entity`), writing every entity a
  batch touched once. The table is faust's: in memory, backed by the compacted changelog
  ``<app id>-entities-changelog``, restored from it when partitions are assigned (on
  start, after a crash, on a rebalance) before the agents run again.

faust is at-least-once here (its exactly-once lost and duplicated records under SIGKILL:
``tests/enrich/faust_eos_probe.py``); updates are made idempotent instead, by the replay
guard every entity keeps beside its counts (see ``services.insights.state``).

Who answers a key: the instance whose partition of ``insights-facts`` the key hashes to
(the table is co-partitioned with it), found with faust's router
(``app.router.key_store``: the group assignment carries each member's ``canonical_url``),
as ``@app.table_route`` does; Kafka Streams calls these *interactive queries*.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types import StreamT
from pydantic import ValidationError

from services.insights.settings import InsightsSettings
from services.insights.state import Entity, Fact, facts_of
from shared.deadletters import dead_letter, fit
from shared.events import NotACloudEvent, parse_enriched, record_event_bytes
from shared.kafka import PRODUCER_MAX_REQUEST_BYTES
from shared.metrics import INSIGHTS_ENTITIES, INSIGHTS_FACTS, INSIGHTS_RECOVERY_SECONDS
from shared.topics import DEAD_LETTERS, ENRICHED_EVENTS
from shared.topics import INSIGHTS_FACTS as FACTS_TOPIC

__all__ = ["TABLE", "Insights", "InsightsApp", "ReadCommittedTransport"]

log = logging.getLogger(__name__)

TABLE = "entities"


class _ReadCommittedThread(AIOKafkaConsumerThread):
    """faust's consumer thread with a ``read_committed`` consumer."""

    logger = logging.getLogger("faust.transport.drivers.aiokafka")

    def _create_worker_consumer(self, transport: Any) -> Any:  # Any: faust's own signature
        consumer = super()._create_worker_consumer(transport)
        # faust reads committed only under its exactly-once guarantee; enrich writes
        # enriched-events in transactions, and an aborted one must not be counted.
        # aiokafka keeps the level as given until start() builds the fetcher.
        consumer._isolation_level = "read_committed"
        return consumer


class _ReadCommittedConsumer(Consumer):
    logger = logging.getLogger("faust.transport.drivers.aiokafka")

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(Transport):
    """faust's aiokafka transport whose consumer reads ``read_committed`` under the
    at-least-once guarantee too (faust sets it only for ``exactly_once``)."""

    Consumer = _ReadCommittedConsumer


class InsightsApp(faust.App):
    """A faust app on :class:`ReadCommittedTransport`."""

    logger = logging.getLogger("faust.app.base")

    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)


def _credentials(settings: InsightsSettings) -> Any:
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    ssl = k.client_options().get("ssl_context")
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=k.sasl_username, password=k.sasl_password,
                                     mechanism=k.sasl_mechanism or "PLAIN", ssl_context=ssl)
    return faust.SSLCredentials(ssl)


def _headers(headers: Mapping[str, bytes] | Sequence[tuple[str, bytes | None]] | None
             ) -> list[tuple[str, bytes | None]]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers or ())


class Insights:
    """The faust app, its topics, table and agents, for one instance. :meth:`start` joins
    the group (recovering the table partitions it is given), :meth:`stop` leaves it.
    Queries read the table (:meth:`entity`, :meth:`local_entities`) and ask the router
    who owns a key (:meth:`owner`, :meth:`members`)."""

    def __init__(self, settings: InsightsSettings) -> None:
        self.settings = settings
        self.url = settings.url()
        datadir = settings.data_dir or os.path.join(
            tempfile.gettempdir(), f"anting-insights-{settings.port}-{os.getpid()}")
        self.app = InsightsApp(
            settings.topic_prefix + settings.group,
            broker=[f"kafka://{hp.strip()}" for hp in settings.kafka.bootstrap_servers.split(",")],
            broker_credentials=_credentials(settings),
            store="memory://",
            web_enabled=False,
            autodiscover=False,
            datadir=datadir,
            canonical_url=self.url,
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_seconds,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000),
        )
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                               "key_serializer": "raw", "value_serializer": "raw"}
        self.enriched = self.app.topic(settings.topic(ENRICHED_EVENTS), **raw)
        self.facts = self.app.topic(settings.topic(FACTS_TOPIC), partitions=settings.partitions, **raw)
        # a record insights cannot read goes to dead-letters, as at every stage
        self.dead_letters = self.app.topic(settings.topic(DEAD_LETTERS), **raw)
        self.table = self.app.Table(TABLE, default=None, key_type=bytes, value_type=bytes,
                                    partitions=settings.partitions, use_partitioner=True)
        self.app.agent(self.enriched, name="route")(self._route)
        self.app.agent(self.facts, name="fold")(self._fold)
        self.started_at = 0.0
        self.recovered_after: float | None = None

    # --- the agents --------------------------------------------------------------

    async def _route(self, stream: StreamT[bytes]) -> None:
        """enriched-events → one fact per entity on insights-facts, keyed by the entity."""
        async for event in stream.events():
            msg = event.message
            try:
                ev = parse_enriched(record_event_bytes(msg.value, _headers(msg.headers)))
            except (ValidationError, NotACloudEvent) as exc:
                INSIGHTS_FACTS.labels("unreadable").inc()
                log.warning("unreadable enriched event dead-lettered", extra={
                    "partition": msg.partition, "offset": msg.offset, "error": str(exc)[:200]})
                letter = fit(dead_letter(stage="insights", error=exc, key=msg.key, value=msg.value,
                                         headers=_headers(msg.headers), topic=msg.topic,
                                         partition=msg.partition, offset=msg.offset),
                             PRODUCER_MAX_REQUEST_BYTES)
                await self.dead_letters.send(key=letter.key, value=letter.value,
                                             headers=[(k, v or b"") for k, v in letter.headers])
                continue
            for fact in facts_of(ev, msg.partition, msg.offset, round(msg.timestamp * 1000)):
                await self.facts.send(key=fact.key.encode(), value=fact.to_json())

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
        """Join the group; the table recovers in the background (see :meth:`recovered`)."""
        self.started_at = time.monotonic()
        self.app.finalize()
        await self.app.start()

    async def stop(self) -> None:
        """Leave the group (faust commits what was processed)."""
        await self.app.stop()

    def recovered(self) -> bool:
        """Whether the table's partitions are restored from the changelog and the agents
        run: faust's recovery completed and no rebalance in progress."""
        tables: Any = self.app.tables
        done = bool(tables.recovery.completed.is_set()) and not self.app.rebalancing
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
