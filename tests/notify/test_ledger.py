"""The delivered-ledger forgets what is older than its retention, in order of last
write, so a long-running notify does not grow with every delivery it ever made; and
follows the topic only while another instance may be writing it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.notify.ledger import Ledger
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.testing import settings_for
from shared.topics import LEDGER_RETENTION_MS

from .helpers import wait_until


def _entry(state: str, at: datetime) -> bytes:
    return orjson.dumps({"state": state, "subscription": "sub_1", "attempt": 1, "at": at.isoformat()})


def test_prune_forgets_only_entries_past_retention() -> None:
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    week = timedelta(milliseconds=LEDGER_RETENTION_MS)
    view = ledger.view
    view.apply("msg_old1", _entry("delivered", now - week - timedelta(days=2)))
    view.apply("msg_old2", _entry("dead", now - week - timedelta(minutes=1)))
    view.apply("msg_rewritten", _entry("scheduled", now - week - timedelta(days=1)))
    view.apply("msg_new", _entry("delivered", now - timedelta(days=1)))
    # written again lately: moves behind the newer entry and is kept
    view.apply("msg_rewritten", _entry("delivered", now - timedelta(hours=1)))

    assert ledger.prune(now.timestamp() * 1000) == 2
    assert list(view.items) == ["msg_new", "msg_rewritten"]
    assert ledger.is_final("msg_rewritten") and ledger.is_final("msg_new")
    assert ledger.state("msg_old1") is None
    assert ledger.prune(now.timestamp() * 1000) == 0
    # a week later everything has gone
    assert ledger.prune((now + week).timestamp() * 1000) == 2 and not view.items


@pytest.mark.kafka
async def test_follows_only_while_another_instance_may_write(topics: AntingSettings) -> None:
    """An instance holding every partition of both groups stops following the ledger;
    after a rebalance it reads what others wrote; holding only some, it follows again."""
    producer = make_producer(topics)
    await producer.start()
    alone, other = Ledger(topics, producer), Ledger(topics, producer)
    await alone.start()
    await other.start()
    try:
        assert alone.view.following  # from the start, as before any assignment
        await alone.assigned("events", 6, 6)
        assert alone.view.following  # the retries group is not known yet
        await alone.assigned("retries", 6, 6)
        assert not alone.view.following

        await (await other.mark("msg_a", "delivered", "sub_1", 1))
        await asyncio.sleep(1.5)
        assert alone.state("msg_a") is None  # not followed ...
        await alone.assigned("events", 6, 6)  # ... until the next rebalance
        assert alone.is_final("msg_a") and not alone.view.following

        await alone.assigned("events", 3, 6)  # another instance took half the partitions
        assert alone.view.following
        await (await other.mark("msg_b", "dead", "sub_1", 5))
        await wait_until(lambda: alone.is_final("msg_b"), 20, "msg_b followed")
    finally:
        await alone.stop()
        await other.stop()
        await other.batches.flush()
        await producer.stop()
