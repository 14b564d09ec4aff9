"""notify handles the events of one key in order up to their first attempts' queueing,
not their answers: a slow endpoint delays only itself, never the later events of its
subjects at other subscriptions (the runner's own per-key order is tested in
tests/shared/test_stage_concurrent.py)."""

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

SLOW_SECONDS = 3.0


def _request(name: str, url: str, event_type: str) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": name, "filter": {"types": [event_type]}, "channel": {"type": "webhook", "url": url}}))


async def test_a_slow_endpoint_does_not_hold_the_later_events_of_its_subject(topics: AntingSettings) -> None:
    """Two agreements of one subject (one key) to a slow endpoint (its first answer after
    3 s) and to a fast one, and an announcement of another key: the fast endpoint has
    both agreements, and the announcement is delivered, while the slow endpoint is still
    answering the first; the slow endpoint gets both."""
    receiver = Receiver(script={"/slow": [(200, {}, SLOW_SECONDS), (200, {}, 0.0)]})
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            await notifier.store.create(_request("slow", receiver.url("/slow"), "agreement.signed"))
            await notifier.store.create(_request("fast", receiver.url("/fast"), "agreement.signed"))
            await notifier.store.create(_request("other", receiver.url("/other"), "conference.announcement"))
            first, second = agreement([ANTING_TOWN]), agreement([ANTING_TOWN])
            assert first.key == second.key  # one subject
            other = announcement([ANTING_TOWN])
            assert other.key != first.key
            events = [first, second, other]
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                          [e.key for e in events])
            await wait_until(lambda: len(receiver.on("/slow")) == 2 and len(receiver.on("/fast")) == 2
                             and len(receiver.on("/other")) == 1, timeout=60, what="the five deliveries")
    finally:
        await receiver.stop()
    slow = receiver.on("/slow")
    first_slow = min(r.at for r in slow)
    assert {orjson.loads(r.body)["id"] for r in slow} == {first.id, second.id}
    assert {orjson.loads(r.body)["id"] for r in receiver.on("/fast")} == {first.id, second.id}
    # the fast endpoint and the other key were served while the slow one was answering
    assert max(r.at for r in receiver.on("/fast")) < first_slow + SLOW_SECONDS - 0.5
    assert receiver.on("/other")[0].at < first_slow + SLOW_SECONDS - 0.5
