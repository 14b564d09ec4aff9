"""The notify flow for one enriched event: decode it against the contract (refused →
``dead-letters``), match it against the subscriptions that can want it (the store's index), ask the ledger whether
each (event, subscription) is done already, and make every first attempt — or collect
the event into the subscription's digest (a record on ``notify-digests``). Nothing
here builds what it uses:
:mod:`services.notify.bootstrap` wires it.

The walk goes forward only: record bytes → the decoded event (matching reads it) →
one :class:`Delivery` per matching subscription (holding the record's bytes) →
:meth:`Deliverer.run` (channel, outcome, ledger line, retry record or dead letter).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeAlias

import orjson
from aiokafka import ConsumerRecord
from opentelemetry import trace

from services.notify.delivery import Deliverer
from services.notify.digest import Digests
from services.notify.ledger import Ledger
from services.notify.matching import decode
from services.notify.notification import Delivery, idempotency_key
from services.notify.store import SubscriptionStore
from shared import tracing
from shared.deadletters import DeadLetterWriter, from_record
from shared.events import record_event_bytes
from shared.metrics import STAGE_SECONDS

__all__ = ["EventPipeline", "ingested_ms"]

_STAGE = STAGE_SECONDS.labels("notify")

log = logging.getLogger(__name__)


def _trace(record: ConsumerRecord[bytes, bytes], event_id: str, outcome: str, *args: object) -> None:
    """One DEBUG line of a record's way through notify: the event's id, where the record
    sits (``topic[partition]@offset``) and what this step did. Callers check
    ``log.isEnabledFor(logging.DEBUG)`` first, so that with DEBUG off a record costs no
    formatting."""
    log.debug("notify %s %s[%d]@%d: " + outcome, event_id, record.topic, record.partition,
              record.offset, *args)


#: what an event's offset waits for (see :meth:`EventPipeline.handle_event`)
Pending: TypeAlias = asyncio.Future[None] | list[asyncio.Future[Any]] | None


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def ingested_ms(record: ConsumerRecord[bytes, bytes]) -> int:
    """When the event was accepted (ms since the epoch): enrich gives each enriched record
    its input record's timestamp (as Kafka Streams does), i.e. when ingest or any producer
    wrote it."""
    return int(record.timestamp)


class EventPipeline:
    """The handler of ``enriched-events`` records (a :data:`shared.stage.RecordHandler`)."""

    def __init__(self, store: SubscriptionStore, ledger: Ledger, deliverer: Deliverer,
                 digests: Digests, dlq: DeadLetterWriter) -> None:
        self.store = store
        self.ledger = ledger
        self.deliverer = deliverer
        self.digests = digests
        self.dlq = dlq

    async def handle_event(self, record: ConsumerRecord[bytes, bytes]) -> Pending:
        """Match the event and make every first attempt; returns what its offset must wait
        for — the broker acknowledgements of the records those attempts wrote and of its
        ``notify-digests`` records (the stage runner commits the offset once they resolve) —
        or ``None`` when nothing is pending. A record that is not an enriched event of the
        contract is dead-lettered (and nothing is pending).

        With tracing on, all of it is one ``process enriched-events`` span, a child of the
        record's ``traceparent`` and the parent of every delivery's span."""
        tracer = tracing.tracer("notify")
        if tracer is None:
            return await self._handle(record)
        span = tracing.start_process(tracer, record.topic, record.partition, record.offset,
                                     record.headers, self.deliverer.settings.group)
        with trace.use_span(span, end_on_exit=True):
            return await self._handle(record)

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> Pending:
        t0 = time.perf_counter()
        debug = log.isEnabledFor(logging.DEBUG)
        try:
            # either content mode of the CloudEvents Kafka binding: a record written
            # straight to enriched-events may be binary (ce_* headers, the value is data)
            raw = record_event_bytes(record.value, record.headers)
            event = decode(raw)
        except Exception as exc:
            await self.dlq.send_and_wait(from_record(record, stage="notify", error=exc))
            if debug:
                _trace(record, "-", "dead-lettered (%s: %s)", type(exc).__name__, str(exc)[:200])
            return None
        if debug:
            _trace(record, event["id"], "decoded %s from %s", event["type"], event["source"])
        at = ingested_ms(record)
        # the webhook body splices two attributes into the record's bytes (see Delivery.source),
        # unless the event has members of those names already
        source = None if "subscription" in event or "reason" in event else raw
        acks: list[asyncio.Future[Any]] = []
        jobs: list[Coroutine[Any, Any, Any]] = []
        suppressed: list[tuple[str, str, str]] | None = None
        for sub, reasons in self.store.matching(event):
            key = idempotency_key(event["source"], event["id"], sub.id)
            why = self.ledger.suppresses(key)
            if debug:
                _trace(record, event["id"], "matched %s (%s)%s", sub.id, sub.channel.type,
                       f", suppressed: {why}" if why is not None else
                       ", into its digest" if sub.digest is not None else ", delivering")
            if why is not None:
                # delivered, digested, dead, or owned by the retry schedule: told once per event below
                (suppressed := suppressed or []).append((sub.channel.type, sub.id, why))
                continue
            delivery = (Delivery(key, sub.id, [orjson.loads(raw)], [reasons], 1, at) if source is None
                        else Delivery.of_record(key, sub.id, source, event["source"], event["id"], reasons, at))
            if sub.digest is not None:
                # written to notify-digests: the offset waits for that record, not for the window
                acks.append(await self.digests.collect(sub, delivery))
                continue
            jobs.append(self.deliverer.run(delivery, acks=acks))
        if suppressed:
            self.deliverer.suppressed(event["source"], event["id"], suppressed)
        event_id = str(event["id"]) if debug else ""
        if debug and not jobs and not acks and not suppressed:
            _trace(record, event_id, "matched no subscription")
        del event  # freed now, while still in the CPU's caches (see Delivery.of_record)
        if not jobs:
            self._done(record, event_id, t0, 0, acks)
            return acks or None
        # The event is handled once its first attempts are queued for their slots, in the
        # order of its key (the stage runner starts the next event of its subject then):
        # each subscription's deliveries start in that order (slots.py grants them in
        # order), and a slow endpoint delays only itself, never the later events of its
        # subjects at other subscriptions. The offset waits for the task returned here; it
        # is made here, so that its delivery spans are children of this event's span.
        return asyncio.ensure_future(self._attempts(record, event_id, t0, jobs, acks))

    async def _attempts(self, record: ConsumerRecord[bytes, bytes], event_id: str, t0: float,
                        jobs: list[Coroutine[Any, Any, Any]], acks: list[asyncio.Future[Any]]) -> None:
        """Make an event's first attempts, then wait for the broker acknowledgements of the
        records they wrote; raises the first attempt's failure (the record is then handled
        again: the ledger keeps what was delivered from being sent twice)."""
        if len(jobs) == 1:
            await jobs[0]
        else:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for fut in acks:  # the records written are fine; the offset stays uncommitted
                    fut.add_done_callback(_consume_exception)
                raise errors[0]
        self._done(record, event_id, t0, len(jobs), acks)
        if acks:
            await asyncio.gather(*acks)

    @staticmethod
    def _done(record: ConsumerRecord[bytes, bytes], event_id: str, t0: float, attempts: int,
              acks: list[asyncio.Future[Any]]) -> None:
        _STAGE.observe(time.perf_counter() - t0,
                       None if tracing.tracer("notify") is None else tracing.exemplar())
        if event_id:
            _trace(record, event_id, "done: %d attempt(s) made, %d write(s) for the commit to await",
                   attempts, len(acks))
