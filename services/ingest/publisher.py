"""The Kafka adapter of ingest: sends records and returns only once the broker has
acknowledged every one of them, within a bounded time.

When the broker is unreachable a publish fails with :class:`BrokerUnavailable` in at
most ``timeout`` seconds (HTTP 503), never a hang. The failed producer is thrown away
and closed in the background; the next publish starts a fresh one (a new idempotent
producer id), so ingest recovers by itself once the broker is back.

When the broker refuses ingest (a wrong password, an untrusted certificate, no Write
ACL on an input topic) the 503's reason names who may not do what
(:mod:`shared.kafka_access`), the line is logged once per 30 s, and readiness says it.
Readiness asks the broker which operations ingest may perform on its topics (``Metadata``
v8's authorized operations), so a missing Write shows on ``/readyz`` before any publish
fails, and clears as soon as the ACL is back; a connection refused is tried again with
backoff (1 s doubling to 5 s), not on every request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiokafka.errors as Errors
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.ingest.codec import OutRecord
from shared import tracing
from shared.kafka import abandon_producer, make_producer
from shared.kafka_access import (
    AccessStatus,
    Backoff,
    Doing,
    denial,
    principal,
    refusal,
    topic_operations,
)
from shared.settings import AntingSettings
from shared.topics import Topic
from shared.topology import INGEST_EVENTS
from shared.write_failures import refuses_the_record

log = logging.getLogger(__name__)

__all__ = [
    "RETRY_AFTER_FAILED_START",
    "BrokerUnavailable",
    "Publisher",
]

# after a failed start, fail fast for this long instead of letting every request
# queue up behind a doomed connection attempt
RETRY_AFTER_FAILED_START = 0.5


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time (or could not be reached)."""


