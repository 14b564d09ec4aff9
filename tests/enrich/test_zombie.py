"""A zombie enrich worker (KIP-447): paused with SIGSTOP past its session timeout while a
transaction is open, its partitions taken over by another worker that goes on; on
SIGCONT its transaction must fail to commit, none of its records may ever be visible to
a read_committed reader, and it rejoins the group cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from devtools.testing import read_topic
from shared.kafka import make_admin, make_consumer
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS
from tests.enrich.helpers import (
    Worker,
    enriched,
    event,
    group,
    group_lag,
    load_catalog,
    lost_and_duplicated,
    publish,
)

pytestmark = pytest.mark.kafka

SESSION_MS = 6000  # the broker's group.min.session.timeout.ms


async def _all_records(settings: AntingSettings) -> int:
    """Every record on enriched-events, committed, aborted or still open (read_uncommitted)."""
    consumer = make_consumer(settings, settings.topic(ENRICHED_EVENTS), group_id=None,
                             isolation_level="read_uncommitted")
    await consumer.start()
    n = 0
    try:
        idle = time.monotonic()
        while time.monotonic() - idle < 1.0:
            batch = await consumer.getmany(timeout_ms=200)
            if batch:
                n += sum(len(rs) for rs in batch.values())
                idle = time.monotonic()
    finally:
        await consumer.stop()
    return n


async def _members(settings: AntingSettings) -> int:
    admin = make_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group(settings)])
        return len(described[0].to_object()["groups"][0]["members"])
    finally:
        await admin.close()


async def _wait(cond_name: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {cond_name}")


async def test_a_zombie_cannot_commit_and_rejoins(topics: AntingSettings, tmp_path: Path) -> None:
    await load_catalog(topics)
    first = [event(i) for i in range(300)]
    await publish(topics, first)
    # the zombie keeps its transaction open (it would commit after 20 s, or at 1e6 records)
    zombie = Worker(topics, tmp_path, "zombie",
                    ANTING_ENRICH_COMMIT_INTERVAL_MS="20000", ANTING_ENRICH_COMMIT_LINGER_MS="20000",
                    ANTING_ENRICH_COMMIT_MAX_RECORDS="1000000",
                    ANTING_ENRICH_TRANSACTION_TIMEOUT_MS="60000",
                    ANTING_ENRICH_SESSION_TIMEOUT_MS=str(SESSION_MS)).start()
    successor: Worker | None = None
    try:
        await zombie.wait_ready()

        async def zombie_wrote_all() -> bool:
            return await _all_records(topics) >= len(first)

        await _wait("the zombie's open transaction to hold every event", zombie_wrote_all, 60)
        assert not await read_topic(topics, topics.topic(ENRICHED_EVENTS), idle=0.5)
        assert zombie.proc.proc is not None
        os.kill(zombie.proc.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()

        successor = Worker(topics, tmp_path, "successor",
                           ANTING_ENRICH_SESSION_TIMEOUT_MS=str(SESSION_MS)).start()
        await successor.wait_ready()

        async def successor_committed_all() -> bool:
            return await group_lag(topics) == 0

        # the successor's transactions commit, but a read_committed reader cannot see
        # them yet: the zombie's open transaction holds the output partitions' last
        # stable offset until it ends (Kafka's read_committed)
        await _wait("the successor to commit every event", successor_committed_all, 50)
        # it waited for the session to end (the last heartbeat came up to 0.6 s before the stop)
        assert time.monotonic() - stopped > SESSION_MS / 1000 - 1
        assert time.monotonic() - stopped < 55  # the zombie's transaction has not timed out

        os.kill(zombie.proc.proc.pid, signal.SIGCONT)
        out = await enriched(topics, expect=len(first), timeout=60)
        lost, dup = lost_and_duplicated(out, {e["id"] for e in first})
        assert not lost and not dup, (lost, dup)

        def refused() -> bool:
            return "the group refused its offsets" in zombie.proc.log()

        async def refused_async() -> bool:
            return refused()

        await _wait("the zombie's commit to be refused", refused_async, 60)

        async def both_members() -> bool:
            return await _members(topics) == 2

        await _wait("the zombie to rejoin", both_members, 60)
        more = [event(1000 + i) for i in range(200)]
        await publish(topics, more)
        out = await enriched(topics, expect=len(first) + len(more), timeout=90)
        lost, dup = lost_and_duplicated(out, {e["id"] for e in first + more})
        assert not lost and not dup, (lost, dup)
        # the zombie's records are in the log, aborted: never read_committed
        assert await _all_records(topics) >= 2 * len(first) + len(more)
        log = zombie.proc.log()
        assert "enrich is stuck" not in log and "Traceback" not in log, log[-3000:]
    finally:
        if zombie.proc.proc is not None and zombie.proc.proc.poll() is None:
            os.kill(zombie.proc.proc.pid, signal.SIGCONT)
        zombie.stop()
        if successor is not None:
            successor.stop()
