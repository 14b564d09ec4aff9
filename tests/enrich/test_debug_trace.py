"""ANTING_LOG_LEVEL=DEBUG traces each record through enrich, one line per record naming
where it sits (topic, partition, offset) and what became of it; with DEBUG off nothing
is formatted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord

from services.enrich import pipeline
from services.enrich.catalog import Catalog
from services.enrich.settings import EnrichSettings
from tests.enrich.helpers import event


class _Out:
    """An in-memory :class:`shared.stage.Outputs`: what the handler wrote and dead-lettered."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.letters: list[Any] = []

    async def send(self, origin: Any, topic: str, value: bytes, **kw: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def dead_letter(self, origin: Any, error: Any) -> None:
        self.letters.append(origin)

    def after_commit(self, callback: Any) -> None:
        pass


def _record(value: bytes, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("announcements", 1, offset, 1_700_000_000_000, 0, b"k", value, None, 1,
                          len(value), [])


async def test_debug_traces_every_record_with_its_coordinates_and_outcome(caplog: pytest.LogCaptureFixture) -> None:
    """An enriched record and an unreadable one: one DEBUG line each, with topic[p]@offset."""
    settings = EnrichSettings(kafka={"bootstrap_servers": "127.0.0.1:1"})
    enricher = pipeline.Enricher(settings, Catalog(settings))
    out = _Out()
    caplog.set_level(logging.DEBUG, logger="services.enrich.pipeline")
    await enricher.handle([_record(orjson.dumps(event(1)), 7), _record(b"{not json", 8)], out)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records if r.name == "services.enrich.pipeline"
             and r.levelno == logging.DEBUG]
    assert len(out.sent) == 1 and len(out.letters) == 1
    assert any(line.startswith("enrich announcements[1]@7: conference.announcement ev-000001 enriched")
               for line in lines), lines
    assert any(line.startswith("enrich announcements[1]@8: dead-lettered, unreadable") for line in lines), lines


async def test_with_debug_off_nothing_is_traced(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG off: the trace function is never called."""
    calls: list[Any] = []
    monkeypatch.setattr(pipeline, "_trace", lambda *a: calls.append(a))
    caplog.set_level(logging.INFO, logger="services.enrich.pipeline")
    settings = EnrichSettings(kafka={"bootstrap_servers": "127.0.0.1:1"})
    await pipeline.Enricher(settings, Catalog(settings)).handle(  # type: ignore[arg-type]
        [_record(orjson.dumps(event(1)), 7)], _Out())
    assert calls == []
