"""The consumer loop's offsets, on the real broker: a record whose handler handed back
its writes' acknowledgements is committed only once they resolve."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from services.notify.consume import ConsumerLoop
from shared.kafka import make_consumer
from shared.settings import AntingSettings
from shared.testing import produce
from shared.topics import NOTIFY_RETRIES

from .helpers import wait_until


async def test_offsets_wait_for_handed_back_acks(topics: AntingSettings) -> None:
    """Offsets pass a record only after the acknowledgements its handler returned have resolved
    (an awaitable, or a list of futures: every one of them)."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a", b"b", b"c"], [b"k", b"k", b"k"])  # one key: one partition
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[None]] = {}
    both: list[asyncio.Future[None]] = []

    async def handler(record: Any) -> asyncio.Future[None] | list[asyncio.Future[None]] | None:
        if record.value == b"a":
            return None  # finished at once
        pending[record.offset] = loop.create_future()
        if record.value == b"c":
            both.extend([pending[record.offset], loop.create_future()])
            return both
        return pending[record.offset]

    consumer = make_consumer(topics, group_id=f"{topics.topic_prefix}loop")
    await consumer.start()
    stop = asyncio.Event()
    cl = ConsumerLoop(consumer, topic, handler, max_in_flight=10, commit_interval=0.1)
    cl.subscribe()
    task = asyncio.create_task(cl.run(stop, grace=1.0))
    try:
        await wait_until(lambda: len(pending) == 2, 60, "records handled")
        await asyncio.sleep(0.5)  # several commit intervals
        tp = next(iter(cl.tracker.next))
        first = min(pending)
        assert cl.tracker.committed.get(tp) == first  # "a" done, "b" not acknowledged yet
        pending[first].set_result(None)
        await wait_until(lambda: cl.tracker.committed.get(tp) == first + 1, 30, "b committed")  # "c" pending
        pending[first + 1].set_result(None)  # the first of "c"'s two
        await asyncio.sleep(0.5)
        assert cl.tracker.committed.get(tp) == first + 1
        both[1].set_result(None)
        await wait_until(lambda: cl.tracker.committed.get(tp) == first + 2, 30, "c committed")
        stop.set()
        await task
        assert (await consumer.committed(TopicPartition(topic, tp.partition))) == first + 2
    finally:
        stop.set()
        await consumer.stop()
