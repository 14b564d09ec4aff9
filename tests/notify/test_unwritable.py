"""A record notify cannot write must not stall it: a failed delivery whose retry record is
larger than notify-retries takes is dead at once, with a dead letter saying why, and the
events after it are delivered (real broker, real receiver)."""

from __future__ import annotations

import orjson
import pytest

from devtools.testing import produce, produce_raw_header, read_topic
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


async def test_a_record_whose_header_name_is_not_utf8_is_dead_lettered_and_the_next_delivered(
    topics: AntingSettings,
) -> None:
    """An enriched-events record whose header name is not UTF-8 (as kcat writes one), then
    an ordinary event on the same partition: the odd one is in dead-letters saying why, the
    ordinary one is delivered within seconds, and notify keeps running."""
    receiver = Receiver()
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}})))
            odd, ordinary = agreement([ANTING_TOWN]), agreement([ANTING_TOWN])
            await produce_raw_header(topics, topics.topic(ENRICHED_EVENTS), encode(odd), key=b"same")
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(ordinary)], [b"same"])
            await wait_until(lambda: len(receiver.on("/hook")) >= 1, 20, what="the ordinary event delivered")
            assert [orjson.loads(r.body)["id"] for r in receiver.on("/hook")] == [ordinary.id]
            letters = [dl for _, dl in await read_dead_letters(topics, limit=10, idle_ms=500)]
            assert [orjson.loads(dl.value or b"{}")["id"] for dl in letters] == [odd.id]
            assert "header name is not UTF-8" in (letters[0].header("dlq.error.message") or "")
    finally:
        await receiver.stop()


async def test_a_redirect_with_a_huge_location_is_dead_once_and_blocks_nothing(topics: AntingSettings) -> None:
    """A receiver answering 302 with a 1.2 MB Location (over the client's head limit: a failed
    attempt, and its subscription retries none): the delivery is dead once (its
    notifications line and dead letter carry a short error), the next event on the
    same partition is delivered, and the events group commits to the end."""
    huge = "http://example.invalid/" + "x" * 1_200_000
    receiver = Receiver(script={"/bad": [(302, {"Location": huge}, 0.0)]})
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            for name, path in (("bad", "/bad"), ("good", "/good")):
                await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                    "name": name, "channel": {"type": "webhook", "url": receiver.url(path)},
                    "retry": {"delays_seconds": []}})))
            first, second = agreement([ANTING_TOWN]), agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(first), encode(second)],
                          [b"same", b"same"])
            await wait_until(lambda: len(receiver.on("/good")) >= 2, 30, what="both events to /good")
            lines = [orjson.loads(r.value) for r in await read_topic(
                topics, topics.topic(NOTIFICATIONS), expect=4, timeout=30)]
            bad = [line for line in lines if line["outcome"] == "dead"]
            assert len(bad) == 2 and all(len(line["error"]) < 1100 for line in bad)
            assert len(receiver.on("/bad")) == 2  # once per event, never re-posted
            assert sorted(line["outcome"] for line in lines) == ["dead", "dead", "delivered", "delivered"]
    finally:
        await receiver.stop()
