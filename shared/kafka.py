"""Kafka clients with the safe settings set once, and idempotent topic creation.

aiokafka's defaults are unsafe for Anting (producer ``acks=1`` without
idempotence; consumer auto-commit, ``latest``, ``read_uncommitted``): every
service gets its clients from here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from shared.settings import AntingSettings
from shared.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)

@functools.lru_cache(maxsize=1 << 16)
def _murmur2(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


_RANDOM = DefaultPartitioner()


def partition_by_key(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key: the partition the Java client
    and kcat pick too) with each key's hash remembered. aiokafka's murmur2 is pure
    Python and keys repeat (a subject's events, a subscription's records): measured
    12% of ``anting publish``'s CPU and 4% of notify's before the cache."""
    if key is None:
        return int(_RANDOM(key, all_partitions, available))
    return all_partitions[_murmur2(key) % len(all_partitions)]


SAFE_PRODUCER: dict[str, Any] = {
    "partitioner": partition_by_key,
    "enable_idempotence": True,
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": None,
    "request_timeout_ms": 30000,
}

SAFE_CONSUMER: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "max_poll_interval_ms": 300000,
}


def make_producer(settings: AntingSettings, **overrides: object) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer; pass ``transactional_id`` for transactions."""
    return AIOKafkaProducer(**settings.kafka.client_options(), **{**SAFE_PRODUCER, **overrides})


def make_consumer(
    settings: AntingSettings, *topics: str, group_id: str | None, **overrides: object
) -> AIOKafkaConsumer:
    """A manual-commit, ``earliest``, ``read_committed`` consumer."""
    return AIOKafkaConsumer(
        *topics,
        group_id=group_id,
        **settings.kafka.client_options(),
        **{**SAFE_CONSUMER, **overrides},
    )


async def _refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch the metadata of every topic into ``consumer``'s cache now.

    The one use of a private aiokafka attribute in Anting, because aiokafka (0.14) has no
    public call that does this: ``partitions_for_topic`` reads the cache only (``None`` for
    a topic created after the consumer started, until the next periodic refresh,
    ``metadata_max_age_ms``: 5 minutes), ``topics()`` fetches every topic's metadata into a
    new object the cache never sees, and ``assign``/``subscribe`` refresh by naming their
    topics in the request, which a broker with ``auto.create.topics.enable`` (Kafka's
    default) answers by creating a missing topic with the broker's defaults (a compacted
    topic would come up uncompacted). ``force_metadata_update`` is what aiokafka's own
    ``start()`` calls; asking for all topics creates none."""
    await consumer._client.force_metadata_update()


async def cluster_answers(producer: AIOKafkaProducer) -> None:
    """Ask the cluster for its metadata on ``producer``'s connections (readiness: a broker
    answers). Raises ``KafkaError`` or ``OSError`` when none does; the caller bounds the
    wait. aiokafka (0.14) has no public call for this; ``producer.client`` is its client
    (public by name, undocumented), whose ``fetch_all_metadata`` asks for every topic and
    creates none."""
    await producer.client.fetch_all_metadata()


async def abandon_producer(producer: AIOKafkaProducer, timeout: float = 2.0) -> None:
    """End a producer whose ``stop()`` timed out because no broker answers: ``stop()``
    waits for a flush that cannot happen, and once interrupted it leaves aiokafka's
    (0.14) sender task reconnecting for ever, so that task and the client's connections
    are closed directly (``_sender`` is private; no public call does this). Never raises."""
    with contextlib.suppress(Exception, asyncio.CancelledError):
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            await asyncio.wait_for(sender.close(), timeout)
        await asyncio.wait_for(producer.client.close(), timeout)


