"""enrich as a stage: ``announcements`` and ``agreements`` → ``enriched-events``, each
event with its organizations resolved against the catalog (:mod:`services.enrich.enrich`).

The stage is declared here (:func:`stage_of`) and run by the stage runner
(:mod:`shared.stage`), exactly once by default (Kafka transactions with KIP-447 group
fencing) or at least once (``ANTING_ENRICH_GUARANTEE=at_least_once``); the runner owns
sessions, commits, failed writes and refusals. This module holds what is enrich's own:
reading either CloudEvents content mode, enriching, writing the result in structured
mode with the input's headers and timestamp, and dead-lettering a record it cannot read
(not a CloudEvent of the contract, a header name that is not UTF-8) or write (its
enriched form larger than ``enriched-events`` takes now).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence

from aiokafka.errors import MessageSizeTooLargeError
from pydantic import ValidationError

from services.enrich.catalog import Catalog
from services.enrich.enrich import enrich_bytes
from services.enrich.settings import EnrichSettings
from shared import tracing
from shared.events import record_event_bytes
from shared.kafka_access import AccessStatus
from shared.metrics import ENRICH_EVENTS, ENRICH_ORGANIZATIONS, STAGE_SECONDS
from shared.stage import STUCK_AFTER, Guarantee, Outputs, Record, RecordTooLarge, Stage, StageRunner
from shared.topics import DEAD_LETTERS
from shared.topology import ENRICH_EVENTS as DECLARED

__all__ = ["STAGE", "STRUCTURED", "STUCK_AFTER", "Enricher", "Outcome", "Worker", "stage_of"]

log = logging.getLogger(__name__)
STAGE = "enrich"
_STAGE_SECONDS = STAGE_SECONDS.labels(STAGE)

STRUCTURED = ("content-type", b"application/cloudevents+json")

# what a produce refuses for one record alone: treated like a poison input
_UNWRITABLE = (RecordTooLarge, MessageSizeTooLargeError, TypeError, ValueError)


def stage_of(settings: EnrichSettings) -> Stage:
    """enrich's stage: what it reads and writes (as declared in :mod:`shared.topology`),
    its group and guarantee."""
    return Stage(
        name=STAGE,
        inputs=DECLARED.inputs(settings.topic_prefix),
        outputs=DECLARED.outputs(settings.topic_prefix),
        dead_letters=settings.topic(DEAD_LETTERS),
        group=settings.group,
        guarantee=Guarantee(settings.guarantee),
        instance_id=settings.instance_id,
        batch_max_records=settings.batch_max_records,
        batch_wait_ms=settings.batch_wait_ms,
        commit_interval_ms=settings.commit_interval_ms,
        commit_max_records=settings.commit_max_records,
        commit_linger_ms=settings.commit_linger_ms,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        session_timeout_ms=settings.session_timeout_ms,
    )


class Outcome:
    """What one batch did, summed for the metrics (one label lookup per batch, not per
    event), published once the batch's work has committed."""

    def __init__(self) -> None:
        self.events: Counter[tuple[str, str]] = Counter()
        self.resolved = 0
        self.unresolved = 0

    def publish(self) -> None:
        for (etype, outcome), n in self.events.items():
            ENRICH_EVENTS.labels(etype, outcome).inc(n)
        if self.resolved:
            ENRICH_ORGANIZATIONS.labels("resolved").inc(self.resolved)
        if self.unresolved:
            ENRICH_ORGANIZATIONS.labels("unresolved").inc(self.unresolved)


def _type_of(raw: bytes | None) -> str:
    """The event type of a poison record, if it has a readable one (for the metric label)."""
    if raw and b'"conference.announcement"' in raw:
        return "conference.announcement"
    if raw and b'"agreement.signed"' in raw:
        return "agreement.signed"
    return "unknown"


def _trace(r: Record, outcome: str, *args: object) -> None:
    """One DEBUG line of a record's way through enrich: where it sits
    (``topic[partition]@offset``) and what became of it. Callers check
    ``log.isEnabledFor(logging.DEBUG)`` first, so that with DEBUG off a record costs no
    formatting."""
    log.debug("enrich %s[%d]@%d: " + outcome, r.topic, r.partition, r.offset, *args)


