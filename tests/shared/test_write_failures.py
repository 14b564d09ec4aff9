"""Writes that fail, on the real broker: a concurrent stage tries a record again in this
process instead of leaving it uncommitted until a restart, dead-letters a record whose
write the broker refuses for itself, and a renewed producer writes on where the old one's
sequence numbers were spent."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, OutOfOrderSequenceNumber

from devtools.testing import concurrent_stage, produce, read_topic, set_topic_config, wait_until
from services.notify.channels import MAX_ERROR_CHARS, Result
from shared.deadletters import DeadLetterWriter, from_record, read_dead_letters
from shared.kafka import RenewingProducer, make_producer
from shared.settings import AntingSettings
from shared.stage import RECORD_ATTEMPTS, ConcurrentSession, StageRunner
from shared.topics import NOTIFICATIONS, NOTIFY_RETRIES
from shared.write_failures import refuses_the_record


def test_a_failure_is_the_records_own_only_when_sending_it_again_cannot_succeed() -> None:
    """Too large, corrupt or not serialisable: the record's; a timeout or a broken
    sequence: the producer's."""
    assert refuses_the_record(MessageSizeTooLargeError())
    assert refuses_the_record(TypeError("value must be bytes"))
    assert not refuses_the_record(KafkaTimeoutError())
    assert not refuses_the_record(OutOfOrderSequenceNumber())


def test_an_attempts_error_text_is_bounded_whatever_the_receiver_sent() -> None:
    """A 1.2 MB Location quoted in an error is cut, saying how long it was."""
    result = Result("permanent", 302, "HTTP 302 redirect to " + "x" * 1_200_000 + " not followed")
    assert result.error is not None and len(result.error) < MAX_ERROR_CHARS + 40
    assert result.error.endswith("(1200034 characters)")


def _loop(topics: AntingSettings, handler: Any, name: str, **kw: Any) -> tuple[StageRunner, ConcurrentSession]:
    runner = StageRunner(concurrent_stage(topics, topics.topic(NOTIFY_RETRIES), name), topics, handler, **kw)
    assert runner.concurrent is not None
    return runner, runner.concurrent


