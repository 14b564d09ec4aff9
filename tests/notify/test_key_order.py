"""notify handles the events of one key in order: an event's deliveries start once every
first attempt of the event of its key before it has answered; other keys go on."""

from __future__ import annotations

import orjson
import pytest

from devtools.testing import produce
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

SLOW_SECONDS = 2.0


def _request(name: str, url: str, event_type: str) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": name, "filter": {"types": [event_type]}, "channel": {"type": "webhook", "url": url}}))


async def test_an_event_waits_for_the_slow_one_of_its_key_and_other_keys_go_on(topics: AntingSettings) -> None:
    """Two agreements of one subject (one key), the first answered after 2 s, and an
    announcement of another key: the announcement is delivered while the first agreement
    is still being answered; the second agreement only once the first has its answer."""
    receiver = Receiver(script={"/a": [(200, {}, SLOW_SECONDS), (200, {}, 0.0)]})
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            await notifier.store.create(_request("a", receiver.url("/a"), "agreement.signed"))
            await notifier.store.create(_request("b", receiver.url("/b"), "conference.announcement"))
            first, second = agreement([ANTING_TOWN]), agreement([ANTING_TOWN])
            assert first.key == second.key  # one subject
            other = announcement([ANTING_TOWN])
            events = [first, second, other]
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                          [e.key for e in events])
            await wait_until(lambda: len(receiver.on("/a")) == 2 and len(receiver.on("/b")) == 1,
                             timeout=60, what="the three deliveries")
    finally:
        await receiver.stop()
    a1, a2 = receiver.on("/a")
    (b,) = receiver.on("/b")
    assert [orjson.loads(r.body)["id"] for r in (a1, a2)] == [first.id, second.id]
    assert a2.at >= a1.at + SLOW_SECONDS - 0.05  # not before the first was answered
    assert b.at < a1.at + SLOW_SECONDS  # another key went on meanwhile
