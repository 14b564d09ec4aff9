"""``anting serve enrich`` against the real broker: seed resolution, exactly once under
SIGKILL, two workers sharing partitions and following catalog updates, poison records."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from pathlib import Path

import httpx
import orjson
import pytest

from services.enrich import catalog
from shared.deadletters import read_dead_letters
from shared.organizations import Organization
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS
from tests.enrich.helpers import (
    ALL_SEED_NAMES,
    Worker,
    enriched,
    event,
    group,
    group_lag,
    load_catalog,
    lost_and_duplicated,
    publish,
    publish_raw,
)
from tests.enrich.seed import SEED_NAMES, seed_events

pytestmark = pytest.mark.kafka


async def test_seed_story_resolves_through_kafka(topics: AntingSettings, tmp_path: Path) -> None:
    """Every organization the seed events name resolves to the right record, also in Chinese."""
    await load_catalog(topics)
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        await publish(topics, seed_events())
        out = await enriched(topics, expect=len(seed_events()))
    finally:
        worker.stop()
    assert sorted(e["id"] for e in out) == sorted(e["id"] for e in seed_events())
    seen = set()
    for e in out:
        for m in e["data"]["organizations"]:
            if m["name"] in SEED_NAMES:
                seen.add(m["name"])
                assert m["resolved"]["id"] == SEED_NAMES[m["name"]], m
                assert m["match"]["method"] in ("exact", "alias")
    assert seen == set(SEED_NAMES)
    signing = next(e for e in out if e["id"] == "seed-signing")
    assert signing["data"]["enrichment"]["unresolved"] == ["Some Unknown Metaverse Startup Co., Ltd."]


async def test_enriched_records_are_structured_cloudevents(topics: AntingSettings, tmp_path: Path) -> None:
    """An input written without headers (as kcat does) comes out with the structured-mode
    content type; an input's own headers (traceparent, ce_*) are kept."""
    from devtools.testing import read_topic
    from shared.kafka import make_producer
    from shared.topics import ANNOUNCEMENTS, ENRICHED_EVENTS

    await load_catalog(topics)
    events = seed_events()[:2]
    producer = make_producer(topics)
    await producer.start()
    try:
        await producer.send_and_wait(topics.topic(ANNOUNCEMENTS), orjson.dumps(events[0]))
        await producer.send_and_wait(
            topics.topic(ANNOUNCEMENTS), orjson.dumps(events[1]),
            headers=[("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                     ("content-type", b"application/json")])
    finally:
        await producer.stop()
    worker = Worker(topics, tmp_path, "w").start()
    try:
        records = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=2, timeout=90)
    finally:
        worker.stop()
    assert len(records) == 2
    for r in records:
        assert [v for k, v in r.headers if k == "content-type"] == [b"application/cloudevents+json"]
    traced = [r for r in records if ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") in r.headers]
    assert len(traced) == 1


CHAOS_FULL = os.environ.get("ANTING_CHAOS_FULL") == "1"


@pytest.mark.slow
async def test_sigkill_restarts_lose_and_duplicate_nothing(topics: AntingSettings, tmp_path: Path) -> None:
    """SIGKILL the worker at random moments and restart it: every id exactly once downstream."""
    total, kills = (20_000, 10) if CHAOS_FULL else (3_000, 5)
    await load_catalog(topics)
    events = [event(i, ["BIT", "安亭镇人民政府"], "announcement" if i % 2 else "agreement")
              for i in range(total)]
    # spread over the kills, so that they land mid-stream and mid-transaction
    feeding = asyncio.create_task(publish(topics, events, rate=total / (kills * 2.0)))
    rng = random.Random(7)
    logs = []
    for k in range(kills):
        worker = Worker(topics, tmp_path, f"kill{k}").start()
        logs.append(worker)
        await asyncio.sleep(rng.uniform(1.5, 4.0))
        worker.kill()
    await feeding
    last = Worker(topics, tmp_path, "last").start()
    try:
        out = await enriched(topics, expect=total, timeout=240 if CHAOS_FULL else 120)
    finally:
        last.stop()
    lost, dup = lost_and_duplicated(out, {e["id"] for e in events})
    assert not lost and not dup, (len(lost), len(dup), sorted(lost)[:5], sorted(dup)[:5])
    assert len(out) == total


async def test_second_worker_mid_stream_shares_partitions(topics: AntingSettings, tmp_path: Path) -> None:
    """A second worker joining mid-stream takes partitions over: no loss, no duplicate.

    The stream goes on (500 events/s) until the second worker has enriched events of its
    own, and for 500 events more: how long a rebalance takes depends on the machine, so
    the test waits for it rather than guessing."""
    await load_catalog(topics)
    first = Worker(topics, tmp_path, "first").start()
    second = Worker(topics, tmp_path, "second")
    sent: list[dict] = []

    async def feed_until_second_works() -> None:
        deadline = asyncio.get_running_loop().time() + 120
        after = None  # events sent when the second worker was first seen working
        while after is None or len(sent) < after + 500:
            assert asyncio.get_running_loop().time() < deadline, "the second worker never took partitions"
            chunk = [event(i, ["Meta Baylism"], "announcement" if i % 2 else "agreement")
                     for i in range(len(sent), len(sent) + 250)]
            await publish(topics, chunk, rate=500)
            sent.extend(chunk)
            if after is None and second.proc.proc is not None and len(sent) >= 1000:
                with contextlib.suppress(httpx.HTTPError):
                    if _enriched_count(await second.metrics()) > 0:
                        after = len(sent)

    try:
        await first.wait_ready()
        feeding = asyncio.create_task(feed_until_second_works())
        await asyncio.sleep(2.0)
        second.start()
        await second.wait_ready()
        await feeding
        out = await enriched(topics, expect=len(sent))
        m1, m2 = await first.metrics(), await second.metrics()
    finally:
        first.stop()
        second.stop()
    lost, dup = lost_and_duplicated(out, {e["id"] for e in sent})
    assert not lost and not dup, (len(lost), len(dup))
    assert _enriched_count(m1) > 0 and _enriched_count(m2) > 0  # both took partitions


def _enriched_count(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("anting_enrich_events_total{") and 'outcome="enriched"' in line)


async def test_two_workers_follow_catalog_updates(topics: AntingSettings, tmp_path: Path) -> None:
    """Two workers each resolve every organization; an update on the topic is seen by the
    next events on both, with no restart; a delete (tombstone) too."""
    await load_catalog(topics)
    workers = [Worker(topics, tmp_path, f"w{i}").start() for i in range(2)]
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers))
        await asyncio.sleep(3.0)  # let the group settle on both members
        # 60 events on all 6 partitions, each naming every seed organization
        batch1 = [event(i, ALL_SEED_NAMES, "announcement" if i % 2 else "agreement") for i in range(60)]
        await publish(topics, batch1)
        out1 = await enriched(topics, expect=60)
        for e in out1:
            assert e["data"]["enrichment"]["unresolved"] == []
            for m in e["data"]["organizations"]:
                assert m["resolved"]["id"] == SEED_NAMES[m["name"]]
        metrics = [await w.metrics() for w in workers]
        assert all(_enriched_count(m) > 0 for m in metrics), "both workers enriched events"
        assert all('anting_enrich_organizations_total{outcome="unresolved"}' not in m for m in metrics)

        lab = Organization.model_validate_json(orjson.dumps({
            "id": "anting-metaverse-lab", "name": "Anting Metaverse Lab", "names": {"zh": "安亭元宇宙实验室"},
            "kind": "enterprise", "city": "Shanghai", "parent": "anting-town-government"}))
        await catalog.write(topics, upserts=[lab])
        batch2 = [event(100 + i, ["Anting Metaverse Lab", "安亭元宇宙实验室"],
                        "announcement" if i % 2 else "agreement") for i in range(60)]
        await publish(topics, batch2)
        out2 = [e for e in await enriched(topics, expect=120) if e["id"] >= "ev-000100"]
        assert len(out2) == 60
        for e in out2:
            assert e["data"]["enrichment"]["resolved"] == ["anting-metaverse-lab"], e["data"]["enrichment"]
        assert len({e["data"]["enrichment"]["catalog_version"] for e in out2}) == 1

        await catalog.write(topics, deletes=["anting-metaverse-lab"])
        batch3 = [event(200 + i, ["Anting Metaverse Lab"], "announcement" if i % 2 else "agreement")
                  for i in range(60)]
        await publish(topics, batch3)
        out3 = [e for e in await enriched(topics, expect=180) if e["id"] >= "ev-000200"]
        assert len(out3) == 60
        assert all(e["data"]["enrichment"]["unresolved"] == ["Anting Metaverse Lab"] for e in out3)
        metrics = [await w.metrics() for w in workers]
        assert all(_enriched_count(m) > 120 / 6 for m in metrics)  # both still working
    finally:
        for w in workers:
            w.stop()


async def test_poison_records_dead_lettered_once_and_lag_returns_to_zero(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """1% poison (not JSON, not a CloudEvent, invalid data): each in dead-letters once with
    its headers, every good event enriched once, and the group's lag back to zero."""
    good = [event(i, ["Shanghai International Circuit"]) for i in range(1980)]
    poison = []
    for i in range(20):
        poison.append([b"not json %d" % i,
                       orjson.dumps({"hello": i}),
                       orjson.dumps({**event(10_000 + i), "data": {"headline": ""}})][i % 3])
    await load_catalog(topics)
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        await publish(topics, good[:990])
        await publish_raw(topics, topics.topic(ANNOUNCEMENTS), poison)
        await publish(topics, good[990:])
        out = await enriched(topics, expect=len(good))
        lost, dup = lost_and_duplicated(out, {e["id"] for e in good})
        assert not lost and not dup
        letters = []
        for _ in range(50):
            letters = [dl for _, dl in await read_dead_letters(topics, limit=1000, idle_ms=500)]
            if len(letters) >= len(poison):
                break
        assert sorted(dl.value or b"" for dl in letters) == sorted(poison)
        for letter in letters:
            assert letter.header("dlq.stage") == "enrich"
            assert letter.header("dlq.original.topic") == topics.topic(ANNOUNCEMENTS)
            assert letter.header("dlq.original.partition") in {"0", "1", "2"}
            assert (letter.header("dlq.original.offset") or "").isdigit()
            assert letter.header("dlq.error.class") == "ValidationError"
            assert letter.header("dlq.error.message")
            assert letter.header("dlq.failed_at")
        lag = -1
        for _ in range(60):
            lag = await group_lag(topics)
            if lag == 0:
                break
            await asyncio.sleep(0.5)
        assert lag == 0
        gauges: list[float] = []
        for _ in range(40):  # the gauge is refreshed every 2 s
            metrics = await worker.metrics()
            # the enrich group's six input partitions (its documents stage's group has gauges too)
            gauges = [float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                      if x.startswith("anting_consumer_lag{") and f'group="{group(topics)}"' in x]
            if len(gauges) == 6 and not any(gauges):
                break
            await asyncio.sleep(0.5)
        assert len(gauges) == 6 and not any(gauges), gauges
        assert 'anting_enrich_events_total{outcome="dead_lettered",type="unknown"}' in metrics
        assert 'anting_stage_seconds_count{stage="enrich"}' in metrics
    finally:
        worker.stop()


async def test_at_least_once_mode(topics: AntingSettings, tmp_path: Path) -> None:
    """With ANTING_ENRICH_GUARANTEE=at_least_once every event is enriched (no transactions)."""
    await load_catalog(topics)
    events = [event(i, ["北京理工大学"]) for i in range(200)]
    await publish(topics, events)
    worker = Worker(topics, tmp_path, "w", ANTING_ENRICH_GUARANTEE="at_least_once").start()
    try:
        out = await enriched(topics, expect=200)
    finally:
        worker.stop()
    assert {e["id"] for e in out} == {e["id"] for e in events}
    assert all(e["data"]["enrichment"]["resolved"] == ["beijing-institute-of-technology"] for e in out)
