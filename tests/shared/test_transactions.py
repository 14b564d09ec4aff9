"""KIP-447 on aiokafka (shared/aiokafka_ext.py), at the protocol level against the real
broker: TxnOffsetCommit v3 with the consumer's group metadata, the group coordinator
fencing an old generation, OffsetFetch v7 ``require_stable`` waiting for an open
transaction."""

from __future__ import annotations

import asyncio
import io
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.protocol.types import Int32

from devtools.testing import read_topic
from shared.aiokafka_ext import (
    ConsumerGroupMetadata,
    FencedByGroupError,
    OffsetFetchRequest_v7,
    TransactionalProducer,
    TxnOffsetCommitRequest_v3,
    fetch_stable_offsets,
    group_metadata,
)
from shared.kafka import make_consumer
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS, ENRICHED_EVENTS


def test_v3_and_v7_encode_as_the_flexible_schema() -> None:
    """Compact strings and arrays, tagged fields: the bytes decode back to the same request."""
    req = TxnOffsetCommitRequest_v3(
        "txn", "grp", 42, 3, 7, "member-1", None,
        [("topic-a", [(0, 100, -1, "", {}), (2, 5, -1, None, {})], {})], {})
    raw = req.encode()
    back = TxnOffsetCommitRequest_v3.decode(raw)
    assert back.to_object() == req.to_object()
    # generation id sits after the producer epoch: 1+3 ("txn") 1+3 ("grp") 8 2
    assert Int32.decode(io.BytesIO(raw[4 + 4 + 10:4 + 4 + 10 + 4])) == 7
    fetch = OffsetFetchRequest_v7("grp", [("topic-a", [0, 1], {})], True, {})
    assert OffsetFetchRequest_v7.decode(fetch.encode()).to_object() == fetch.to_object()


def _consumer(settings: AntingSettings, group: str) -> AIOKafkaConsumer:
    return make_consumer(settings, settings.topic(ANNOUNCEMENTS), group_id=group,
                         session_timeout_ms=10000, heartbeat_interval_ms=300)


async def _wait_assigned(*consumers: AIOKafkaConsumer, generation_above: int = 0,
                         timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.assignment() and group_metadata(c).generation_id > generation_above
               and group_metadata(c).in_group for c in consumers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the group did not settle")


def _producer(settings: AntingSettings) -> TransactionalProducer:
    return TransactionalProducer(**settings.kafka.client_options(), enable_idempotence=True,
                                 acks="all", transactional_id=f"t-{uuid.uuid4().hex[:8]}")


@pytest.mark.kafka
async def test_offsets_commit_with_the_group_metadata(topics: AntingSettings) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(topics, group)
    await consumer.start()
    producer = _producer(topics)
    await producer.start()
    try:
        await _wait_assigned(consumer)
        tp = sorted(consumer.assignment())[0]
        meta = group_metadata(consumer)
        assert meta.group_id == group and meta.generation_id >= 1 and meta.member_id
        async with producer.transaction():
            await producer.send(topics.topic(ENRICHED_EVENTS), b"committed", key=b"k")
            await producer.send_offsets_to_transaction({tp: 5}, meta)
        assert await fetch_stable_offsets(consumer, [tp]) == {tp: 5}
        assert (await consumer.committed(tp)) == 5
        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=1, idle=0.5)
        assert [r.value for r in out] == [b"committed"]
    finally:
        await producer.stop()
        await consumer.stop()


@pytest.mark.kafka
async def test_an_old_generation_is_fenced_by_the_group_coordinator(topics: AntingSettings) -> None:
    """A consumer's metadata from before a rebalance: the broker refuses its offsets
    (KIP-447), the transaction aborts, nothing of it is visible to read_committed. The
    same offsets without metadata (aiokafka's v0 commit) are accepted: the gap KIP-447
    closes."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = _consumer(topics, group)
    await first.start()
    second = _consumer(topics, group)
    producer = _producer(topics)
    await producer.start()
    try:
        await _wait_assigned(first)
        stale = group_metadata(first)
        tp = sorted(first.assignment())[0]
        await second.start()
        await _wait_assigned(first, second, generation_above=stale.generation_id)

        await producer.begin_transaction()
        await producer.send(topics.topic(ENRICHED_EVENTS), b"zombie", key=b"k")
        with pytest.raises(FencedByGroupError):
            await producer.send_offsets_to_transaction({tp: 3}, stale)
        await producer.abort_transaction()

        # a member that is no one: refused the same way
        await producer.begin_transaction()
        with pytest.raises(FencedByGroupError):
            await producer.send_offsets_to_transaction(
                {tp: 3}, ConsumerGroupMetadata(group, stale.generation_id + 1, "nobody"))
        await producer.abort_transaction()

        # the owner now: accepted
        owner = first if tp in first.assignment() else second
        async with producer.transaction():
            await producer.send(topics.topic(ENRICHED_EVENTS), b"owner", key=b"k")
            await producer.send_offsets_to_transaction({tp: 4}, group_metadata(owner))
        assert await fetch_stable_offsets(first, [tp]) == {tp: 4}

        # aiokafka's own commit (no metadata): accepted from anyone
        async with producer.transaction():
            await producer.send_offsets_to_transaction({tp: 9}, group)
        assert await fetch_stable_offsets(first, [tp]) == {tp: 9}

        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=1, idle=0.5)
        assert [r.value for r in out] == [b"owner"]
    finally:
        await producer.stop()
        await second.stop()
        await first.stop()


@pytest.mark.kafka
async def test_a_stable_fetch_waits_for_the_open_transaction(topics: AntingSettings) -> None:
    """OffsetFetch v7 require_stable: UNSTABLE_OFFSET_COMMIT while a transaction holds the
    partition's offsets; the new offset once it commits. aiokafka's own fetch (v3) answers
    at once with the old one."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(topics, group)
    await consumer.start()
    producer = _producer(topics)
    await producer.start()
    try:
        await _wait_assigned(consumer)
        tp = sorted(consumer.assignment())[0]
        await producer.begin_transaction()
        await producer.send_offsets_to_transaction({tp: 7}, group_metadata(consumer))
        with pytest.raises(KafkaTimeoutError):
            await fetch_stable_offsets(consumer, [tp], timeout=0.5)
        assert await consumer.committed(tp) is None  # not stable: the pending commit unseen
        waiting = asyncio.create_task(fetch_stable_offsets(consumer, [tp], timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await producer.commit_transaction()
        assert await asyncio.wait_for(waiting, 10) == {tp: 7}
        other = TopicPartition(tp.topic, (tp.partition + 1) % ANNOUNCEMENTS.partitions)
        assert await fetch_stable_offsets(consumer, [other]) == {other: None}
    finally:
        await producer.stop()
        await consumer.stop()
