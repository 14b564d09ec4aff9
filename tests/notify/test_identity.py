"""An event is its CloudEvents (source, id) pair, everywhere notify keys by "the event":
two publishers that both send the id ``same-1`` about a watched organization are two
deliveries with two webhook-ids, two ledger entries, and two events in a digest —
against a real broker and a real receiver."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from devtools.testing import produce, read_topic
from services.notify.notification import SOURCE, idempotency_key
from shared.events import dump_event
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import ANTING_TOWN, Receiver, agreement, notify_settings, running, wait_until

pytestmark = pytest.mark.kafka


def _from(source: str, event_id: str) -> dict[str, Any]:
    """An enriched agreement naming Anting Town, as publisher ``source`` sent it."""
    doc: dict[str, Any] = orjson.loads(dump_event(agreement([ANTING_TOWN], event_id=event_id)))
    doc["source"] = source
    return doc


async def test_one_id_from_two_publishers_is_two_deliveries(topics: AntingSettings) -> None:
    """Both publishers' "same-1" reach a webhook subscription, each with its own webhook-id, and
    a digest subscription in one digest; the ledger keeps them apart, so either sent again is not
    delivered again."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    a, b = _from("/press/a", "same-1"), _from("/district/b", "same-1")
    again, tail = _from("/press/a", "same-1"), _from("/press/a", "tail")
    topic = topics.topic(ENRICHED_EVENTS)
    try:
        async with running(settings) as notifier:
            watch = {"organizations": ["Anting Town"]}
            each, secret = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "each", "filter": watch, "channel": {"type": "webhook", "url": receiver.url("/each")}})))
            digest, digest_secret = await notifier.store.create(SubscriptionRequest.model_validate_json(
                orjson.dumps({"name": "digest", "filter": watch, "digest": {"window_seconds": 2},
                              "channel": {"type": "webhook", "url": receiver.url("/digest")}})))
            # sent together, on one partition (one subject): A's then B's
            await produce(topics, topic, [orjson.dumps(a), orjson.dumps(b)], [b"anting", b"anting"])
            await wait_until(lambda: len(receiver.on("/each")) >= 2 and len(receiver.on("/digest")) >= 1,
                             what="both events, and the digest of both")
            # the ledger has each pair once its outcome is recorded (just after the request)
            keys = [idempotency_key(source, "same-1", sub_id)
                    for sub_id in (each.id, digest.id) for source in ("/press/a", "/district/b")]
            await wait_until(lambda: all(notifier.ledger.is_final(k) for k in keys), 10, "the ledger")
            # A's event again (the same pair: a duplicate), then a new one after it
            await produce(topics, topic, [orjson.dumps(again), orjson.dumps(tail)], [b"anting", b"anting"])
            await wait_until(lambda: len(receiver.on("/each")) >= 3 and len(receiver.on("/digest")) >= 2,
                             what="the event after the duplicate")
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=5, timeout=20)
    finally:
        await receiver.stop()

    both = {("/press/a", "same-1"), ("/district/b", "same-1")}
    hooks = receiver.on("/each")
    bodies = [Webhook(secret or "").verify(r.body, r.headers) for r in hooks]
    # the two arrive in either order (deliveries run side by side); the duplicate never
    assert len(hooks) == 3 and {(d["source"], d["id"]) for d in bodies} == both | {("/press/a", "tail")}
    assert [r.headers["webhook-id"] for r in hooks] == [idempotency_key(d["source"], d["id"], each.id)
                                                         for d in bodies]
    assert len({r.headers["webhook-id"] for r in hooks}) == 3

    digests = [Webhook(digest_secret or "").verify(r.body, r.headers) for r in receiver.on("/digest")]
    assert len(digests) == 2
    assert sorted((e["source"], e["id"]) for e in digests[0]["data"]["events"]) == sorted(both)
    assert [(e["source"], e["id"]) for e in digests[1]["data"]["events"]] == [("/press/a", "tail")]

    lines = [orjson.loads(r.value or b"") for r in notes]
    assert len(lines) == 5 and all(line["outcome"] == "delivered" for line in lines)
    singles = {(line["event_source"], line["event_id"]) for line in lines if not line["digest"]}
    assert singles == both | {("/press/a", "tail")}
    first = next(line for line in lines if line["digest"] and len(line["event_ids"]) == 2)
    assert first["event_source"] == SOURCE and first["event_id"] == receiver.on("/digest")[0].headers["webhook-id"]
    assert set(zip(first["event_sources"], first["event_ids"], strict=True)) == both
