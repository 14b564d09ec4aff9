"""10,000 subscriptions through the real broker: notify delivers each event to exactly the
subscriptions whose filters match it (the naive matcher decides what "exactly" is), no
more and no fewer, with the subscriptions read from the compacted topic at start."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, produce
from services.notify.matching import decode, match
from services.notify.notification import idempotency_key
from services.notify.store import encode_subscription
from shared.settings import AntingSettings
from shared.subscriptions import Filter, Subscription, WebhookChannel
from shared.topics import ENRICHED_EVENTS, SUBSCRIPTIONS

from .helpers import (
    ACME,
    ALLIANCE,
    ANTING_TOWN,
    Receiver,
    agreement,
    announcement,
    encode,
    wait_until,
)

pytestmark = [pytest.mark.kafka]

SUBSCRIPTIONS_TOTAL = 10_000


def _filters(rng: random.Random) -> list[Filter]:
    """Filters on every indexed field, most naming values no event carries, some naming
    the test's organizations, cities, sectors, kinds and types (in other spellings)."""
    known = {
        "organizations": ["anting-town-government", "ＡＮＴＩＮＧ  town", "SMIIA", "acme vr ltd"],
        "cities": ["shanghai", "Hangzhou"],
        "sectors": ["Metaverse", "virtual reality"],
        "kinds": ["forum", "speech"],
        "types": ["agreement.signed", "conference.announcement"],
    }
    out: list[Filter] = []
    for i in range(SUBSCRIPTIONS_TOTAL):
        field = ("organizations", "cities", "sectors", "kinds", "types")[i % 5]
        if i % 250 == 0:  # one in 250 names something the events carry
            values = [rng.choice(known[field])]
        elif field == "kinds":
            values = ["whitepaper_released"]  # no event of the test is one
        elif field == "types":  # two values only: a type with a place nobody is in
            values = ["conference.announcement"]
        else:
            values = [f"nobody-{field}-{i}"]
        extra: dict[str, list[str]] = {"cities": [f"nowhere-{i}"]} if field == "types" and i % 250 else {}
        if i % 500 == 250:  # a second field, to be checked after the index found it
            extra = {"cities": ["Shanghai"]} if field != "cities" else {"sectors": ["metaverse"]}
        out.append(Filter.model_validate_json(orjson.dumps({field: values, **extra})))
    return out


async def test_ten_thousand_subscriptions_deliver_exactly_the_matching_ones(
        topics: AntingSettings, tmp_path: Path) -> None:
    rng = random.Random(20261201)
    receiver = Receiver()
    await receiver.start()
    now = datetime.now(UTC)
    subs = [
        Subscription(id=f"sub_many_{i:05d}", name=f"s{i}", filter=flt, created_at=now,
                     channel=WebhookChannel(type="webhook", url=receiver.url(f"/hook/{i}")),
                     secrets=["whsec_" + "A" * 43])
        for i, flt in enumerate(_filters(rng))
    ]
    await produce(topics, topics.topic(SUBSCRIPTIONS), [encode_subscription(s) for s in subs],
                  [s.id.encode() for s in subs])
    events = [
        agreement([ANTING_TOWN, ACME], event_id="many-1"),
        agreement([ALLIANCE, None], names=["SMIIA", "Unknown Co"], sectors=["metaverse"], event_id="many-2"),
        announcement([ANTING_TOWN], kind="forum", city="Shanghai", event_id="many-3"),
        announcement([None], kind="speech", event_id="many-4"),
        announcement([ACME], kind="exhibition", city="Hangzhou", event_id="many-5"),
    ]
    raws = [encode(e) for e in events]
    expected = {
        idempotency_key(e.source, e.id, s.id)
        for e, raw in zip(events, raws, strict=True) for s in subs
        if match(decode(raw), s.filter) is not None
    }
    assert 20 < len(expected) < 5 * SUBSCRIPTIONS_TOTAL // 10  # some match, most do not

    notify = ServiceProcess("notify", topics, tmp_path / "notify.log",
                            ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_NOTIFY_PORT=str(free_port()))
    try:
        notify.start()
        await produce(topics, topics.topic(ENRICHED_EVENTS), raws, [e.key for e in events])
        await wait_until(lambda: len(receiver.received) >= len(expected), 120,
                         f"{len(expected)} deliveries")
        await asyncio.sleep(3)  # a moment longer: a delivery that should not happen would arrive now
    finally:
        notify.kill()
        await receiver.stop()
    got = [r.headers["webhook-id"] for r in receiver.received]
    assert len(got) == len(set(got)), "a pair was delivered twice"
    assert set(got) == expected
    # and each arrived at its own subscription's URL
    by_key = {idempotency_key(e.source, e.id, s.id): f"/hook/{i}" for e in events for i, s in enumerate(subs)}
    assert all(r.path == by_key[r.headers["webhook-id"]] for r in receiver.received)
