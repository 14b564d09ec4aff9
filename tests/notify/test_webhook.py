"""Webhook subscriptions end to end: real broker, real local HTTP receiver, signatures
verified with the standardwebhooks library."""

from __future__ import annotations

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from devtools.testing import produce, read_topic
from services.notify.notification import idempotency_key
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import DEAD_LETTERS, ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import (
    ACME,
    ALLIANCE,
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


async def test_subscriber_receives_exactly_matching_events_signed(topics: AntingSettings) -> None:
    """Only events matching every filter field arrive, each verified by standardwebhooks, with provenance."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    try:
        async with running(settings) as notifier:
            sub, secret = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "anting agreements",
                "filter": {"types": ["agreement.signed"], "organizations": ["安亭镇人民政府"]},
                "channel": {"type": "webhook", "url": receiver.url("/hook")},
            })))
            assert secret and secret.startswith("whsec_")
            matching = [agreement([ANTING_TOWN, ACME]) for _ in range(3)]
            matching.append(agreement([None, ANTING_TOWN], names=["Some Co", "ANTING  town"]))
            others = [
                agreement([ACME]),                                   # other organization
                announcement([ANTING_TOWN]),                         # other type
                agreement([ALLIANCE, None], names=["SMIIA", "Anting Town Gov"]),  # unresolved name only
            ]
            events = matching[:2] + others + matching[2:]
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                          [e.key for e in events])
            await wait_until(lambda: len(receiver.received) >= len(matching), what="deliveries")
            records = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=len(matching), timeout=20)
    finally:
        await receiver.stop()

    verifier = Webhook(secret)
    got_ids = []
    for req in receiver.received:
        body = verifier.verify(req.body, req.headers)  # raises if the signature is wrong
        got_ids.append(body["id"])
        assert req.headers["webhook-id"] == idempotency_key(body["source"], body["id"], sub.id)
        assert body["specversion"] == "1.0" and body["subscription"] == sub.id
        assert "anting-town-government" in body["reason"]
    assert sorted(got_ids) == sorted(e.id for e in matching)
    assert len(receiver.received) == len(matching)  # nothing else, nothing twice
    delivered = [orjson.loads(r.value or b"") for r in records]
    assert {d["event_id"] for d in delivered} == {e.id for e in matching}
    assert all(d["outcome"] == "delivered" for d in delivered)
    reason = delivered[0]["reason"]
    assert {r["filter"] for r in reason} == {"types", "organizations"}
    org_reason = next(r for r in reason if r["filter"] == "organizations")
    assert org_reason["organization"] == "anting-town-government"
    assert org_reason["field"].startswith("data.organizations[")


async def test_poison_enriched_records_go_to_dead_letters(topics: AntingSettings) -> None:
    """Unreadable or misshapen records on enriched-events go to dead-letters; the good ones around them are delivered."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    good = [agreement([ACME]) for _ in range(2)]
    bad_shape = orjson.loads(encode(agreement([ACME])))
    bad_shape["data"]["organizations"] = [{"name": 42}]
    values = [encode(good[0]), b"{not json", orjson.dumps(bad_shape), encode(good[1])]
    try:
        async with running(settings) as notifier:
            await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "all", "filter": {}, "channel": {"type": "webhook", "url": receiver.url("/hook")},
            })))
            await produce(topics, topics.topic(ENRICHED_EVENTS), values, [b"k"] * len(values))
            await wait_until(lambda: len(receiver.received) >= len(good), what="deliveries")
            letters = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=2, timeout=20)
    finally:
        await receiver.stop()
    assert sorted(orjson.loads(r.body)["id"] for r in receiver.received) == sorted(e.id for e in good)
    assert sorted(r.value or b"" for r in letters) == sorted([b"{not json", orjson.dumps(bad_shape)])
    headers = [dict(r.headers) for r in letters]
    assert all(h["dlq.stage"] == b"notify" for h in headers)
    assert any(b"data.organizations.0.name" in h["dlq.error.message"] for h in headers)  # the contract's path
