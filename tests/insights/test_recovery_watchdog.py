"""The recovery watchdog: without Kafka, when it starts recovery over and when it leaves
it alone; on a real broker, a faust recovery that lost the resume of its changelog
partitions (and so waited for ever, as faust-streaming's users report) is started over
and completes with the whole table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from faust.types import TP

from devtools.testing import produce, wait_until
from services.insights.settings import InsightsSettings
from services.insights.state import Entity
from services.insights.streams import Insights, RecoveryWatchdog
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS
from tests.insights.helpers import expected_from_topic, random_events


class FakeRecovery:
    """What the watchdog reads of faust's Recovery."""

    def __init__(self) -> None:
        self.in_recovery = False
        self.remaining = 0
        self.signal_recovery_start = asyncio.Event()

    def active_remaining_total(self) -> int:
        return self.remaining


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watched(stall: float = 10.0) -> tuple[FakeRecovery, Clock, RecoveryWatchdog]:
    recovery, clock = FakeRecovery(), Clock()
    return recovery, clock, RecoveryWatchdog(recovery, stall, clock=clock)


def test_a_recovery_standing_still_is_started_over_once_per_stall() -> None:
    recovery, clock, dog = watched(10)
    recovery.in_recovery, recovery.remaining = True, 40
    assert not dog.check()
    clock.now += 9.9
    assert not dog.check() and not recovery.signal_recovery_start.is_set()
    clock.now += 0.2
    assert dog.check() and recovery.signal_recovery_start.is_set() and dog.restarts == 1
    # the restarted recovery gets its own stall_seconds before the next restart
    recovery.signal_recovery_start.clear()
    clock.now += 1
    assert not dog.check()
    clock.now += 9
    assert not dog.check()
    clock.now += 1.1
    assert dog.check() and dog.restarts == 2


def test_progress_and_the_end_of_recovery_reset_the_clock() -> None:
    recovery, clock, dog = watched(10)
    recovery.in_recovery, recovery.remaining = True, 40
    for _ in range(5):  # slow but moving: never restarted
        dog.check()
        clock.now += 8
        recovery.remaining -= 1
    assert not dog.check() and dog.restarts == 0
    recovery.in_recovery = False  # done; a later recovery starts with a fresh clock
    clock.now += 50
    assert not dog.check()
    recovery.in_recovery = True
    assert not dog.check()
    clock.now += 9
    assert not dog.check() and dog.restarts == 0


def test_no_recovery_is_never_restarted() -> None:
    recovery, clock, dog = watched(1)
    for _ in range(5):
        clock.now += 10
        assert not dog.check()
    assert not recovery.signal_recovery_start.is_set()


async def test_run_checks_until_stopped() -> None:
    recovery, clock, dog = watched(0.5)
    recovery.in_recovery, recovery.remaining = True, 3
    stop = asyncio.Event()
    task = asyncio.create_task(dog.run(stop, interval=0.01))
    await asyncio.sleep(0.05)
    clock.now += 1
    await wait_until(recovery.signal_recovery_start.is_set, 5, "the watchdog's restart")
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_run_survives_a_recovery_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    recovery, _, dog = watched(0.5)
    recovery.in_recovery = True
    calls = 0

    def unreadable() -> int:
        nonlocal calls
        calls += 1
        raise KeyError("moved")

    recovery.active_remaining_total = unreadable  # type: ignore[method-assign]
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def short_sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", short_sleep)
    stop = asyncio.Event()
    task = asyncio.create_task(dog.run(stop, interval=0.01))
    await wait_until(lambda: calls >= 3, 5, "the watchdog going on after an error")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert 60 in slept and not task.exception()


def _losing_the_first_changelog_resume(resume: Callable[[Iterable[TP]], None],
                                       lost: list[set[TP]]) -> Callable[[Iterable[TP]], None]:
    """``consumer.resume_partitions`` that drops the changelog partitions of its first call
    naming any (recovery's "Restoring state from changelog topics"): they stay paused and
    recovery waits for records that never come."""

    def resume_partitions(tps: Iterable[TP]) -> None:
        tps = set(tps)
        changelog = {tp for tp in tps if tp.topic.endswith("-changelog")}
        if changelog and not lost:
            lost.append(changelog)
            tps -= changelog
        resume(tps)

    return resume_partitions


async def test_a_recovery_that_lost_its_changelog_partitions_completes(topics: AntingSettings) -> None:
    events = random_events(200, seed=5)
    await produce(topics, topics.topic(ENRICHED_EVENTS), events)
    expected = await expected_from_topic(topics, len(events))
    settings = InsightsSettings(kafka=topics.kafka, topic_prefix=topics.topic_prefix, replication_factor=1,
                                batch_seconds=0.2, commit_interval_seconds=0.5, session_timeout_ms=6000,
                                recovery_stall_seconds=3)

    def all_folded(insights: Insights) -> bool:
        """Every event counted in every entity it names (replays change nothing after)."""
        now = int(time.time() * 1000)
        for key, counts in expected.all.items():
            stored = insights.table.get(key.encode())
            if stored is None or Entity.load(stored).activity("all", now)["total"] != counts["total"]:
                return False
        return True

    # the first instance folds the events: the changelog holds its table when it stops
    first = Insights(settings)
    await asyncio.wait_for(first.start(), 90)
    try:
        await wait_until(lambda: first.recovered() and all_folded(first), 90, "the table folded")
    finally:
        await first.stop()
    folded = dict(first.table.items())

    # the second recovers the table from the changelog, but loses the resume of its partitions
    second = Insights(settings)
    consumer: Any = second.app.consumer  # Any: faust's ConsumerT
    lost: list[set[TP]] = []
    consumer.resume_partitions = _losing_the_first_changelog_resume(consumer.resume_partitions, lost)
    try:
        # start() returns once the first recovery completed: without the watchdog, never
        await asyncio.wait_for(second.start(), 90)
        await wait_until(second.recovered, 30, "the second instance's recovery")
        assert lost, "the changelog partitions' resume was never lost: nothing was tested"
        assert second.watchdog is not None and second.watchdog.restarts >= 1
        assert dict(second.table.items()) == folded
    finally:
        await second.stop()
