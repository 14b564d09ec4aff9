"""enrich's documents stage: the ``documents`` topic in, the events each document reports
out to ``announcements`` and ``agreements`` (:func:`services.enrich.reports.read_document`),
where enrich resolves them as any event.

It runs on the stage runner (:mod:`shared.stage`), at least once, in a consumer group of
its own (``ANTING_ENRICH_DOCUMENTS_GROUP``): a poll, every output of it written and
acknowledged, then its offsets committed. A document read again after a crash gives the
same events with the same ids (the document id and a rank), so notify's ledger
recognises them; no transaction is needed for that. A failed write commits nothing: the
batch is written again on a new producer (``docs/RELIABILITY.md``).

A record that is not a document (``shared.documents``), or whose events the contract
refuses (too large for an event, say), goes to ``dead-letters`` with the reason, and the
stream goes on. The catalog is enrich's own live view: the gazetteer is rebuilt when the
catalog changes, so an alias added to ``organizations`` is found in the next document.
Reading a document is CPU work of up to a second for a long one: it runs in a thread, so
the enrich worker sharing the event loop is not held up.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pydantic import ValidationError

from services.enrich import extract
from services.enrich.catalog import Catalog
from services.enrich.gazetteer import Gazetteer
from services.enrich.reports import Report, read_document
from services.enrich.settings import EnrichSettings
from shared.documents import parse_document
from shared.events import STRUCTURED_CONTENT_TYPE, check_size, dump_event, parse_event_obj
from shared.metrics import DOCUMENT_EVENTS, DOCUMENTS_READ, STAGE_SECONDS
from shared.stage import Guarantee, Outputs, Record, Stage, StageRunner
from shared.topics import DEAD_LETTERS, INPUT_TOPICS_BY_TYPE
from shared.topology import ENRICH_DOCUMENTS

__all__ = ["STAGE", "DocumentStage", "events_of"]

log = logging.getLogger(__name__)
STAGE = "documents"
_STAGE_SECONDS = STAGE_SECONDS.labels(STAGE)


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
    """One member of the documents group: the stage declared, its handler, enrich's catalog."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.group = settings.documents_group
        self.topic = ENRICH_DOCUMENTS.input(settings.topic_prefix)
        self.outputs = {t: settings.topic(topic) for t, topic in INPUT_TOPICS_BY_TYPE.items()}
        self._index: object = None
        self._gazetteer = Gazetteer([])
        self._warm = False
        self.stage = Stage(
            name=STAGE, inputs=(self.topic,), outputs=ENRICH_DOCUMENTS.outputs(settings.topic_prefix),
            dead_letters=settings.topic(DEAD_LETTERS), group=self.group,
            guarantee=Guarantee.AT_LEAST_ONCE, batch_max_records=20,
            batch_wait_ms=settings.batch_wait_ms, max_partition_fetch_bytes=4 * 1024 * 1024,
            session_timeout_ms=settings.session_timeout_ms)
        self.runner = StageRunner(self.stage, settings, self, before_batch=catalog.catch_up)

    @property
    def running(self) -> bool:
        return self.runner.running

    def gazetteer(self) -> Gazetteer:
        """The gazetteer of the catalog as it is now (rebuilt when the catalog changed:
        the catalog replaces its index on every change)."""
        if self._index is not self.catalog.index:
            self._index = self.catalog.index
            self._gazetteer = Gazetteer(self.catalog.organizations.values())
        return self._gazetteer

    async def run(self, stop: asyncio.Event) -> None:
        """Run the stage until ``stop`` is set."""
        await self.runner.run(stop)

    async def handle(self, records: list[Record], out: Outputs) -> None:
        """The events of every document (or its dead letter); its metrics once committed."""
        if not self._warm:
            # the extractor's data (jieba's dictionary: seconds of CPU) loads with the first
            # document, not at start: enrich's events share this process and its GIL
            await asyncio.to_thread(extract.warm_up)
            self._warm = True
        gazetteer = self.gazetteer()
        outcomes: list[tuple[str, list[str]]] = []
        for r in records:
            t0 = time.perf_counter()
            try:
                report, events = await asyncio.to_thread(events_of, r.value, gazetteer)
            except (ValidationError, ValueError) as exc:
                await out.dead_letter(r, exc)
                outcomes.append(("dead_lettered", []))
                continue
            for etype, key, value in events:
                await out.send(r, self.outputs[etype], value, key=key,
                               headers=[("content-type", STRUCTURED_CONTENT_TYPE.encode())])
            outcomes.append(("read" if events else "no_event", [t for t, _, _ in events]))
            _STAGE_SECONDS.observe(time.perf_counter() - t0)
            if not events:
                log.info("document reports no event", extra={"offset": r.offset,
                                                               "organizations": len(report.organizations)})

        def publish() -> None:
            for outcome, types in outcomes:
                DOCUMENTS_READ.labels(outcome).inc()
                for t in types:
                    DOCUMENT_EVENTS.labels(t).inc()

        out.after_commit(publish)
