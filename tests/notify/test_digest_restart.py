"""An open digest window is durable state, not held offsets: with a 600 s window (run 40
times faster) collecting agreements, notify commits past the collected events within
seconds, is SIGKILLed while the window is open, and after the restart sends the digest
once, on time, with every event once — and repeats no other delivery."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, produce
from shared.kafka import make_admin, make_consumer, wait_for_partitions
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, Receiver, agreement, announcement, encode, wait_until
from .test_kill import _subscribe

pytestmark = [pytest.mark.kafka]

WINDOW_SECONDS = 600
TIME_SCALE = 40  # the window closes 15 s after its first event


async def _lag(settings: AntingSettings, group: str) -> int:
    """Records of enriched-events the group has not committed past."""
    topic = settings.topic(ENRICHED_EVENTS)
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    admin = make_admin(settings)
    await admin.start()
    try:
        tps = await wait_for_partitions(consumer, topic)
        assert tps, f"no partitions of {topic}"
        ends = await consumer.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return sum(ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
                   for tp in tps)
    finally:
        await admin.close()
        await consumer.stop()


async def test_digest_window_survives_a_sigkill_and_holds_no_offsets(topics: AntingSettings, tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    await _subscribe(topics, [
        {"name": "digest", "filter": {"types": ["agreement.signed"]}, "digest": {"window_seconds": WINDOW_SECONDS},
         "channel": {"type": "webhook", "url": receiver.url("/digest")}},
        {"name": "every event", "channel": {"type": "webhook", "url": receiver.url("/hook")}},
    ])
    group = f"digest-restart-{topics.topic_prefix}"

    def notify(name: str) -> ServiceProcess:
        return ServiceProcess("notify", topics, tmp_path / f"{name}.log",
                              ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_NOTIFY_PORT=str(free_port()),
                              ANTING_NOTIFY_GROUP=group, ANTING_NOTIFY_RETRY_TIME_SCALE=str(TIME_SCALE))

    signings = [agreement([ANTING_TOWN], event_id=f"signing-{i:02d}") for i in range(30)]
    others = [announcement([ANTING_TOWN], event_id=f"forum-{i:02d}") for i in range(10)]
    events = signings + others
    first = notify("first")
    second = notify("second")
    try:
        first.start()
        await wait_until(lambda: "notify ready" in first.log(), 60, "notify ready")
        t0 = time.monotonic()
        await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])
        await wait_until(lambda: len(receiver.on("/hook")) >= len(events), 30, "every event to /hook")
        # the collected events' offsets are committed at once, not when the window closes
        lag = await _lag(topics, group)
        for _ in range(20):
            if lag == 0:
                break
            await asyncio.sleep(0.5)
            lag = await _lag(topics, group)
        assert lag == 0, f"enriched-events offsets held back by {lag} records with the window open"
        assert not receiver.on("/digest"), "the digest went out before its window closed"
        first.kill()  # SIGKILL, window open
        second.start()
        await wait_until(lambda: bool(receiver.on("/digest")), 60, "the digest after the restart")
        opened_for = time.monotonic() - t0
        await asyncio.sleep(3)  # anything sent twice would arrive now
    finally:
        first.kill()
        second.kill()
        await receiver.stop()

    digests = receiver.on("/digest")
    assert len(digests) == 1, f"{len(digests)} digests sent"
    body = orjson.loads(digests[0].body)
    ids = [e["id"] for e in body["data"]["events"]]
    assert sorted(ids) == sorted(e.id for e in signings) and len(ids) == len(set(ids))
    # on time: the window is WINDOW_SECONDS / TIME_SCALE long, counted from its first event
    assert opened_for >= WINDOW_SECONDS / TIME_SCALE - 2
    per_key = Counter(r.headers["webhook-id"] for r in receiver.on("/hook"))
    repeated = [orjson.loads(r.body)["id"] for r in receiver.on("/hook") if per_key[r.headers["webhook-id"]] > 1]
    assert len(per_key) == len(events) and not repeated, f"deliveries repeated: {sorted(repeated)}"
