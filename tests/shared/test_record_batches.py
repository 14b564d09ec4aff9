"""RecordBatches against the real broker: records written through aiokafka's batch
API land on the partition Kafka's default partitioner picks, in order, and each
append's future resolves once its batch is acknowledged — when full, after the
linger, or on flush."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from devtools.testing import read_topic
from shared.kafka import RecordBatches, make_producer, partition_by_key
from shared.settings import AntingSettings
from shared.topics import NOTIFICATIONS


async def test_batches_land_where_send_would_in_order(topics: AntingSettings) -> None:
    topic = topics.topic(NOTIFICATIONS)  # three partitions
    producer = make_producer(topics, max_batch_size=16 * 1024)  # small: many batches fill up
    await producer.start()
    batches = RecordBatches(producer, linger=0.05)
    try:
        futures = []
        for i in range(1000):
            key = f"sub_{i % 7}".encode()
            futures.append(batches.append(topic, await batches.partition_for(topic, key), key,
                                          b'{"n":%d,"pad":"%s"}' % (i, b"x" * 100)))
        assert len({id(f) for f in futures}) > 6  # full batches went out on their own
        await asyncio.wait_for(asyncio.gather(*futures), 30)
        # a lone record goes out after the linger, without a flush
        lone = batches.append(topic, 0, b"lone", b'{"n":-1}')
        await asyncio.wait_for(lone, 10)
        # and one more is sent at once by flush
        last = batches.append(topic, 1, b"last", b'{"n":-2}')
        await batches.flush()
        assert last.done() and last.exception() is None
        checked = await producer.partitions_for(topic)
    finally:
        await producer.stop()
    records = await read_topic(topics, topic, expect=1002)
    assert len(records) == 1002
    parts = sorted(checked)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        if r.key.startswith(b"sub_"):
            assert r.partition == partition_by_key(r.key, parts, parts)  # Kafka's default partition
            by_key[r.key].append(int(r.value.split(b",")[0].split(b":")[1]))
    assert all(ns == sorted(ns) for ns in by_key.values())  # in the order appended
    assert sum(len(ns) for ns in by_key.values()) == 1000
