"""ANTING_LOG_LEVEL=DEBUG traces each record through notify's pipeline, one line per step
naming the event id, topic, partition and offset and the step's outcome; with DEBUG off,
nothing is formatted at all."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from services.notify import pipeline as pipeline_mod
from services.notify.notification import idempotency_key
from services.notify.pipeline import EventPipeline

from .helpers import ACME, agreement, encode


def _record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("enriched-events", 2, offset, 1_700_000_000_000, 0, b"k", value, None, 1, len(value), [])


def _pipeline(subs: list[Any], suppressed: dict[str, str]) -> tuple[EventPipeline, list[Any]]:
    """A pipeline over in-memory fakes: ``subs`` all match, ``suppressed`` maps an
    idempotency key to the ledger's reason; returns it and the deliveries it started."""
    started: list[Any] = []

    async def run(delivery: Any, acks: list[Any]) -> None:
        started.append(delivery)

    async def send_and_wait(letter: Any) -> None:
        return None

    store = SimpleNamespace(matching=lambda event: [(s, []) for s in subs])
    ledger = SimpleNamespace(suppresses=suppressed.get)
    deliverer = SimpleNamespace(run=run, suppressed=lambda *a: None, settings=SimpleNamespace(group="g"))
    dlq = SimpleNamespace(send_and_wait=send_and_wait)
    return EventPipeline(store, ledger, deliverer, SimpleNamespace(), dlq), started  # type: ignore[arg-type]


def _sub(sub_id: str) -> Any:
    return SimpleNamespace(id=sub_id, channel=SimpleNamespace(type="webhook"), digest=None)


def test_debug_traces_every_step_of_every_record(caplog: pytest.LogCaptureFixture) -> None:
    """Each step is one line with the id and topic[partition]@offset: decoded, matched and
    delivering or suppressed (with the ledger's reason), done; a record that is no event:
    dead-lettered."""
    event = agreement([ACME])
    done = {idempotency_key(event.source, event.id, "sub_two"): "delivered already"}
    pipe, started = _pipeline([_sub("sub_one"), _sub("sub_two")], done)
    with caplog.at_level(logging.DEBUG, logger=pipeline_mod.__name__):
        asyncio.run(pipe.handle_event(_record(encode(event), 41)))
        asyncio.run(pipe.handle_event(_record(b"not json", 42)))
    lines = [r.getMessage() for r in caplog.records if r.name == pipeline_mod.__name__]
    at = f"notify {event.id} enriched-events[2]@41: "
    assert lines[:4] == [
        at + f"decoded agreement.signed from {event.source}",
        at + "matched sub_one (webhook), delivering",
        at + "matched sub_two (webhook), suppressed: delivered already",
        at + "done: 1 attempt(s) made, 0 write(s) for the commit to await",
    ], lines
    assert lines[4].startswith("notify - enriched-events[2]@42: dead-lettered ("), lines
    assert len(lines) == 5 and len(started) == 1
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == pipeline_mod.__name__)


def test_without_debug_nothing_is_traced_or_formatted(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """At INFO the trace is never called (its arguments are never even built)."""
    def never(*args: object) -> None:
        raise AssertionError("traced with DEBUG off")

    monkeypatch.setattr(pipeline_mod, "_trace", never)
    pipe, started = _pipeline([_sub("sub_one")], {})
    with caplog.at_level(logging.INFO, logger=pipeline_mod.__name__):
        asyncio.run(pipe.handle_event(_record(encode(agreement([ACME])), 7)))
        asyncio.run(pipe.handle_event(_record(b"not json", 8)))
    assert len(started) == 1 and not [r for r in caplog.records if r.name == pipeline_mod.__name__]
