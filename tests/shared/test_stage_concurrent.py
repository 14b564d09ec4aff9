"""The stage runner's concurrent mode, on the real broker: records of one key are handled
in order and other keys go on meanwhile; a record whose handler handed back its writes'
acknowledgements is committed only once they resolve; a partition whose records are all
done is committed at the consumer's position (past transaction markers)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from devtools.testing import concurrent_stage, produce, settings_for, wait_until
from shared.kafka import make_producer
from shared.lag import LagMonitor
from shared.settings import AntingSettings
from shared.stage import (
    RECORD_ATTEMPTS,
    ConcurrentSession,
    FailureLog,
    OffsetTracker,
    RecordHandler,
    StageRunner,
)
from shared.topics import ENRICHED_EVENTS, NOTIFY_RETRIES


def _runner(settings: AntingSettings, topic: str, handler: RecordHandler, group: str,
            **kw: Any) -> tuple[StageRunner, ConcurrentSession]:
    runner = StageRunner(concurrent_stage(settings, topic, group, **kw), settings, handler)
    assert runner.concurrent is not None
    return runner, runner.concurrent


async def test_records_of_one_key_are_handled_in_order_and_other_keys_go_on(topics: AntingSettings) -> None:
    """Two records of one key, the first slow: the second is not handled before the first's
    handler returns, while records of other keys are handled meanwhile; then the second
    runs, and everything is committed."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a1", b"b1", b"a2", b"c1", b"b2"], [b"A", b"B", b"A", b"C", b"B"])
    release = asyncio.Event()
    started: list[bytes] = []
    finished: list[bytes] = []

    async def handler(record: Any) -> None:
        started.append(record.value)
        if record.value == b"a1":
            await release.wait()
        finished.append(record.value)

    runner, session = _runner(topics, topic, handler, "keys")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: {b"b1", b"b2", b"c1"} <= set(finished), 60, "the other keys handled")
        await asyncio.sleep(0.5)  # several polls and commits
        assert b"a2" not in started  # its key's first record is still being handled
        assert started.index(b"b1") < started.index(b"b2")
        release.set()
        await wait_until(lambda: b"a2" in finished, 30, "the second record of the key")
        assert finished.index(b"a1") < started.index(b"a2")
        assert sorted(started) == [b"a1", b"a2", b"b1", b"b2", b"c1"]  # each once
        await wait_until(lambda: session.tracker.in_flight() == 0 and not session.keys, 30, "all done")
    finally:
        release.set()
        stop.set()
        await task


