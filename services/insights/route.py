"""insights' first step: ``enriched-events`` → ``insights-facts``, one fact per entity an
event names, keyed by the entity (:func:`services.insights.state.rows_of`), the facts of
one entity in a batch sent together in one record (:func:`services.insights.state.encode_rows`:
a batch names the same sectors, cities and busy organizations again and again). It is the
repartition faust's ``group_by`` or Kafka Streams' ``selectKey`` + ``repartition`` does,
so that the table (:mod:`services.insights.streams`) sees every fact of an entity on one
partition; each fact carries its event's position, which makes the fold idempotent.

Why a plain aiokafka consumer and not a faust agent: the fold's replay guard needs the
facts of one ``enriched-events`` partition to reach the topic in offset order, gaps only
ever filled by a replay from the committed offset. A faust agent on ``enriched-events``
broke that. On a start whose table recovery took a few seconds, faust handed the agent
records from the committed offset while the table recovered, then, on recovery, went on
from its prefetch position 100 offsets further (faust's ``perform_seek`` did not move the
fetcher back), and the skipped records came only with the next restart — after facts
above them had been folded, so they counted as replays (in the kill test,
``tests/insights/test_kill.py``, 8 runs of 20 lost facts: up to 78 of one organization's
251). faust-streaming's tracker has the same class of bug since 2021 (#216, #221: events
skipped or reordered around a rebalance). This stage runs on the stage runner
(:mod:`shared.stage`) at least once and in order: poll, send every fact of the batch (one
idempotent producer keeps each partition's order across retries), wait for the broker's
acknowledgements, then commit the consumer's position; a failed write commits nothing
and the batch is written again on a new producer. A crash replays from the committed
offset; the fold recognises what it applied (``services.insights.state``).
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from services.insights.settings import InsightsSettings
from services.insights.state import FACTS_PER_RECORD, Row, encode_rows, rows_of
from shared.events import NotACloudEvent, read_enriched, record_event_bytes
from shared.kafka_access import AccessStatus
from shared.metrics import INSIGHTS_FACTS
from shared.stage import Guarantee, Outputs, Record, Stage, StageRunner
from shared.topics import DEAD_LETTERS
from shared.topology import INSIGHTS, INSIGHTS_ROUTE

__all__ = ["MAX_RECORDS", "Route"]

log = logging.getLogger(__name__)

#: records taken per poll (one batch of facts is acknowledged before the commit)
MAX_RECORDS = 2000


class Route:
    """The ``enriched-events`` → ``insights-facts`` stage of one insights instance, in the
    consumer group ``<prefix><group>-route`` (apart from the faust app's group: the two
    read different topics and rebalance apart). :meth:`run` until ``stop`` is set;
    :attr:`running` while its consumer is in the group."""

    def __init__(self, settings: InsightsSettings, access: AccessStatus | None = None) -> None:
        self.settings = settings
        self.group = settings.topic_prefix + INSIGHTS.group_under(INSIGHTS_ROUTE, settings.group)
        self.source = INSIGHTS_ROUTE.input(settings.topic_prefix)
        (self.target,) = INSIGHTS_ROUTE.outputs(settings.topic_prefix)
        self.stage = Stage(
            name="insights", inputs=(self.source,), outputs=(self.target,),
            dead_letters=settings.topic(DEAD_LETTERS), group=self.group,
            guarantee=Guarantee.AT_LEAST_ONCE, batch_max_records=MAX_RECORDS, batch_wait_ms=200,
            session_timeout_ms=settings.session_timeout_ms)
        self.runner = StageRunner(self.stage, settings, self, access=access)
        self.access = self.runner.access

    @property
    def running(self) -> bool:
        return self.runner.running

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop`` is set (see :class:`shared.stage.StageRunner`)."""
        await self.runner.run(stop)

    async def handle(self, records: list[Record], out: Outputs) -> None:
        """The facts of the batch's records, one record per entity (in the order the
        events came, at most :data:`FACTS_PER_RECORD` each), or a record's dead letter
        (not an enriched event)."""
        # per entity: its facts' rows and display names, in the order the events came
        by_key: dict[str, tuple[list[Row], list[str]]] = {}
        origin: dict[str, Record] = {}  # the last input record an entity's facts came from
        for record in records:
            try:
                # the contract's verdict without building its models (read_enriched accepts
                # and refuses what parse_enriched does): the models were a fifth of the time
                doc = read_enriched(record_event_bytes(record.value, list(record.headers or ())))
            except (ValidationError, NotACloudEvent) as exc:
                INSIGHTS_FACTS.labels("unreadable").inc()
                await out.dead_letter(record, exc)
                continue
            for key, name, row in rows_of(doc, record.partition, record.offset, record.timestamp):
                entry = by_key.get(key)
                if entry is None:
                    entry = by_key[key] = ([], [])
                entry[0].append(row)
                entry[1].append(name)
                origin[key] = record
        for key, (rows, names) in by_key.items():
            for at in range(0, len(rows), FACTS_PER_RECORD):
                chunk = rows[at:at + FACTS_PER_RECORD]
                await out.send(origin[key], self.target, encode_rows(key, names[at + len(chunk) - 1], chunk),
                               key=key.encode())
