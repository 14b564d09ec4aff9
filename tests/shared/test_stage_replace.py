"""The stage runner replacing a producer (pure logic, no broker): a producer whose
replacement cannot start is closed without its flush, so the batches it still holds (work
already aborted or refused) are never sent; one whose replacement started is stopped."""

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
