"""A healthy start is quiet: ensure_topics waits for the coordinators and the in-sync
replicas, so the services' first group join and transaction log no warning or error,
and what aiokafka logs about a retriable condition is info, once per condition."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from devtools.localkafka import LocalKafka
from devtools.testing import settings_for
from shared.kafka import TransientKafkaLogs, ensure_topics, make_admin, make_consumer, make_producer
from shared.topics import ALL_TOPICS, ANNOUNCEMENTS, ENRICHED_EVENTS


def record(level: int, msg: str, name: str = "aiokafka.consumer.group_coordinator") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_a_retriable_condition_is_info_and_said_once() -> None:
    """The coordinator-not-available error and the not-enough-replicas warning of a start
    become info; the same condition again within the window is dropped; a real error
    passes untouched."""
    f = TransientKafkaLogs(every=30)
    first = record(logging.ERROR, "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    assert f.filter(first) and first.levelno == logging.INFO and first.levelname == "INFO"
    again = record(logging.ERROR, "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    assert not f.filter(again)
    replicas = record(logging.WARNING, "Got error produce response on topic-partition "
                      "TopicPartition(topic='announcements', partition=1), retrying. Error: "
                      "<class 'aiokafka.errors.NotEnoughReplicasError'>", "aiokafka.producer.sender")
    assert f.filter(replicas) and replicas.levelno == logging.INFO
    other_node = record(logging.ERROR, "Unable connect to node with id 2: [Errno 111] Connection refused",
                        "aiokafka.client")
    assert f.filter(other_node) and other_node.levelno == logging.INFO
    real = record(logging.ERROR, "Unexpected error in sender routine: ValueError('boom')")
    assert f.filter(real) and real.levelno == logging.ERROR


@pytest.fixture
def fresh_broker() -> Iterator[LocalKafka]:
    """A broker started a moment ago on empty storage: no internal topic exists yet."""
    broker = LocalKafka(heap="384m").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.kafka
async def test_first_start_on_an_empty_broker_logs_no_warning(
    fresh_broker: LocalKafka, caplog: pytest.LogCaptureFixture,
) -> None:
    """On an empty broker ensure_topics leaves the offsets and transaction-state topics
    created and led; a consumer group's first join and commit and a producer's first
    transaction then log no warning or error (aiokafka's, or ours)."""
    settings = settings_for(fresh_broker.bootstrap)
    caplog.set_level(logging.INFO)
    await ensure_topics(settings, ALL_TOPICS)
    admin = make_admin(settings)
    await admin.start()
    try:
        described = {d["topic"]: d for d in await admin.describe_topics(["__consumer_offsets", "__transaction_state"])}
    finally:
        await admin.close()
    for name in ("__consumer_offsets", "__transaction_state"):
        assert described[name]["partitions"], f"{name} not created"
        assert all(p["leader"] >= 0 for p in described[name]["partitions"]), f"{name} has no leader"

    source, sink = settings.topic(ANNOUNCEMENTS), settings.topic(ENRICHED_EVENTS)
    producer = make_producer(settings, transactional_id=f"{settings.topic_prefix}quiet")
    await producer.start()
    consumer = make_consumer(settings, source, group_id=f"{settings.topic_prefix}quiet")
    await consumer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(sink, b"{}", key=b"k")
        await consumer.getmany(timeout_ms=3000)
        await consumer.commit({TopicPartition(source, 0): OffsetAndMetadata(0, "")})
    finally:
        await consumer.stop()
        await producer.stop()
    loud = [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == []
