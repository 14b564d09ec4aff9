"""insights' first step: ``enriched-events`` → ``insights-facts``, one fact per entity an
event names, keyed by the entity (:func:`services.insights.state.facts_of`). It is the
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
skipped or reordered around a rebalance). This loop is at least once and in order:
poll, send every fact of the batch (one idempotent producer keeps each partition's
order across retries), wait for the broker's acknowledgements, then commit the
consumer's position. A crash replays from the committed offset; the fold recognises
what it applied (``services.insights.state``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError
from pydantic import ValidationError

from services.insights.settings import InsightsSettings
from services.insights.state import facts_of
from shared.deadletters import DeadLetterWriter, from_record
from shared.events import NotACloudEvent, parse_enriched, record_event_bytes
from shared.kafka import make_consumer, make_producer
from shared.kafka_access import AccessStatus, Backoff, Doing, check_subscription, refusal
from shared.metrics import INSIGHTS_FACTS, WRITE_FAILURES
from shared.topics import DEAD_LETTERS, ENRICHED_EVENTS
from shared.topics import INSIGHTS_FACTS as FACTS_TOPIC
from shared.write_failures import Coordinates, WritesFailed, settle

__all__ = ["Route"]

log = logging.getLogger(__name__)

#: records taken per poll (one batch of facts is acknowledged before the commit)
MAX_RECORDS = 2000
#: seconds between attempts after the broker failed a batch
RETRY_SECONDS = 1.0


class Route:
    """The consume → facts → produce loop of one insights instance, in the consumer group
    ``<prefix><group>-route`` (apart from the faust app's group: the two read different
    topics and rebalance apart). :meth:`run` until ``stop`` is set; :attr:`running`
    while its consumer is in the group."""

    def __init__(self, settings: InsightsSettings, access: AccessStatus | None = None) -> None:
        self.settings = settings
        self.group = settings.topic_prefix + settings.group + "-route"
        self.source = settings.topic(ENRICHED_EVENTS)
        self.target = settings.topic(FACTS_TOPIC)
        self.running = False
        # records whose facts the broker refused for themselves: the error, how often
        self.refused: dict[Coordinates, tuple[BaseException, int]] = {}
        # the broker refusing the route (an ACL missing): one line per 30 s naming it, the
        # reason readiness gives, sessions retried with backoff up to 5 s until allowed
        self.access = access or AccessStatus()
        self.backoff = Backoff(cap=self.access.cap)
        self.doing = Doing(reads=(self.source,), writes=(self.target, settings.topic(DEAD_LETTERS)),
                           group=self.group)

    async def run(self, stop: asyncio.Event) -> None:
        """Route until ``stop`` is set; a failed session (the broker went away, the group
        moved on) is logged, closed and started again from the committed offsets."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (KafkaError, OSError) as exc:
                line = await refusal(exc, self.settings.kafka, self.doing)
                if line is not None:
                    self.access.refused(line, "route")
                    await self.backoff.wait(stop)
                    continue
                log.warning("insights route restarts after a Kafka error", extra={"error": repr(exc)[:300]})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_SECONDS)

    def _allowed(self) -> None:
        if self.access.current.get("route") is not None:
            self.access.restored("route")
            self.backoff.reset()

    async def _session(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.settings, self.source, group_id=self.group,
                                 max_poll_records=MAX_RECORDS)
        producer = make_producer(self.settings)
        dead_letters = DeadLetterWriter(producer, self.settings)
        try:
            await producer.start()
            await consumer.start()
            self.running = True
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
                check_subscription(consumer)  # an empty poll may be a refused topic
                if not batch:
                    self._allowed()
                    continue
                acks: list[asyncio.Future[Any]] = []
                origins: list[Coordinates] = []
                for records in batch.values():
                    for record in records:
                        sent = await self._route(producer, dead_letters, record)
                        acks += sent
                        origins += [(record.topic, record.partition, record.offset)] * len(sent)
                failures = await settle(acks, origins)
                if failures:
                    # nothing of the batch is committed; the next session (a new producer:
                    # this one's sequence numbers are spent) reads it again
                    for origin, exc in failures.records.items():
                        self.refused[origin] = (exc, self.refused.get(origin, (exc, 0))[1] + 1)
                    WRITE_FAILURES.labels("insights", "record").inc(len(failures.records))
                    WRITE_FAILURES.labels("insights", "producer").inc(len(failures.producer))
                    raise WritesFailed(failures.kinds())
                try:
                    await consumer.commit()  # the positions: past every record of the batch
                    self._allowed()
                except CommitFailedError:
                    # the partitions went to another member, which reads them again from
                    # the last commit: facts it sends twice are replays to the fold
                    log.info("insights route commit refused after a rebalance; the new owner replays")
        finally:
            self.running = False
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _route(self, producer: AIOKafkaProducer, dead_letters: DeadLetterWriter,
                     record: ConsumerRecord[bytes, bytes]) -> list[asyncio.Future[Any]]:
        """Send the facts of one record (or its dead letter); the delivery futures. A record
        whose facts the broker refused twice for themselves is dead-lettered with the reason."""
        refused = self.refused.get((record.topic, record.partition, record.offset))
        if refused is not None and refused[1] >= 2:
            del self.refused[(record.topic, record.partition, record.offset)]
            INSIGHTS_FACTS.labels("unwritable").inc()
            return [await dead_letters.send(from_record(record, stage="insights", error=refused[0]))]
        try:
            event = parse_enriched(record_event_bytes(record.value, list(record.headers or ())))
        except (ValidationError, NotACloudEvent) as exc:
            INSIGHTS_FACTS.labels("unreadable").inc()
            log.warning("unreadable enriched event dead-lettered", extra={
                "partition": record.partition, "offset": record.offset, "error": str(exc)[:200]})
            return [await dead_letters.send(from_record(record, stage="insights", error=exc))]
        return [await producer.send(self.target, key=fact.key.encode(), value=fact.to_json())
                for fact in facts_of(event, record.partition, record.offset, record.timestamp)]