def _structured(headers: Sequence[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes]]:
    """The input's headers (ce_*, traceparent ...), and always the CloudEvents Kafka
    binding's structured-mode content type: an input written by kcat without headers
    still comes out as a CloudEvent any binding-aware parser reads."""
    return [(k, v) for k, v in headers or () if k != "content-type" and v is not None] + [STRUCTURED]


class Enricher:
    """enrich's handler (:class:`shared.stage.Handler`): records → enriched events, or
    dead letters."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        (self.out_topic,) = DECLARED.outputs(settings.topic_prefix)

    async def handle(self, records: list[Record], out: Outputs) -> None:
        """One output per record. With tracing on, each record gets a ``process <topic>``
        span (a child of its ``traceparent``) and its output a ``send enriched-events``
        span under it, whose context the output carries."""
        outcome = Outcome()
        out.after_commit(outcome.publish)
        index, version = self.catalog.index, self.catalog.version
        debug = log.isEnabledFor(logging.DEBUG)
        tracer = tracing.tracer(STAGE)  # None when off: then no span, no header rewritten
        span: tracing.Span | None = None
        for r in records:
            t0 = time.perf_counter()
            if tracer is not None:
                if span is not None:
                    span.end()
                span = tracing.start_process(tracer, r.topic, r.partition, r.offset, r.headers,
                                             self.settings.group)
            try:
                # either content mode of the CloudEvents Kafka binding; structured out
                raw = record_event_bytes(r.value, r.headers)
                etype, enriched = enrich_bytes(raw, index, version)
                value = enriched.dump()
            except (ValidationError, ValueError) as exc:
                if span is not None:
                    tracing.fail(span, exc)
                await self._dead_letter(out, r, exc, outcome)
                if debug:
                    _trace(r, "dead-lettered, unreadable (%s: %s)", type(exc).__name__, str(exc)[:200])
                continue
            headers = _structured(r.headers)
            sent: tracing.Span | None = None
            try:
                if tracer is not None:
                    sent = tracing.start_send(tracer, self.out_topic, headers, parent=span)
                # the output keeps the input's timestamp (as Kafka Streams does), so that
                # notify can measure accepted → delivered
                ack = await out.send(r, self.out_topic, value, key=r.key, headers=headers,
                                     timestamp_ms=r.timestamp)
            except _UNWRITABLE as exc:
                # refused before it was queued: the transaction is untouched
                if span is not None:
                    tracing.fail(span, exc)
                if sent is not None:
                    tracing.fail(sent, exc)
                    sent.end()
                await self._dead_letter(out, r, exc, outcome)
                if debug:
                    _trace(r, "dead-lettered, unwritable (%s: %s)", type(exc).__name__, str(exc)[:200])
                continue
            if debug:
                _trace(r, "%s %s enriched: %d organizations resolved, %d not; catalog %s",
                       etype, enriched.value.get("id"), enriched.resolved, enriched.unresolved, version)
            outcome.events[(etype, "enriched")] += 1
            outcome.resolved += enriched.resolved
            outcome.unresolved += enriched.unresolved
            if sent is None:
                _STAGE_SECONDS.observe(time.perf_counter() - t0)
            else:
                tracing.end_on_ack(sent, ack)
                _STAGE_SECONDS.observe(time.perf_counter() - t0, tracing.exemplar(span))
        if span is not None:
            span.end()

    @staticmethod
    async def _dead_letter(out: Outputs, r: Record, exc: BaseException, outcome: Outcome) -> None:
        await out.dead_letter(r, exc)
        outcome.events[(_type_of(r.value), "dead_lettered")] += 1


class Worker:
    """One enrich instance: the catalog, the handler, and the stage runner that runs it
    (``run``); ``access``, ``running`` and ``trouble`` are the runner's, for ``/readyz``."""

    def __init__(self, settings: EnrichSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stage = stage_of(settings)
        self.enricher = Enricher(settings, catalog)
        self.runner = StageRunner(self.stage, settings, self.enricher, before_batch=catalog.catch_up)

    @property
    def group(self) -> str:
        return self.stage.group

    @property
    def inputs(self) -> list[str]:
        return list(self.stage.inputs)

    @property
    def access(self) -> AccessStatus:
        return self.runner.access

    @property
    def running(self) -> bool:
        return self.runner.running

    @property
    def trouble(self) -> str | None:
        return self.runner.trouble

    async def run(self, stop: asyncio.Event) -> None:
        """Run the stage until ``stop`` is set."""
        await self.runner.run(stop)
