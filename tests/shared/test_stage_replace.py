"""The stage runner's producer hygiene (pure logic, no broker): a producer whose
replacement cannot start is closed without its flush, so the batches it still holds (work
already aborted or refused) are never sent; one whose replacement started is stopped; an
abort is sent only once every partition has a leader again."""

from __future__ import annotations

from typing import Any

import pytest

import shared.stage as stage_module
from shared.settings import AntingSettings
from shared.stage import Guarantee, Outputs, Record, Stage, StageRunner


class _Handler:
    async def handle(self, records: list[Record], out: Outputs) -> None:  # pragma: no cover
        raise AssertionError("not called")


class _Producer:
    """What the runner calls on a producer when it replaces one."""

    def __init__(self, *, starts: bool = True) -> None:
        self.starts = starts
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if not self.starts:
            raise AssertionError("Did we not perform bootstrap?")  # what aiokafka raised

    async def stop(self) -> None:
        self.calls.append("stop")


def _runner(monkeypatch: pytest.MonkeyPatch, new: _Producer) -> tuple[StageRunner, list[Any]]:
    stage = Stage(name="t", inputs=("in",), outputs=("out",), dead_letters="dead-letters",
                  group="g", guarantee=Guarantee.EXACTLY_ONCE)
    runner = StageRunner(stage, AntingSettings(), _Handler())
    abandoned: list[Any] = []

    async def abandon(producer: Any, timeout: float = 2.0) -> None:
        abandoned.append(producer)

    async def no_limits() -> None:
        return None

    monkeypatch.setattr(stage_module, "abandon_producer", abandon)
    monkeypatch.setattr(runner, "read_limits", no_limits)
    monkeypatch.setattr(runner, "_new_producer", lambda: new)
    return runner, abandoned


async def test_the_old_producer_is_dropped_unflushed_when_its_replacement_cannot_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _Producer(), _Producer(starts=False)
    runner, abandoned = _runner(monkeypatch, new)
    runner.producer = old  # type: ignore[assignment]
    with pytest.raises(AssertionError, match="bootstrap"):
        await runner._replace_producer()
    assert "stop" not in old.calls, "stop() flushes the old producer's batches of aborted work"
    assert abandoned == [old]
    assert new.calls == ["start", "stop"]  # the half-started one is closed too
    assert runner.producer is None


async def test_the_old_producer_is_stopped_once_its_replacement_has_started(
        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = _Producer(), _Producer()
    runner, abandoned = _runner(monkeypatch, new)
    runner.producer = old  # type: ignore[assignment]
    await runner._replace_producer()
    assert old.calls == ["stop"]
    assert abandoned == []
    assert runner.producer is new


# --- an abort waits for every partition's leader ---------------------------------------


class _Metadata:
    """What aiokafka's ``ClusterMetadata`` answers, for one topic of two partitions."""

    def __init__(self, brokers: int, led: set[int]) -> None:
        self._brokers, self._led = brokers, led

    def brokers(self) -> set[int]:
        return set(range(self._brokers))

    def topics(self, exclude_internal_topics: bool = True) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._led


class _Client:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers

    async def fetch_all_metadata(self) -> Any:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Answering:
    def __init__(self, *answers: Any) -> None:
        self.client = _Client(list(answers))


async def test_leaders_settled_waits_for_every_partition_to_have_a_leader() -> None:
    from aiokafka.errors import KafkaError

    from shared.kafka import leaders_settled

    # a fenced lone broker: no broker in the answer, then one partition leaderless, then both led
    producer = _Answering(KafkaError("no brokers"), _Metadata(0, set()), _Metadata(1, {0}), _Metadata(1, {0, 1}))
    assert await leaders_settled(producer, 5.0, interval=0.01) == []  # type: ignore[arg-type]
    assert len(producer.client.answers) == 1  # asked until the fourth answer
    # never settling: what is still leaderless, once the time is up
    stuck = _Answering(_Metadata(1, {0}))
    assert await leaders_settled(stuck, 0.05, interval=0.01) == ["t[1]"]  # type: ignore[arg-type]
    assert await leaders_settled(_Answering(_Metadata(0, set())), 0.05, interval=0.01) == ["(no broker)"]  # type: ignore[arg-type]
    # only the topics asked about count: a leaderless partition elsewhere does not hold it up
    assert await leaders_settled(stuck, 0.05, interval=0.01, topics={"other"}) == []  # type: ignore[arg-type]


async def test_an_abort_is_sent_once_every_partition_has_a_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator skips the abort marker of a partition it finds leaderless, and the
    next commit marker there would commit the aborted records: the runner asks first."""
    calls: list[str] = []

    async def settled(producer: Any, timeout: float, interval: float = 0.2,
                      topics: Any = None) -> list[str]:
        calls.append(f"leaders of {sorted(topics)}")
        return []

    class _Txn:
        async def abort_transaction(self) -> None:
            calls.append("abort")

    monkeypatch.setattr(stage_module, "leaders_settled", settled)
    runner, _ = _runner(monkeypatch, _Producer())
    await runner._abort_transaction(_Txn())  # type: ignore[arg-type]
    # the topics its markers go to: the outputs, dead-letters and the group's offsets
    assert calls == ["leaders of ['__consumer_offsets', 'dead-letters', 'out']", "abort"]