async def test_a_record_whose_handler_fails_holds_its_key_until_it_goes_through(topics: AntingSettings) -> None:
    """The first record of a key fails once: the second record of that key is handled only
    after the first was tried again and went through."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a1", b"a2"], [b"A", b"A"])
    runs: list[bytes] = []

    async def handler(record: Any) -> None:
        runs.append(record.value)
        if record.value == b"a1" and runs.count(b"a1") == 1:
            raise ValueError("the first try fails")

    runner, session = _runner(topics, topic, handler, "key-retry")
    session.retry_backoff.delay = lambda: 0.2  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: b"a2" in runs, 60, "the second record of the key")
        assert runs == [b"a1", b"a1", b"a2"]
        tp = next(iter(session.tracker.next))
        await wait_until(lambda: session.tracker.committed.get(tp, 0) >= 2, 30, "both committed")
    finally:
        stop.set()
        await task


async def test_a_record_dead_lettered_lets_its_key_go_on(topics: AntingSettings) -> None:
    """The first record of a key fails every time: after RECORD_ATTEMPTS tries it is
    dead-lettered, and only then is the second record of its key handled."""
    topic = topics.topic(NOTIFY_RETRIES)
    await produce(topics, topic, [b"a1", b"a2"], [b"A", b"A"])
    runs: list[bytes] = []
    letters: list[bytes] = []

    async def handler(record: Any) -> None:
        runs.append(record.value)
        if record.value == b"a1":
            raise ValueError("never readable")

    async def dead_letter(record: Any, exc: BaseException) -> None:
        letters.append(record.value)

    runner = StageRunner(concurrent_stage(topics, topic, "key-dead"), topics, handler, dead_letter=dead_letter)
    assert runner.concurrent is not None
    runner.concurrent.retry_backoff.delay = lambda: 0.1  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: b"a2" in runs, 60, "the second record of the key")
        assert runs == [b"a1"] * RECORD_ATTEMPTS + [b"a2"] and letters == [b"a1"]
    finally:
        stop.set()
        await task


async def test_offsets_wait_for_handed_back_acks(topics: AntingSettings) -> None:
    """Offsets pass a record only after the acknowledgements its handler returned have resolved
    (an awaitable, or a list of futures: every one of them); its key goes on meanwhile."""
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

    runner, cl = _runner(topics, topic, handler, "loop")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
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
        assert cl.tracker.committed.get(tp) == first + 2
    finally:
        stop.set()
        await task


async def test_flow_control_takes_no_more_than_room_and_drops_nothing(topics: AntingSettings) -> None:
    """With every slot taken the runner asks for no more records; stalled past
    ``stalled_after`` it pauses (and keeps polling); freed, it takes every remaining
    record exactly once."""
    topic = topics.topic(NOTIFY_RETRIES)
    values = [b"%d" % i for i in range(300)]
    await produce(topics, topic, values, values)  # a key each: all may run at once
    release = asyncio.Event()
    seen: list[bytes] = []
    running = 0
    most = 0

    async def handler(record: Any) -> None:
        nonlocal running, most
        seen.append(record.value)
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1

    runner, cl = _runner(topics, topic, handler, "flow", max_in_flight=100)
    cl.stalled_after = 1.0
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
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
        assert sorted(seen) == sorted(values)  # each once, none skipped
    finally:
        stop.set()
        release.set()
        await task


async def test_records_waiting_for_their_key_count_in_flight(topics: AntingSettings) -> None:
    """One key's records wait for the one being handled, and count against
    ``max_in_flight``: the runner takes no more than that, and none is lost."""
    topic = topics.topic(NOTIFY_RETRIES)
    values = [b"%d" % i for i in range(30)]
    await produce(topics, topic, values, [b"k"] * 30)
    release = asyncio.Event()
    seen: list[bytes] = []

    async def handler(record: Any) -> None:
        seen.append(record.value)
        await release.wait()

    runner, cl = _runner(topics, topic, handler, "waiting", max_in_flight=10)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: cl.in_flight() == 10, 60, "ten records taken")
        await asyncio.sleep(0.5)
        assert seen == [b"0"] and cl.waiting == 9 and cl.tracker.in_flight() == 10
        release.set()
        await wait_until(lambda: len(seen) == 30, 60, "every record handled")
        assert seen == values  # in order
    finally:
        stop.set()
        release.set()
        await task


def test_tracker_commits_the_position_once_nothing_is_pending() -> None:
    """With every record taken done, the commit is the consumer's position (past a
    transaction's commit marker); with one pending, the first offset not done."""
    tp = TopicPartition("t", 0)
    tracker = OffsetTracker()
    for offset in (0, 1, 2):
        tracker.add(tp, offset)
    tracker.done(tp, 0)
    tracker.done(tp, 2)
    assert tracker.settled() == []
    assert tracker.committable({tp: 4}) == {tp: OffsetAndMetadata(1, "")}
    tracker.done(tp, 1)
    assert tracker.settled() == [tp]
    assert tracker.committable({tp: 4}) == {tp: OffsetAndMetadata(4, "")}
    assert tracker.committable() == {tp: OffsetAndMetadata(3, "")}  # position unknown
    # a position read before more records were taken is behind them: not used
    assert tracker.committable({tp: 2}) == {tp: OffsetAndMetadata(3, "")}
    tracker.committed[tp] = 4
    assert tracker.committable({tp: 4}) == {}


async def test_commits_reach_the_end_of_a_transactional_topic(topics: AntingSettings) -> None:
    """Records written in transactions (one aborted), all processed: the group's committed
    offset is each partition's end offset, past the last commit or abort marker (lag 0
    for outside tools), not the last record's offset + 1."""
    topic = topics.topic(ENRICHED_EVENTS)  # three partitions
    producer = make_producer(topics, transactional_id=f"{topics.topic_prefix}txn")
    await producer.start()
    try:
        for partition, aborted in ((0, False), (1, False), (2, False), (0, False), (1, True)):
            await producer.begin_transaction()
            for i in range(3):
                await producer.send_and_wait(topic, b"%d" % i, partition=partition)
            if aborted:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
    finally:
        await producer.stop()
    seen: list[tuple[int, int]] = []

    async def handler(record: Any) -> None:
        seen.append((record.partition, record.offset))

    runner, cl = _runner(topics, topic, handler, "txn-loop")
    group = runner.stage.group
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    tps = [TopicPartition(topic, p) for p in range(3)]
    try:
        await wait_until(lambda: len(seen) == 12, 60, "the committed records processed")
        assert max(o for p, o in seen if p == 1) == 2  # the aborted ones never handed out
        # 3 records and a marker per transaction
        ends = {tps[0]: 8, tps[1]: 8, tps[2]: 4}
        await wait_until(lambda: all(cl.tracker.committed.get(tp) == ends[tp] for tp in tps),
                         30, "commits at the end offsets")
        stop.set()
        await task
        lags = await (monitor := LagMonitor(topics, {group: [topic]})).measure()
        await monitor.close()
        assert lags == {group: dict.fromkeys(tps, 0)}
    finally:
        stop.set()
        await task


