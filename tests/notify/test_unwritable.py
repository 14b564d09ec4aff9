"""A record notify cannot write must not stall it: a failed delivery whose retry record is
larger than notify-retries takes is dead at once, with a dead letter saying why, and the
events after it are delivered (real broker, real receiver)."""

from __future__ import annotations

import orjson
import pytest

from devtools.testing import produce, read_topic
from shared.deadletters import read_dead_letters
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import ANTING_TOWN, Receiver, agreement, encode, notify_settings, running, wait_until

pytestmark = pytest.mark.kafka


async def test_a_retry_record_too_large_is_dead_not_stuck(topics: AntingSettings) -> None:
    """With retry records capped at 1 KB, a 500 answer makes the delivery dead at once (the
    reason names the size), and the next event on the same partition is delivered."""
    receiver = Receiver(script={"/hook": [(500, {}, 0.0), (200, {}, 0.0)]})
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            notifier.deliverer.max_retry_bytes = 1000
            sub, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}})))
            first, second = agreement([ANTING_TOWN]), agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(first), encode(second)],
                          [b"same", b"same"])
            await wait_until(lambda: len(receiver.on("/hook")) >= 2, what="both events tried")
            lines = [orjson.loads(r.value) for r in await read_topic(
                topics, topics.topic(NOTIFICATIONS), expect=2, timeout=30)]
            by_event = {line["event_id"]: line for line in lines}
            assert by_event[first.id]["outcome"] == "dead"
            assert "no retry: the retry record is" in by_event[first.id]["error"]
            assert by_event[second.id]["outcome"] == "delivered"
            letters = [dl for _, dl in await read_dead_letters(topics, limit=10, idle_ms=500)]
            assert [dl.header("dlq.stage") for dl in letters] == ["notify"]
            assert "takes at most 1000" in (letters[0].header("dlq.error.message") or "")
            assert sub.id in (letters[0].header("dlq.subscription") or "")
    finally:
        await receiver.stop()
