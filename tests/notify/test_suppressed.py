"""Deliveries the ledger (or a deleted subscription) stops are never silent, against a
real broker, a real webhook receiver and a real SMTP server: re-published events count
as ``suppressed`` under each subscription's channel with one info line per event, and a
retry of a deleted email subscription is recorded under ``email``."""

from __future__ import annotations

import logging

import orjson
import pytest
from prometheus_client import REGISTRY

from devtools.localkafka import free_port
from devtools.testing import produce, read_topic
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import (
    ANTING_TOWN,
    Receiver,
    agreement,
    encode,
    notify_settings,
    running,
    smtp_server,
    wait_until,
)

pytestmark = pytest.mark.kafka


def suppressed(channel: str) -> float:
    return REGISTRY.get_sample_value(
        "anting_notify_deliveries_total", {"channel": channel, "outcome": "suppressed"}) or 0.0


def told(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "services.notify.delivery"
            and r.getMessage().startswith("not sent again")]


async def test_republished_events_are_counted_and_told_once_per_event(
        topics: AntingSettings, caplog: pytest.LogCaptureFixture) -> None:
    """The same events published again: nothing is sent, each delivery counts once as
    suppressed under its own channel, and each event gets one info line naming both."""
    caplog.set_level(logging.INFO, logger="services.notify.delivery")
    receiver = Receiver()
    await receiver.start()
    events = [agreement([ANTING_TOWN]) for _ in range(3)]
    try:
        with smtp_server() as (port, mailbox):
            settings = notify_settings(topics, smtp_host="127.0.0.1", smtp_port=port)
            async with running(settings) as notifier:
                hook, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                    "name": "hook", "channel": {"type": "webhook", "url": receiver.url("/h")}})))
                mail, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                    "name": "mail", "channel": {"type": "email", "to": ["ops@example.org"]}})))
                await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                              [e.key for e in events])
                await wait_until(lambda: len(receiver.received) == 3 and len(mailbox.messages) == 3,
                                 what="first delivery")
                before = {c: suppressed(c) for c in ("webhook", "email")}
                caplog.clear()
                await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                              [e.key for e in events])
                await wait_until(lambda: suppressed("webhook") - before["webhook"] == 3
                                 and suppressed("email") - before["email"] == 3, what="counted")
                assert len(receiver.received) == 3 and len(mailbox.messages) == 3
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=6, timeout=20)
    finally:
        await receiver.stop()
    lines = told(caplog)
    assert sorted(r.event_id for r in lines) == sorted(e.id for e in events)  # type: ignore[attr-defined]
    for r in lines:
        assert r.levelno == logging.INFO and r.count == 2  # type: ignore[attr-defined]
        assert f"{hook.id} (delivered)" in r.getMessage() and f"{mail.id} (delivered)" in r.getMessage()
    assert suppressed("webhook") - before["webhook"] == 3 and suppressed("email") - before["email"] == 3
    # the ledger stops them before anything is written: the log has the six deliveries only
    assert sorted(orjson.loads(r.value or b"")["outcome"] for r in notes) == ["delivered"] * 6


async def test_retry_of_a_deleted_email_subscription_names_email(
        topics: AntingSettings, caplog: pytest.LogCaptureFixture) -> None:
    """An email delivery waiting for its retry when its subscription is deleted: the
    suppressed line and the counter say email, and the event gets its info line."""
    caplog.set_level(logging.INFO, logger="services.notify.delivery")
    closed = free_port()  # nothing listens: the SMTP connection is refused, the delivery retried
    # one retry, 30 s on the schedule: 3 s here (helpers run the schedule 10 times faster)
    settings = notify_settings(topics, smtp_host="127.0.0.1", smtp_port=closed)
    event = agreement([ANTING_TOWN])
    async with running(settings) as notifier:
        sub, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
            "name": "mail", "channel": {"type": "email", "to": ["ops@example.org"]},
            "retry": {"delays_seconds": [30]}})))
        await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(event)], [event.key])
        await wait_until(lambda: notifier.ledger.health([sub.id])[sub.id].waiting == 1, what="retry scheduled")
        before = suppressed("email")
        assert await notifier.store.delete(sub.id)
        notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=2, timeout=20)
        assert suppressed("email") - before == 1
    first, second = (orjson.loads(r.value or b"") for r in notes)
    assert (first["outcome"], first["channel"], first["attempt"]) == ("retried", "email", 1)
    assert (second["outcome"], second["channel"], second["attempt"]) == ("suppressed", "email", 2)
    assert second["error"] == "subscription deleted" and second["idempotency_key"] == first["idempotency_key"]
    lines = told(caplog)
    assert len(lines) == 1 and f"{sub.id} (subscription deleted)" in lines[0].getMessage()
    assert lines[0].event_id == event.id  # type: ignore[attr-defined]
