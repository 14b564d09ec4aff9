"""Scaling notify out and in while it delivers: a second instance joins mid-stream,
then the first leaves (SIGTERM). A graceful hand-over resends nothing: the instance
giving partitions up finishes and commits their in-flight deliveries first, so
every event arrives exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, produce
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, Receiver, agreement, encode, wait_until
from .test_kill import _subscribe

pytestmark = [pytest.mark.kafka]
EVENTS = 1200


async def test_instances_joining_and_leaving_resend_nothing(topics: AntingSettings, tmp_path: Path) -> None:
    receiver = Receiver(script={"/hook": [(200, {}, 0.03)]})  # 30 ms per answer: always work in flight
    await receiver.start()
    await _subscribe(topics, [{"name": "hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}}])
    events = [agreement([ANTING_TOWN], event_id=f"scale-{i:05d}") for i in range(EVENTS)]
    await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])

    def instance(name: str) -> ServiceProcess:
        return ServiceProcess(
            "notify", topics, tmp_path / f"{name}.log",
            ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_NOTIFY_PORT=str(free_port()),
            ANTING_NOTIFY_CONCURRENCY="4", ANTING_NOTIFY_GROUP=f"scale-{topics.topic_prefix}",
        )

    first, second = instance("first"), instance("second")
    try:
        first.start()
        await wait_until(lambda: len(receiver.received) >= EVENTS // 5, 90, "the first instance delivering")
        second.start()  # joins the group: the first gives up some partitions mid-delivery
        await wait_until(lambda: len(receiver.received) >= EVENTS // 2, 90, "both delivering")
        # leaves: the second takes every partition (in a thread: the receiver answers on this loop)
        assert await asyncio.to_thread(first.terminate, 30) == 0
        await wait_until(lambda: len({r.headers["webhook-id"] for r in receiver.received}) >= EVENTS,
                         120, "every event delivered")
        assert await asyncio.to_thread(second.terminate, 30) == 0
    finally:
        first.kill()
        second.kill()
        await receiver.stop()
    per_event = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert len(per_event) == EVENTS
    resent = {k: n for k, n in per_event.items() if n > 1}
    assert not resent, f"{len(resent)} events delivered more than once: {list(resent.items())[:5]}"
