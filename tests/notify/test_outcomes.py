"""How each receiver answer is handled (DESIGN.md "Delivery guarantees"), against a real
broker and a real local HTTP receiver: outcomes on `notifications`, in `dead-letters`
and in `anting_notify_deliveries_total`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from devtools.testing import produce, read_topic
from services.notify.store import SubscriptionStore
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import DEAD_LETTERS, ENRICHED_EVENTS, NOTIFICATIONS, SUBSCRIPTIONS

from .helpers import ANTING_TOWN, Receiver, agreement, encode, notify_settings, running, wait_until

pytestmark = pytest.mark.kafka


def metric(outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "anting_notify_deliveries_total", {"channel": "webhook", "outcome": outcome}) or 0.0


async def test_receiver_answers_handled_as_designed(topics: AntingSettings) -> None:
    """500→200 retried then delivered; 429 waits Retry-After; timeout and 301 end dead; 410 disables."""
    receiver = Receiver(script={
        "/flaky": [(500, {}, 0.0), (200, {}, 0.0)],
        "/busy": [(429, {"Retry-After": "2"}, 0.0), (200, {}, 0.0)],
        "/slow": [(200, {}, 3.0)],
        "/moved": [(301, {"Location": "/elsewhere"}, 0.0)],
        "/gone": [(410, {}, 0.0)],
        "/ok": [(200, {}, 0.0)],
    })
    await receiver.start()
    settings = notify_settings(topics, timeout_seconds=0.5, retry_schedule="1,2")  # 3 attempts
    before = {o: metric(o) for o in ("delivered", "retried", "failed", "dead")}
    subs = {}
    try:
        async with running(settings) as notifier:
            for path in ("/flaky", "/busy", "/slow", "/moved", "/gone", "/ok"):
                sub, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                    "name": path, "channel": {"type": "webhook", "url": receiver.url(path)}})))
                subs[path] = sub.id
            first = agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(first)], [first.key])
            await wait_until(lambda: len(receiver.on("/flaky")) == 2 and len(receiver.on("/busy")) == 2
                             and len(receiver.on("/slow")) == 3, timeout=40, what="retries")
            await wait_until(lambda: notifier.store.get(subs["/gone"]).disabled, what="410 disables")  # type: ignore[union-attr]
            # a later event: the disabled subscription gets nothing, the others do
            second = agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(second)], [second.key])
            await wait_until(lambda: len(receiver.on("/ok")) == 2, what="second event")
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=15, timeout=30)
            letters = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=3, timeout=20)
    finally:
        await receiver.stop()

    by_sub: dict[str, list[dict[str, Any]]] = {}
    for r in notes:
        doc = orjson.loads(r.value or b"")
        if doc["event_id"] == first.id:
            by_sub.setdefault(doc["subscription_id"], []).append(doc)
    for docs in by_sub.values():
        docs.sort(key=lambda d: d["attempt"])

    def outcomes(path: str) -> list[tuple[str, int | None]]:
        return [(d["outcome"], d["status_code"]) for d in by_sub[subs[path]]]

    # 500 then 200: one retry, then delivered, the same webhook-id both times
    assert outcomes("/flaky") == [("retried", 500), ("delivered", 200)]
    flaky = [r for r in receiver.on("/flaky") if orjson.loads(r.body)["id"] == first.id]
    assert len(flaky) == 2 and len({r.headers["webhook-id"] for r in flaky}) == 1
    # 429 with Retry-After: 2 → the next attempt was scheduled, and made, no sooner than 2 s later
    assert outcomes("/busy") == [("retried", 429), ("delivered", 200)]
    retried = by_sub[subs["/busy"]][0]
    gap = datetime.fromisoformat(retried["next_attempt_at"]) - datetime.fromisoformat(retried["at"])
    assert gap.total_seconds() >= 1.9
    busy = receiver.on("/busy")
    assert busy[1].at - busy[0].at >= 1.9
    # timeout: retried until the last attempt, then dead
    assert [o for o, _ in outcomes("/slow")] == ["retried", "retried", "dead"]
    assert "timeout" in by_sub[subs["/slow"]][-1]["error"]
    # 301: never followed, dead at once
    assert outcomes("/moved") == [("dead", 301)]
    assert receiver.on("/elsewhere") == []
    assert len([r for r in receiver.on("/moved") if orjson.loads(r.body)["id"] == first.id]) == 1
    # 410: dead and the subscription disabled (on the topic too), no later deliveries
    assert outcomes("/gone") == [("dead", 410)]
    assert len(receiver.on("/gone")) == 1
    store = SubscriptionStore(topics, producer=None)
    await store.start()
    try:
        gone = store.get(subs["/gone"])
        assert gone is not None and gone.disabled and "410" in (gone.disabled_reason or "")
    finally:
        await store.stop()
    assert topics.topic(SUBSCRIPTIONS)  # the store above read it back from Kafka
    # every dead delivery is in dead-letters with its reason
    dead_subs = {dict(r.headers).get("dlq.subscription", b"").decode() for r in letters}
    assert {subs["/slow"], subs["/moved"], subs["/gone"]} <= dead_subs
    assert all(dict(r.headers)["dlq.stage"] == b"notify" for r in letters)
    # and the metrics saw it all
    after = {o: metric(o) for o in before}
    assert after["delivered"] - before["delivered"] >= 3 + 3  # flaky, busy, ok; then those three again
    assert after["retried"] - before["retried"] >= 4  # flaky, busy, slow ×2
    assert after["dead"] - before["dead"] >= 3  # slow, moved, gone
    assert after["failed"] - before["failed"] >= 7


async def test_dead_delivery_replayed_from_dead_letters(topics: AntingSettings) -> None:
    """A dead delivery sent back by `anting dlq replay` is attempted again with the same webhook-id."""
    from shared.deadletters import replay_dead_letters

    receiver = Receiver(script={"/later": [(301, {"Location": "/x"}, 0.0), (200, {}, 0.0)]})
    await receiver.start()
    try:
        async with running(notify_settings(topics)) as notifier:
            sub, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "later", "channel": {"type": "webhook", "url": receiver.url("/later")}})))
            event = agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(event)], [event.key])
            await wait_until(lambda: notifier.ledger.is_final(receiver.received[0].headers["webhook-id"])
                             if receiver.received else False, what="dead")
            # replay sends what the topic holds when it is called: wait for the letter's write
            await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=20)
            sent, _ = await replay_dead_letters(topics, stage="notify")
            assert sent == 1
            await wait_until(lambda: len(receiver.on("/later")) == 2, what="replayed delivery")
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=2, timeout=20)
    finally:
        await receiver.stop()
    assert [orjson.loads(r.value or b"")["outcome"] for r in notes] == ["dead", "delivered"]
    assert len({r.headers["webhook-id"] for r in receiver.on("/later")}) == 1
    assert sub.id == orjson.loads(notes[1].value or b"")["subscription_id"]