async def test_a_record_whose_write_timed_out_is_tried_again_and_committed(topics: AntingSettings) -> None:
    """A write that fails with a producer timeout once: the record is handled again a
    moment later (not after a restart), and the partition's commit reaches the end."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a", b"b", b"c"], [b"k"] * 3)
    loop = asyncio.get_running_loop()
    seen: list[bytes] = []

    async def handler(record: Any) -> list[asyncio.Future[None]]:
        seen.append(record.value)
        ack: asyncio.Future[None] = loop.create_future()
        if record.value == b"b" and seen.count(b"b") == 1:
            ack.set_exception(KafkaTimeoutError())
        else:
            ack.set_result(None)
        return [ack]

    runner, cl = _loop(topics, handler, "timeout")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: seen.count(b"b") == 2, 30, "b handled again")
        tp = next(iter(cl.tracker.next))
        await wait_until(lambda: cl.tracker.committed.get(tp, 0) >= 3, 30, "committed to the end")
        assert sorted(seen) == [b"a", b"b", b"b", b"c"]
    finally:
        stop.set()
        await task


async def test_a_write_the_broker_refuses_for_the_record_dead_letters_it_and_the_stream_goes_on(
    topics: AntingSettings,
) -> None:
    """Each input makes one output record; the output topic takes 2 KB and one input makes
    8 KB: that input is tried RECORD_ATTEMPTS times, then dead-lettered with the broker's
    reason; every other input is written, the producer was renewed (later writes to the
    same partition are not refused as out of sequence) and the commit reaches the end."""
    out_topic = topics.topic(NOTIFICATIONS)
    await set_topic_config(topics, out_topic, {"max.message.bytes": "2000"})
    values = [b"small-1", b"BIG", b"small-2", b"small-3", b"small-4"]
    await produce(topics, topics.topic(NOTIFY_RETRIES), values, [b"k"] * len(values))
    producer = RenewingProducer(lambda: make_producer(topics, linger_ms=0))
    await producer.start()
    dlq = DeadLetterWriter(producer, topics)
    tries: dict[bytes, int] = {}

    async def handler(record: Any) -> list[asyncio.Future[Any]]:
        tries[record.value] = tries.get(record.value, 0) + 1
        value = record.value * 1000 if record.value == b"BIG" else record.value
        return [await producer.send(out_topic, value=value, key=b"same-partition")]

    async def dead_letter(record: Any, exc: BaseException) -> Any:
        return await dlq.send(from_record(record, stage="test", error=exc))

    runner, cl = _loop(topics, handler, "refused", dead_letter=dead_letter)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        tp = TopicPartition(topics.topic(NOTIFY_RETRIES), 0)
        await wait_until(lambda: any(v >= len(values) for v in cl.tracker.committed.values()), 60,
                         "committed to the end")
        tp = next(iter(cl.tracker.committed))
        assert cl.tracker.committed[tp] == len(values)
        # its own refusals are counted; a try that met the old producer's spent sequence
        # (before the renewed one was up) is the producer's failure, tried again uncounted
        assert tries[b"BIG"] >= RECORD_ATTEMPTS
        assert producer.renewals >= 1
        written = sorted(r.value for r in await read_topic(topics, out_topic, expect=4, timeout=30))
        assert written == [b"small-1", b"small-2", b"small-3", b"small-4"]
        letters = [dl for _, dl in await read_dead_letters(topics, limit=10, idle_ms=500)]
        assert [dl.value for dl in letters] == [b"BIG"]
        assert letters[0].header("dlq.error.class") == "MessageSizeTooLargeError"
        assert letters[0].header("dlq.original.offset") == "1"
    finally:
        stop.set()
        await task
        await producer.stop()




async def test_a_record_that_keeps_failing_is_named_until_it_goes_through(topics: AntingSettings) -> None:
    """While a record's writes keep timing out, ``trouble()`` (notify's /readyz) names its
    coordinates and why; once they go through, it is None and the commit moves on."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a"], [b"k"])
    loop = asyncio.get_running_loop()
    healthy = asyncio.Event()

    async def handler(record: Any) -> list[asyncio.Future[None]]:
        ack: asyncio.Future[None] = loop.create_future()
        if healthy.is_set():
            ack.set_result(None)
        else:
            ack.set_exception(KafkaTimeoutError())
        return [ack]

    runner, cl = _loop(topics, handler, "trouble")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        assert runner.trouble is None  # failing, but not for 30 s
        await wait_until(lambda: cl.trouble(after=0.5) is not None, 30, "the failing record named")
        trouble = cl.trouble(after=0.5) or ""
        assert f"{topic}[" in trouble and "@0" in trouble and "KafkaTimeoutError" in trouble
        healthy.set()
        await wait_until(lambda: cl.trouble(after=0.0) is None, 30, "the record through")
        tp = next(iter(cl.tracker.next))
        await wait_until(lambda: cl.tracker.committed.get(tp, 0) >= 1, 30, "committed")
    finally:
        stop.set()
        await task


async def test_a_consumer_whose_group_coordination_died_is_replaced(topics: AntingSettings) -> None:
    """aiokafka's coordination task ending cancelled (its heartbeat stopped mid-rejoin) makes
    every poll raise CancelledError: the stage joins again with a new consumer, and the
    records after it are handled."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a"], [b"k"])
    seen: list[bytes] = []

    async def handler(record: Any) -> None:
        seen.append(record.value)

    runner, cl = _loop(topics, handler, "replaced")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: seen == [b"a"], 60, "the first record")
        consumer = cl.consumer
        consumer._coordinator._coordination_task.cancel()  # what aiokafka's own bug leaves
        await wait_until(lambda: cl.consumer is not consumer, 30, "a new consumer")
        await produce(topics, topic, [b"b"], [b"k"])
        await wait_until(lambda: b"b" in seen, 60, "the record after it")
        assert not task.done()
    finally:
        stop.set()
        await task