def test_a_failure_that_hits_every_record_is_one_line_per_window(caplog: Any) -> None:
    """While a broker is away every record in flight fails alike: one error line (with the
    traceback) per kind per window, the next one counting what it left out."""
    failures = FailureLog("events", window=3600)
    with caplog.at_level(logging.ERROR, logger="shared.stage"):
        for _ in range(500):
            failures.failed("writes not acknowledged", TimeoutError("no broker"))
        failures.failed("handler failed", ValueError("bad"))
    lines = [r for r in caplog.records if r.name == "shared.stage"]
    assert [r.getMessage().split(";")[0] for r in lines] == [
        "events: writes not acknowledged", "events: handler failed"]
    assert all(r.exc_info is not None for r in lines)
    failures.window = 0.0  # the window is over: the next failure reports the 499 left out
    with caplog.at_level(logging.ERROR, logger="shared.stage"):
        failures.failed("writes not acknowledged", TimeoutError("no broker"))
    assert "(499 more records failed the same way" in caplog.records[-1].getMessage()


async def test_a_refused_retry_is_dropped_when_its_partition_changed_hands() -> None:
    """A record whose writes were refused runs again after the backoff, unless its partition
    was handed over meanwhile: then its new owner reads it again, and a late run here would
    deliver it twice and clear the new owner's pending offset."""
    runs: list[int] = []

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        runs.append(record.offset)

    settings = settings_for("localhost:9")  # never connected
    _, loop = _runner(settings, "t", handler, "g")
    loop.backoff.delay = lambda: 0.01  # type: ignore[method-assign]
    tp, other = TopicPartition("t", 0), TopicPartition("t", 1)

    def record(offset: int) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord("t", 0, offset, 0, 0, None, b"v", None, 0, 1, [])

    try:
        loop.tracker.add(tp, 1)
        loop._again(tp, record(1))
        loop.forget([other])  # another partition moved: this retry still runs
        await asyncio.sleep(0.1)
        loop.tracker.add(tp, 2)
        loop._again(tp, record(2))
        loop.forget([tp])  # this one moved: its retry is dropped
        loop.tracker.add(tp, 2)  # ... and the new assignment takes the record again
        await asyncio.sleep(0.1)
        assert runs == [1]
        assert loop.tracker.pending[tp] == {2}
    finally:
        await loop.consumer.stop()


async def test_a_revocation_waits_only_for_records_started() -> None:
    """Partitions revoked while records of a key wait for the one being handled: the
    waiting ones are held back (never started here, still uncommitted: the next owner
    reads them), and the revocation waits only for the one started."""
    started: list[int] = []
    release = asyncio.Event()

    async def handler(record: ConsumerRecord[bytes, bytes]) -> None:
        started.append(record.offset)
        await release.wait()

    _, session = _runner(settings_for("localhost:9"), "t", handler, "g")  # never connected
    tp = TopicPartition("t", 0)

    def record(offset: int) -> ConsumerRecord[bytes, bytes]:
        return ConsumerRecord("t", 0, offset, 0, 0, b"k", b"v", None, 1, 1, [])

    try:
        for offset in range(5):
            session._take(tp, record(offset))
        await asyncio.sleep(0.05)
        assert started == [0] and session.waiting == 4
        session.hold_back([tp])
        drained = asyncio.create_task(session.drain([tp], 5.0))
        await asyncio.sleep(0.2)
        assert not drained.done()  # the one started is not done yet
        release.set()
        await asyncio.wait_for(drained, 1.0)
        assert started == [0] and session.waiting == 0
        assert session.tracker.committable() == {tp: OffsetAndMetadata(1, "")}  # the rest read again
    finally:
        release.set()
        await session.consumer.stop()
