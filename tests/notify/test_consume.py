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


async def test_flow_control_takes_no_more_than_room_and_drops_nothing(topics: AntingSettings) -> None:
    """With every slot taken the loop asks for no more records; stalled past
    ``stalled_after`` it pauses (and keeps polling); freed, it takes every remaining
    record exactly once."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"%d" % i for i in range(300)], [b"k"] * 300)
    release = asyncio.Event()
    seen: list[int] = []
    running = 0
    most = 0

    async def handler(record: Any) -> None:
        nonlocal running, most
        seen.append(record.offset)
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    consumer = make_consumer(topics, group_id=f"{topics.topic_prefix}flow")
    await consumer.start()
    stop = asyncio.Event()
    cl = ConsumerLoop(consumer, topic, handler, max_in_flight=100, commit_interval=0.1)
    cl.stalled_after = 1.0
    cl.subscribe()
    task = asyncio.create_task(cl.run(stop, grace=1.0))
    try:
        await wait_until(lambda: len(seen) == 100, 60, "the first 100 records taken")
        assert not cl.paused  # full, but not for long yet
        await wait_until(lambda: cl.paused, 10, "paused after a stall")
        await asyncio.sleep(1.5)  # polls while paused: still nothing more taken
        assert len(seen) == 100 and most == 100
        release.set()
        await wait_until(lambda: len(seen) == 300, 60, "every record taken")
        await wait_until(lambda: not cl.paused, 10, "resumed")
        assert most <= 100
        assert sorted(seen) == list(range(min(seen), min(seen) + 300))  # each once, none skipped
    finally:
        stop.set()
        release.set()
        await task
        await consumer.stop()
