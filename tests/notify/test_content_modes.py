"""notify reads an enriched event in either content mode of the CloudEvents Kafka binding
(a record written straight to enriched-events by an SDK in binary mode: ce_* headers, the
value is the data) and delivers it as a structured CloudEvent; a record it cannot read is
dead-lettered and the stream goes on (real broker, real receiver)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import to_binary
from standardwebhooks.webhooks import Webhook

from shared.deadletters import read_dead_letters
from shared.events import dump_event
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, Receiver, agreement, notify_settings, running, wait_until

pytestmark = pytest.mark.kafka


async def test_binary_and_structured_records_are_both_delivered(topics: AntingSettings) -> None:
    """One enriched event written by the CloudEvents SDK in binary mode, one in structured
    mode, one binary record whose data is not JSON: the first two arrive as structured
    CloudEvents with valid signatures, the third is dead-lettered."""
    receiver = await Receiver().start()
    settings = notify_settings(topics)
    enriched: dict[str, Any] = orjson.loads(dump_event(agreement([ANTING_TOWN], event_id="bin-1")))
    attributes = {k: v for k, v in enriched.items() if k != "data"}
    binary = to_binary(CloudEvent({**attributes, "datacontenttype": "application/json"}, enriched["data"]))
    not_json = to_binary(CloudEvent({**attributes, "id": "bin-2", "datacontenttype": "text/plain"}, "hello"))
    structured = orjson.dumps({**enriched, "id": "struct-1"})
    try:
        async with running(settings) as notifier:
            sub, secret = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                "name": "town", "filter": {"organizations": ["Anting Town"]},
                "channel": {"type": "webhook", "url": receiver.url("/hook")}})))
            producer = make_producer(topics)
            await producer.start()
            try:
                topic = topics.topic(ENRICHED_EVENTS)
                for message in (binary, not_json):
                    await producer.send_and_wait(topic, value=message.value, key=b"anting",
                                                 headers=list(message.headers.items()))
                await producer.send_and_wait(topic, value=structured, key=b"anting")
            finally:
                await producer.stop()
            await wait_until(lambda: len(receiver.on("/hook")) >= 2, what="both readable events")
            bodies = [orjson.loads(r.body) for r in receiver.on("/hook")]
            assert sorted(b["id"] for b in bodies) == ["bin-1", "struct-1"]
            for r in receiver.on("/hook"):
                Webhook(secret).verify(r.body, r.headers)
                doc = orjson.loads(r.body)
                assert doc["specversion"] == "1.0" and doc["type"] == "agreement.signed"
                assert doc["data"]["enrichment"]["resolved"] == ["anting-town-government"]
                assert doc["subscription"] == sub.id
            letters = [dl for _, dl in await read_dead_letters(topics, limit=10, idle_ms=500)]
            assert [dl.header("dlq.stage") for dl in letters] == ["notify"]
            assert "text/plain" in (letters[0].header("dlq.error.message") or "")
            assert letters[0].value == not_json.value  # the original record, as it was
    finally:
        await receiver.stop()