class RecordRefused(RuntimeError):
    """The broker refused a record for what it is (larger than its topic takes *now*: a
    topic's ``max.message.bytes`` can be lowered at run time; or invalid): sending it
    again cannot succeed, so the client is told so (413), not asked to retry (503).
    ``index`` is the record's place in the request."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class Publisher:
    """An idempotent ``acks=all`` producer that is rebuilt after the broker failed."""

    def __init__(
        self,
        settings: AntingSettings,
        *,
        timeout: float = 4.0,
        linger_ms: int = 0,
        max_batch_bytes: int = 512 * 1024,
        topics: Sequence[Topic] = INGEST_EVENTS.output_topics,
        **overrides: object,
    ) -> None:
        self.settings = settings
        self.timeout = timeout
        self.options: dict[str, Any] = {
            # a batch not acknowledged in this time fails instead of waiting for ever
            "request_timeout_ms": max(1000, int(timeout * 1000)),
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_bytes,
            **overrides,
        }
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._failed_at = 0.0
        self._retry_after = RETRY_AFTER_FAILED_START  # longer while the broker refuses us
        # the topics it writes: what a refusal names and readiness asks the broker about
        self.topics = [settings.topic(t) for t in topics]
        self.doing = Doing(writes=tuple(self.topics))
        self.access = AccessStatus(then="publishing answers 503 until it is allowed (readiness re-checks)")
        self.backoff = Backoff(cap=self.access.cap)

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, *, required: bool = False) -> None:
        """Connect now; without ``required`` a broker that is down is not fatal
        (requests answer 503 and the next one tries again)."""
        try:
            await asyncio.wait_for(self._ensure(), self.timeout)
        except (BrokerUnavailable, TimeoutError) as exc:
            if required:
                raise BrokerUnavailable(str(exc) or "broker unavailable") from exc
            if not self.access.current:  # a refusal has said why in its own line
                log.warning("broker not reachable at start; will retry on demand",
                            extra={"bootstrap": self.settings.kafka.bootstrap_servers})

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if time.monotonic() - self._failed_at < self._retry_after:
                raise BrokerUnavailable(self.access.current.get("connect")
                                        or "the broker was unreachable a moment ago")
            producer = make_producer(self.settings, **self.options)
            try:
                await producer.start()
            except BaseException as exc:
                self._failed_at = time.monotonic()
                self._close_later(producer)
                if isinstance(exc, KafkaError | OSError):
                    line = await refusal(exc, self.settings.kafka, self.doing)
                    if line is not None:  # credentials or certificate: wait longer each time
                        self.access.refused(line, "connect")
                        self._retry_after = self.backoff.delay()
                        raise BrokerUnavailable(line) from exc
                    raise BrokerUnavailable(f"cannot connect to the broker: {exc}") from exc
                raise
            self._producer = producer
            self._retry_after = RETRY_AFTER_FAILED_START
            if "connect" in self.access.current:
                self.access.restored("connect")
                self.backoff.reset()
            log.info("producer connected",
                     extra={"bootstrap": self.settings.kafka.bootstrap_servers})
            return producer

    def _discard(self, producer: AIOKafkaProducer) -> None:
        if self._producer is producer:
            self._producer = None
            log.warning("producer discarded after a failure; the next publish reconnects")
            self._close_later(producer)

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        async def _close() -> None:
            try:
                await asyncio.wait_for(producer.stop(), 1.0)
            except (Exception, asyncio.CancelledError):
                await abandon_producer(producer)  # the broker is away: no flush can happen

        task = asyncio.get_running_loop().create_task(_close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def publish(self, records: Sequence[OutRecord]) -> list[Any]:
        """Send every record and wait for every acknowledgement (RecordMetadata list);
        raises :class:`BrokerUnavailable` within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        producer: AIOKafkaProducer | None = None
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._ensure()
                tracer = tracing.tracer("ingest")
                for r in records:
                    futures.append(
                        await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                        if tracer is None else await self._send_traced(tracer, producer, r))
        except TimeoutError as exc:
            _settle_later(futures)
            if producer is not None:
                self._discard(producer)
            raise BrokerUnavailable("the broker did not take the records in time") from exc
        except KafkaError as exc:
            _settle_later(futures)
            if producer is not None:
                self._discard(producer)
            raise self._refused(exc) or BrokerUnavailable(
                f"the broker refused the records: {exc}") from exc
        # asyncio.wait, not a timeout around gather: a timeout must not cancel the
        # producer's delivery futures
        remaining = max(0.05, deadline - loop.time())
        _done, pending = await asyncio.wait(futures, timeout=remaining)
        if pending:
            _settle_later(pending)
            self._discard(producer)
            raise BrokerUnavailable(
                f"{len(pending)} of {len(futures)} records not acknowledged in time")
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            # a failed batch spent the producer's sequence numbers: a new one for what follows
            self._discard(producer)
            for index, fut in enumerate(futures):
                refusal = fut.exception()
                if refusal is not None and refuses_the_record(refusal):
                    raise RecordRefused(
                        f"the broker refused record {index} ({type(refusal).__name__}: the topic "
                        f"{records[index].topic} takes smaller records now, or it is invalid); "
                        f"{len(futures) - len(errors)} of {len(futures)} were written", index) from refusal
            raise self._refused(errors[0]) or BrokerUnavailable(
                f"the broker did not acknowledge: {errors[0]!r}")
        return [f.result() for f in futures]

    def _refused(self, exc: BaseException | None) -> BrokerUnavailable | None:
        """The 503 naming who may not write where, when ``exc`` is an ACL refusing it."""
        line = denial(exc, self.settings.kafka, self.doing) if exc is not None else None
        if line is None:
            return None
        self.access.refused(line, "write")
        return BrokerUnavailable(line)

    @staticmethod
    async def _send_traced(tracer: tracing.Tracer, producer: AIOKafkaProducer,
                           r: OutRecord) -> asyncio.Future[Any]:
        """Send ``r`` under a ``send <topic>`` span whose context its ``traceparent``
        carries on (the record's own headers are left as they were)."""
        headers = list(r.headers)
        span = tracing.start_send(tracer, r.topic, headers, attributes={
            "cloudevents.event_id": r.event_id, "cloudevents.event_type": r.event_type})
        try:
            fut: asyncio.Future[Any] = await producer.send(r.topic, r.value, key=r.key,
                                                           headers=headers)
        except BaseException as exc:
            tracing.fail(span, exc)
            span.end()
            raise
        tracing.end_on_ack(span, fut)
        return fut

    async def producer(self) -> AIOKafkaProducer:
        """The live producer (started on demand), for callers that batch on their own."""
        async with asyncio.timeout(self.timeout):
            return await self._ensure()

    async def ready(self) -> tuple[bool, str]:
        """Readiness: the broker answers a metadata request within the timeout, and says
        ingest may Write to each of its topics (else the line naming who may not)."""
        try:
            async with asyncio.timeout(min(self.timeout, 3.0)):
                producer = await self._ensure()
                allowed = await topic_operations(producer.client, self.topics)
        except BrokerUnavailable as exc:
            return False, str(exc) if self.access.current else f"broker not reachable: {exc}"
        except (TimeoutError, KafkaError, OSError) as exc:
            return False, f"broker not reachable: {exc or type(exc).__name__}"
        for topic in self.topics:
            ops = allowed.get(topic)
            if isinstance(ops, set) and "Write" in ops:
                continue
            code = ops.message if isinstance(ops, KafkaError) else "no Write among its authorized operations"
            line = f"kafka: {principal(self.settings.kafka)} may not Write Topic:{topic} ({code})"
            if isinstance(ops, KafkaError) and not isinstance(ops, Errors.TopicAuthorizationFailedError):
                return False, f"topic {topic}: {ops.message}"  # missing, not refused
            self.access.refused(line, "write")
            return False, line
        self.access.restored("write")
        return True, f"broker reachable at {self.settings.kafka.bootstrap_servers}, may write {', '.join(self.topics)}"

    async def stop(self) -> None:
        """Flush what was accepted and close (graceful shutdown)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), self.timeout + 5)
            except (TimeoutError, KafkaError):
                log.warning("producer did not flush in time at shutdown")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _settle_later(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Retrieve the outcome of delivery futures the request no longer waits for (it has
    answered 503 already): the producer fails them later when its broker is gone, and
    asyncio would log each as "Future exception was never retrieved"."""
    for fut in futures:
        fut.add_done_callback(lambda f: None if f.cancelled() else f.exception())
