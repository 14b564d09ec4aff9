"""enrich's documents stage: the ``documents`` topic in, the events each document reports
out to ``announcements`` and ``agreements`` (:func:`services.enrich.reports.read_document`),
where enrich resolves them as any event.

At least once, in a consumer group of its own (``ANTING_ENRICH_DOCUMENTS_GROUP``): a poll,
every output of it written and acknowledged, then its offsets committed. A document read
again after a crash gives the same events with the same ids (the document id and a rank),
so notify's ledger recognises them; no transaction is needed for that. A failed write
commits nothing: the session is torn down and starts again from the committed offsets.

A record that is not a document (``shared.documents``), or whose events the contract
refuses (too large for an event, say), goes to ``dead-letters`` with the reason, and the
stream goes on. The catalog is enrich's own live view: the gazetteer is rebuilt when the
catalog changes, so an alias added to ``organizations`` is found in the next document.
Reading a document is CPU work of up to a second for a long one: it runs in a thread, so
the enrich worker sharing the event loop is not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, TypeAlias

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from services.enrich import extract
from services.enrich.catalog import Catalog
from services.enrich.gazetteer import Gazetteer
from services.enrich.reports import Report, read_document
from services.enrich.settings import EnrichSettings
from shared.deadletters import DeadLetterWriter, from_record
from shared.documents import parse_document
from shared.events import STRUCTURED_CONTENT_TYPE, check_size, dump_event, parse_event_obj
from shared.kafka import make_consumer, make_producer
from shared.metrics import DOCUMENT_EVENTS, DOCUMENTS_READ, STAGE_SECONDS
from shared.topics import DOCUMENTS, INPUT_TOPICS_BY_TYPE

__all__ = ["STAGE", "DocumentStage", "events_of"]

log = logging.getLogger(__name__)
STAGE = "documents"
_STAGE_SECONDS = STAGE_SECONDS.labels(STAGE)
Record: TypeAlias = ConsumerRecord[bytes, bytes]


def events_of(raw: bytes | None, gazetteer: Gazetteer) -> tuple[Report, list[tuple[str, bytes, bytes]]]:
    """A document's record value → what it reports and its events as ``(type, key,
    canonical JSON)``, each checked by the contract's models and size. Raises
    ``pydantic.ValidationError`` (not a document, or an event the contract refuses) or
    ``ValueError`` (an event over the contract's size, an empty record)."""
    if raw is None:
        raise ValueError("empty record (null value): not a document")
    doc = parse_document(raw)
    report = read_document(doc, gazetteer)
    out: list[tuple[str, bytes, bytes]] = []
    for event in report.events:
        checked = parse_event_obj(event)
        value = check_size(dump_event(checked))
        out.append((checked.type, checked.key, value))
    return report, out


class DocumentStage:
    """One member of the documents group: its consumer, its producer, enrich's catalog."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.group = settings.documents_group
        self.topic = settings.topic(DOCUMENTS)
        self.outputs = {t: settings.topic(topic) for t, topic in INPUT_TOPICS_BY_TYPE.items()}
        self._index: object = None
        self._gazetteer = Gazetteer([])
        self.running = False

    def gazetteer(self) -> Gazetteer:
        """The gazetteer of the catalog as it is now (rebuilt when the catalog changed:
        the catalog replaces its index on every change)."""
        if self._index is not self.catalog.index:
            self._index = self.catalog.index
            self._gazetteer = Gazetteer(self.catalog.organizations.values())
        return self._gazetteer

    async def run(self, stop: asyncio.Event) -> None:
        """Sessions until ``stop``; a failed one is logged and started again after a second
        from the committed offsets."""
        await asyncio.to_thread(extract.warm_up)
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("documents stage failed; starting again from the committed offsets")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _session(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self.settings, self.topic, group_id=self.group,
                                 max_partition_fetch_bytes=4 * 1024 * 1024,
                                 fetch_max_wait_ms=self.settings.batch_wait_ms)
        producer = make_producer(self.settings)
        try:
            await producer.start()
            await consumer.start()
            self.running = True
            dlq = DeadLetterWriter(producer, self.settings)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=20)
                if not batch:
                    continue
                await self.catalog.catch_up()
                offsets = await self.process(producer, dlq, batch)
                await consumer.commit(offsets)
        finally:
            self.running = False
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await producer.stop()

    async def process(self, producer: AIOKafkaProducer, dlq: DeadLetterWriter,
                      batch: dict[TopicPartition, list[Record]]) -> dict[TopicPartition, int]:
        """Write the events of every document of ``batch`` (or its dead letter) and wait
        for every acknowledgement; the offsets to commit. Raises what a write raises."""
        acks: list[asyncio.Future[Any]] = []
        offsets: dict[TopicPartition, int] = {}
        gazetteer = self.gazetteer()
        outcomes: list[tuple[str, Sequence[str]]] = []
        for tp, records in batch.items():
            for r in records:
                t0 = time.perf_counter()
                try:
                    report, events = await asyncio.to_thread(events_of, r.value, gazetteer)
                except (ValidationError, ValueError) as exc:
                    acks.append(await dlq.send(from_record(r, stage=STAGE, error=exc)))
                    outcomes.append(("dead_lettered", ()))
                    log.warning("document dead-lettered", extra={
                        "topic": r.topic, "partition": r.partition, "offset": r.offset,
                        "error": type(exc).__name__, "reason": str(exc)[:200]})
                    continue
                for etype, key, value in events:
                    acks.append(await producer.send(
                        self.outputs[etype], value=value, key=key,
                        headers=[("content-type", STRUCTURED_CONTENT_TYPE.encode())]))
                outcomes.append(("read" if events else "no_event", [t for t, _, _ in events]))
                _STAGE_SECONDS.observe(time.perf_counter() - t0)
                if not events:
                    log.info("document reports no event", extra={"offset": r.offset,
                                                                   "organizations": len(report.organizations)})
            offsets[tp] = records[-1].offset + 1
        await asyncio.gather(*acks)  # a failed write raises: nothing of the batch commits
        for outcome, types in outcomes:
            DOCUMENTS_READ.labels(outcome).inc()
            for t in types:
                DOCUMENT_EVENTS.labels(t).inc()
        return offsets
