"""Fair delivery on a real broker and real sockets: one tenant's many slow webhooks do
not hold up another tenant's fast one (each subscription has a few slots in flight, a
tenant at most three quarters of the pool, and freed slots go to the tenants in turn)."""

from __future__ import annotations

import asyncio
import statistics
from datetime import datetime

import orjson
import pytest

from devtools.testing import produce
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS

from .helpers import (
    ANTING_TOWN,
    Receiver,
    agreement,
    announcement,
    encode,
    notify_settings,
    running,
    wait_until,
)

pytestmark = pytest.mark.kafka

SLOW_SUBSCRIPTIONS = 30
SLOW_SECONDS = 3.0


def _request(name: str, url: str, event_type: str) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": name, "filter": {"types": [event_type]}, "channel": {"type": "webhook", "url": url}}))


async def test_a_tenants_slow_webhooks_do_not_delay_another_tenants_fast_one(topics: AntingSettings) -> None:
    """Tenant A's 30 webhooks answer after 3 s and have 240 deliveries queued; tenant B's
    webhook, answering at once, still gets each of its events within a second (median)."""
    slow = Receiver(script={f"/a/{i}": [(200, {}, SLOW_SECONDS)] for i in range(SLOW_SUBSCRIPTIONS)})
    fast = Receiver()
    await slow.start()
    await fast.start()
    settings = notify_settings(topics)  # the default pool (64) and caps
    producer = make_producer(topics)
    try:
        async with running(settings) as notifier:
            for i in range(SLOW_SUBSCRIPTIONS):
                await notifier.store.create(
                    _request(f"a{i}", slow.url(f"/a/{i}"), "agreement.signed"), tenant="tenant-a")
            await notifier.store.create(
                _request("b", fast.url("/b"), "conference.announcement"), tenant="tenant-b")
            # tenant A's backlog: 8 events, each to all 30 of its webhooks
            a_events = [agreement([ANTING_TOWN]) for _ in range(8)]
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in a_events],
                          [e.key for e in a_events])
            await wait_until(lambda: len(slow.received) >= 60, timeout=20, what="tenant A busy")
            # tenant B's events, one every 0.3 s, while A's deliveries fill the pool
            await producer.start()
            for _ in range(12):
                event = announcement([ANTING_TOWN])
                await producer.send_and_wait(topics.topic(ENRICHED_EVENTS), value=encode(event), key=event.key)
                await asyncio.sleep(0.3)
            await wait_until(lambda: len(fast.on("/b")) == 12, timeout=60, what="tenant B's deliveries")
            a_busy = len(slow.received) < SLOW_SUBSCRIPTIONS * len(a_events)
    finally:
        await producer.stop()
        await slow.stop()
        await fast.stop()

    delays = [r.at - datetime.fromisoformat(orjson.loads(r.body)["time"]).timestamp() for r in fast.on("/b")]
    assert statistics.median(delays) < 1.0, sorted(delays)
    assert max(delays) < 2.0, sorted(delays)
    assert a_busy, "tenant A's deliveries must still be under way while B's are measured"
