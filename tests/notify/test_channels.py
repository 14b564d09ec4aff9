"""Email (real aiosmtpd), apprise (its json:// plugin posting to a real local
receiver), the log channel, and digests, end to end through the pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from devtools.testing import produce, read_topic
from services.notify.notification import idempotency_key
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import (
    ACME,
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


def req(doc: dict[str, object]) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate_json(orjson.dumps(doc))


async def test_email_apprise_and_log_channels(topics: AntingSettings, tmp_path: Path) -> None:
    """One matching event reaches SMTP (Message-ID, text+HTML), apprise and a log file, each with provenance."""
    receiver = await Receiver().start()
    log_path = tmp_path / "out.jsonl"
    with smtp_server() as (port, mailbox):
        # json:// is not among the default apprise schemes; loopback is allowed by notify_settings
        settings = notify_settings(topics, smtp_host="127.0.0.1", smtp_port=port, smtp_from="anting@example.com",
                                   log_dir=str(tmp_path), apprise_schemes="json")
        async with running(settings) as notifier:
            only_anting = {"organizations": ["Anting Town"]}
            mail, _ = await notifier.store.create(req({"name": "m", "filter": only_anting,
                                                       "channel": {"type": "email", "to": ["ops@example.com"]}}))
            chat, _ = await notifier.store.create(req({"name": "c", "filter": only_anting, "channel": {
                "type": "apprise", "url": f"json://127.0.0.1:{receiver.port}/chat"}}))
            logged, _ = await notifier.store.create(req({"name": "l", "filter": only_anting,
                                                         "channel": {"type": "log", "path": log_path.name}}))
            hit = agreement([ANTING_TOWN], title="Smart mobility pact")
            miss = agreement([ACME])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(miss), encode(hit)], [miss.key, hit.key])
            await wait_until(lambda: bool(mailbox.messages and receiver.on("/chat") and log_path.exists()),
                             what="channels")
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=3, timeout=20)
    await receiver.stop()
    assert len(mailbox.messages) == 1
    msg = mailbox.messages[0]
    assert msg["Message-ID"] == f"<{idempotency_key(hit.source, hit.id, mail.id)}@anting>"
    assert msg["Subject"] == "Smart mobility pact" and msg["To"] == "ops@example.com"
    assert [p.get_content_type() for p in msg.get_payload()] == ["text/plain", "text/html"]
    assert "anting-town-government" in msg.get_payload()[0].get_payload(decode=True).decode()
    chat_body = orjson.loads(receiver.on("/chat")[0].body)
    assert chat_body["title"] == "Smart mobility pact" and "why:" in chat_body["message"]
    line = orjson.loads(log_path.read_bytes().splitlines()[0])
    assert line["idempotency_key"] == idempotency_key(hit.source, hit.id, logged.id) and line["event"]["id"] == hit.id
    assert line["reason"][0]["organization"] == "anting-town-government"
    outcomes = {(orjson.loads(r.value or b"")["channel"], orjson.loads(r.value or b"")["outcome"]) for r in notes}
    assert outcomes == {("email", "delivered"), ("apprise", "delivered"), ("log", "delivered")}
    assert chat.id


async def test_digest_sends_one_message_per_window(topics: AntingSettings) -> None:
    """20 signings within the window become one signed anting.digest webhook listing all 20."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    try:
        async with running(settings) as notifier:
            sub, _ = await notifier.store.create(req({
                "name": "digest", "filter": {"types": ["agreement.signed"]}, "digest": {"window_seconds": 3},
                "channel": {"type": "webhook", "url": receiver.url("/digest")}}))
            signings = [agreement([ANTING_TOWN, ACME], title=f"Agreement {i}") for i in range(20)]
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in signings],
                          [e.key for e in signings])
            await wait_until(lambda: bool(receiver.on("/digest")), timeout=30, what="digest")
            await asyncio.sleep(1.0)  # nothing else should follow
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=1, timeout=20)
            assert all(notifier.ledger.is_final(idempotency_key(e.source, e.id, sub.id)) for e in signings)
    finally:
        await receiver.stop()
    assert len(receiver.on("/digest")) == 1
    body = orjson.loads(receiver.on("/digest")[0].body)
    assert body["type"] == "anting.digest" and body["data"]["count"] == 20
    assert {e["id"] for e in body["data"]["events"]} == {e.id for e in signings}
    rec = orjson.loads(notes[0].value or b"")
    assert rec["digest"] is True and rec["outcome"] == "delivered" and len(rec["event_ids"]) == 20


async def test_open_digest_does_not_hold_up_other_deliveries(topics: AntingSettings) -> None:
    """Events waiting in an open digest window hold neither the pipeline nor its offsets: with a
    digest collecting every event for 20 s, a webhook subscription gets all 400 events (more
    than the records notify keeps in flight) well within the window; the digest then sends
    them in one message."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    try:
        async with running(settings) as notifier:
            await notifier.store.create(req({
                "name": "digest", "filter": {}, "digest": {"window_seconds": 20},
                "channel": {"type": "webhook", "url": receiver.url("/digest")}}))
            await notifier.store.create(req({
                "name": "each", "filter": {}, "channel": {"type": "webhook", "url": receiver.url("/each")}}))
            events = [agreement([ANTING_TOWN], title=f"Agreement {i}") for i in range(400)]
            assert len(events) > max(4 * settings.concurrency, 256)  # more than are kept in flight
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                          [e.key for e in events])
            await wait_until(lambda: len(receiver.on("/each")) >= len(events), timeout=15,
                             what="every event to the other subscription while the digest is open")
            assert not receiver.on("/digest")  # its window is still open
            await wait_until(lambda: bool(receiver.on("/digest")), timeout=40, what="the digest")
    finally:
        await receiver.stop()
    assert orjson.loads(receiver.on("/digest")[0].body)["data"]["count"] == len(events)