async def wait_for_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 10.0
) -> list[TopicPartition]:
    """The partitions of ``topic``, in order, as the started ``consumer`` sees them; for a
    topic created a moment ago (its metadata not on every listener yet) the metadata is
    fetched again every 0.1 s for up to ``timeout`` seconds. An empty list when the topic
    did not show up in that time: the caller decides whether that is an error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if loop.time() >= deadline:
            return []
        await asyncio.sleep(0.1)
        await _refresh_metadata(consumer)


def make_admin(settings: AntingSettings, **overrides: object) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**settings.kafka.client_options(), **overrides)


async def ensure_topics(
    settings: AntingSettings, topics: Iterable[Topic] = ALL_TOPICS, replication: int = 1
) -> list[str]:
    """Create the registered topics that do not exist yet; returns the names created."""
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(t),
                num_partitions=t.partitions,
                replication_factor=replication,
                topic_configs=t.topic_config(),
            )
            for t in topics
            if settings.topic(t) not in existing
        ]
        if not wanted:
            return []
        try:
            await admin.create_topics(wanted)
        except TopicAlreadyExistsError:
            pass  # another instance created it first: the same end state
        # topic metadata reaches every listener shortly after creation
        for _ in range(50):
            if {n.name for n in wanted} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        log.info("topics created", extra={"topics": [n.name for n in wanted]})
        return [n.name for n in wanted]
    finally:
        await admin.close()


class RecordBatches:
    """Records written through aiokafka's batch API: appended to one open batch per
    (topic, partition), sent with ``send_batch`` when the batch is full or ``linger``
    seconds after its first record. ``append`` returns the batch's acknowledgement, so
    a caller still knows when each record is durable.

    Why: ``producer.send`` costs ~10 µs of CPU per record (metadata check, partitioner,
    a future per record), an append ~2 µs; notify writes two records per delivery, which
    made ``send`` the largest single cost of recording one. Records land exactly where
    ``send`` would put them: the caller names the partition (``partition_for`` gives
    Kafka's default for a key)."""

    def __init__(self, producer: AIOKafkaProducer, linger: float = 0.02) -> None:
        self.producer = producer
        self.linger = linger
        self._open: dict[tuple[str, int], tuple[Any, asyncio.Future[Any]]] = {}
        self._shipping: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, list[int]] = {}

    async def partition_for(self, topic: str, key: bytes) -> int:
        """The partition Kafka's default partitioner (and ``send``) picks for ``key``."""
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return partition_by_key(key, parts, parts)

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> asyncio.Future[Any]:
        """Add the record to its partition's open batch; the future resolves when the broker
        has acknowledged that batch (or fails with the reason it could not)."""
        slot = self._open.get((topic, partition))
        if slot is None:
            slot = self._start(topic, partition)
        if slot[0].append(key=key, value=value, timestamp=None) is None:
            self._ship(topic, partition)  # full: off it goes, and a new one takes the record
            slot = self._start(topic, partition)
            if slot[0].append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit a batch")
        return slot[1]

    def _start(self, topic: str, partition: int) -> tuple[Any, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        slot = (self.producer.create_batch(), loop.create_future())
        self._open[(topic, partition)] = slot
        loop.call_later(self.linger, self._ship, topic, partition, slot)
        return slot

    def _ship(self, topic: str, partition: int, only: object = None) -> None:
        slot = self._open.get((topic, partition))
        if slot is None or (only is not None and slot is not only):
            return  # the timer of a batch that has gone already
        del self._open[(topic, partition)]
        batch, done = slot
        batch.close()
        task = asyncio.get_running_loop().create_task(self._send(batch, topic, partition, done))
        self._shipping.add(task)
        task.add_done_callback(self._shipping.discard)

    async def _send(self, batch: BatchBuilder, topic: str, partition: int, done: asyncio.Future[Any]) -> None:
        try:
            ack = await self.producer.send_batch(batch, topic, partition=partition)
            result = await ack
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(result)

    async def flush(self) -> None:
        """Send every open batch now and wait until all are acknowledged or failed."""
        for topic, partition in list(self._open):
            self._ship(topic, partition)
        if self._shipping:
            await asyncio.gather(*self._shipping, return_exceptions=True)


#: aiokafka's producer refuses a record over ``max_request_size`` (its default, 1 MiB).
PRODUCER_MAX_REQUEST_BYTES = 1024 * 1024
# what a record adds to its key, value and headers in a batch of its own (v2 record
# batch header 61 bytes, the record's varints; generous: the check must never pass a
# record the broker refuses)
RECORD_OVERHEAD_BYTES = 512


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] = ()) -> int:
    """An upper bound of the bytes a record takes in a batch of its own (uncompressed)."""
    size = RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, hval in headers:
        size += len(name) + len(hval or b"") + 10
    return size


async def max_message_bytes(settings: AntingSettings, topics: Iterable[str]) -> dict[str, int]:
    """The largest record each topic takes: its ``max.message.bytes`` as the broker reports
    it (a topic override, else the broker's ``message.max.bytes``), capped by what the
    producer sends (:data:`PRODUCER_MAX_REQUEST_BYTES`).

    A topic the broker does not describe (not created yet, not allowed) gets the producer's
    cap and a warning: Kafka's default topic limit is about the same (1 MiB + 12 bytes).
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    names = list(topics)
    limits = dict.fromkeys(names, PRODUCER_MAX_REQUEST_BYTES)
    admin = make_admin(settings)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"max.message.bytes": None}) for n in names])
        for response in responses:
            for resource in response.resources:
                error_code, _, _, name, entries = resource[:5]
                if error_code:
                    log.warning("cannot read the topic's max.message.bytes", extra={"topic": name, "error_code": error_code})
                    continue
                for entry in entries:
                    if entry[0] == "max.message.bytes" and entry[1] is not None:
                        limits[name] = min(int(entry[1]), PRODUCER_MAX_REQUEST_BYTES)
    finally:
        await admin.close()
    return limits


__all__ = ["PRODUCER_MAX_REQUEST_BYTES", "RECORD_OVERHEAD_BYTES", "SAFE_CONSUMER", "SAFE_PRODUCER",
           "RecordBatches", "abandon_producer", "cluster_answers", "ensure_topics", "make_admin",
           "make_consumer", "make_producer", "max_message_bytes", "partition_by_key",
           "record_size", "wait_for_partitions"]
