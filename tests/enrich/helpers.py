"""Helpers for the enrich tests against the real broker: events, workers, readers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import TopicPartition

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, read_topic
from services.enrich import catalog
from shared.kafka import make_admin, make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS
from tests.enrich.seed import SEED_NAMES


def event(i: int, names: list[str] | None = None, kind: str = "announcement") -> dict[str, Any]:
    """One input event with a unique id naming the given organizations."""
    orgs = [{"name": n, "role": "party"} for n in (names if names is not None else ["Anting Town Government"])]
    if kind == "announcement":
        return {"specversion": "1.0", "id": f"ev-{i:06d}", "source": "/test", "type": "conference.announcement",
                "data": {"headline": f"event {i}", "organizations": orgs}}
    return {"specversion": "1.0", "id": f"ev-{i:06d}", "source": "/test", "type": "agreement.signed",
            "data": {"title": f"agreement {i}", "organizations": orgs}}


async def publish(settings: AntingSettings, events: list[dict[str, Any]], rate: float | None = None) -> None:
    """Send events to their input topic keyed by id (spread over the partitions); ``rate``
    in events/s spreads them over time so that kills land mid-stream."""
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        t0 = time.monotonic()
        for n, ev in enumerate(events):
            topic = settings.topic(ANNOUNCEMENTS if ev.get("type") == "conference.announcement" else AGREEMENTS)
            await producer.send(topic, value=orjson.dumps(ev), key=str(ev.get("id", n)).encode())
            if rate and n % 50 == 0:
                ahead = t0 + n / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()


async def publish_raw(settings: AntingSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for v in values:
            await producer.send(topic, value=v, key=None)
        await producer.flush()
    finally:
        await producer.stop()


class Worker:
    """``anting serve enrich`` as a child process with its own HTTP port."""

    def __init__(self, settings: AntingSettings, tmp: Path, name: str, **env: str) -> None:
        self.port = free_port()
        self.proc = ServiceProcess(
            "enrich", settings, tmp / f"{name}.log",
            ANTING_ENRICH_PORT=str(self.port), ANTING_ENRICH_GROUP=group(settings), **env,
        )

    def start(self) -> Worker:
        self.proc.start()
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                try:
                    r = await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                assert self.proc.proc is not None and self.proc.proc.poll() is None, self.proc.log()[-3000:]
                await asyncio.sleep(0.2)
        raise AssertionError("enrich not ready:\n" + self.proc.log()[-3000:])

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
            return r.text

    def kill(self) -> None:
        self.proc.kill()

    def stop(self) -> None:
        self.proc.terminate()


def group(settings: AntingSettings) -> str:
    return f"enrich-{settings.topic_prefix.rstrip('.')}"


async def load_catalog(settings: AntingSettings) -> None:
    await catalog.write(settings, upserts=catalog.shipped())


async def enriched(settings: AntingSettings, expect: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """Every enriched event a read_committed reader sees (waits for ``expect``)."""
    records = await read_topic(settings, settings.topic(ENRICHED_EVENTS), expect=expect, timeout=timeout)
    return [orjson.loads(r.value) for r in records if r.value is not None]


def lost_and_duplicated(seen: list[dict[str, Any]], wanted: set[str]) -> tuple[set[str], dict[str, int]]:
    counts = Counter(e["id"] for e in seen)
    return wanted - set(counts), {k: n for k, n in counts.items() if n > 1}


async def group_lag(settings: AntingSettings) -> int:
    """Records the group has not committed yet, over every input partition."""
    admin = make_admin(settings)
    await admin.start()
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group(settings))
        tps = [TopicPartition(settings.topic(t), p)
               for t in (ANNOUNCEMENTS, AGREEMENTS) for p in range(t.partitions)]
        ends = await consumer.end_offsets(tps)
        total = 0
        for tp in tps:
            meta = committed.get(tp)
            total += ends[tp] - (meta.offset if meta is not None and meta.offset >= 0 else 0)
        return total
    finally:
        await consumer.stop()
        await admin.close()


ALL_SEED_NAMES = sorted(SEED_NAMES)
