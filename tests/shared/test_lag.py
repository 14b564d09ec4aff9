"""Consumer lag from the broker (shared/lag.py): end offset minus the group's committed
offset, with no consumer of the group running or while its worker keeps failing;
the arithmetic and the gauge's series without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import REGISTRY

from devtools.localkafka import free_port
from devtools.testing import settings_for
from shared.kafka import make_admin, make_consumer, make_producer
from shared.lag import LagMonitor, lag_of
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS

TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)
TP2 = TopicPartition("t", 2)


def gauge(group: str, topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "anting_consumer_lag", {"group": group, "topic": topic, "partition": str(partition)})


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def write(settings: AntingSettings, topic: str, partition: int, n: int) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, b"%d" % i, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def commit(settings: AntingSettings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` the way a consumer does, then leave."""
    consumer = make_consumer(settings, group_id=group)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


def test_lag_is_end_minus_committed_never_negative() -> None:
    """Each partition: end minus committed, 0 when committed is at or past the end."""
    assert lag_of({TP0: 10, TP1: 5}, {TP0: 4, TP1: 7}, {}) == {TP0: 6, TP1: 0}


def test_partitions_never_committed_count_from_the_log_start() -> None:
    """No committed offset (absent, or -1 as OffsetFetch answers) counts from the log start."""
    lag = lag_of({TP0: 10, TP1: 10, TP2: 10}, {TP1: -1}, {TP0: 3, TP1: 4})
    assert lag == {TP0: 7, TP1: 6, TP2: 10}


def test_publish_sets_the_gauge_and_drops_partitions_gone() -> None:
    """The gauge gets one series per (group, topic, partition); a partition no longer
    reported (a deleted topic) loses its series."""
    monitor = LagMonitor(settings_for("127.0.0.1:1"), {"publish-test": ["t"]})
    monitor.publish({"publish-test": {TP0: 3, TP1: 0}})
    assert gauge("publish-test", "t", 0) == 3 and gauge("publish-test", "t", 1) == 0
    monitor.publish({"publish-test": {TP1: 2}})
    assert gauge("publish-test", "t", 0) is None and gauge("publish-test", "t", 1) == 2


async def test_no_broker_never_raises_and_stops_at_once() -> None:
    """With nothing listening the monitor keeps trying (no exception out of it, no series),
    and stop() ends it promptly."""
    monitor = LagMonitor(settings_for(f"127.0.0.1:{free_port()}"), {"nobroker-test": ["t"]},
                         interval=0.1, timeout=2.0)
    task = monitor.start()
    await asyncio.sleep(1.5)
    assert not task.done()
    t0 = time.monotonic()
    await monitor.stop()
    assert time.monotonic() - t0 < 5
    assert task.cancelled()
    assert gauge("nobroker-test", "t", 0) is None


async def test_lag_of_a_group_with_no_consumer_running(topics: AntingSettings) -> None:
    """A group that committed offset X and left: N records written after X read as lag N,
    and more as more are written; partitions it never committed count from the log start."""
    topic = topics.topic(ANNOUNCEMENTS)  # three partitions
    group = f"{topics.topic_prefix}idle"
    await write(topics, topic, 0, 5)
    await commit(topics, group, {TopicPartition(topic, 0): 5})
    await write(topics, topic, 0, 7)
    await write(topics, topic, 1, 3)
    admin = make_admin(topics)
    await admin.start()
    try:  # partition 1's log now starts at offset 1: two records are left to read
        await admin.delete_records({TopicPartition(topic, 1): RecordsToDelete(1)})
    finally:
        await admin.close()

    monitor = LagMonitor(topics, {group: [topic]}, interval=0.1)
    lags = await monitor.measure()
    await monitor.close()
    assert lags == {group: {TopicPartition(topic, 0): 7, TopicPartition(topic, 1): 2,
                            TopicPartition(topic, 2): 0}}

    async with monitor:
        await wait_until(lambda: gauge(group, topic, 0) == 7, 30, "the gauge at 7")
        assert gauge(group, topic, 1) == 2 and gauge(group, topic, 2) == 0
        await write(topics, topic, 0, 4)
        await wait_until(lambda: gauge(group, topic, 0) == 11, 30, "the gauge at 11")


async def test_lag_grows_while_the_worker_keeps_failing(topics: AntingSettings) -> None:
    """A worker whose session fetches, fails and starts again without ever committing
    (a record it cannot write): the gauge counts every record written meanwhile."""
    topic = topics.topic(ANNOUNCEMENTS)
    group = f"{topics.topic_prefix}failing"
    fetched = 0

    async def failing_worker() -> None:
        nonlocal fetched
        while True:
            consumer = make_consumer(topics, topic, group_id=group)
            try:
                await consumer.start()
                batch = await consumer.getmany(timeout_ms=10_000)
                fetched += sum(len(records) for records in batch.values())
                # ... and the session fails before it commits anything
            finally:
                await consumer.stop()
            await asyncio.sleep(0.1)

    await write(topics, topic, 0, 10)
    worker = asyncio.create_task(failing_worker())
    try:
        async with LagMonitor(topics, {group: [topic]}, interval=0.1):
            await wait_until(lambda: fetched >= 10, 60, "the worker fetching")
            await wait_until(lambda: gauge(group, topic, 0) == 10, 30, "the gauge at 10")
            await write(topics, topic, 0, 15)
            await wait_until(lambda: gauge(group, topic, 0) == 25, 30, "the gauge at 25")
            assert not worker.done()  # still at it, committing nothing
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
