"""insights' throughput and recovery, on a broker of one's own choosing:

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m bench.insights [events] [--profile]

(``--profile``: py-spy attached to the service of the throughput phase, as ``python -m
bench --profile insights`` does at the suite's size; the summary on stderr, the raw
stacks under ``bench/scratch/profile-insights-<events>/``.)

Fills ``enriched-events`` (a fresh topic prefix) with ``events`` enriched events naming
1-5 catalog organizations each, then measures (1) the raw consume loop: one aiokafka
consumer reading them all, read committed, and parsing each with the contract; (2)
insights: ``anting serve insights`` from start until every fact is folded (its
``anting_insights_facts_total{outcome="applied"}``); (3) recovery: insights stopped and
started again, the time until ``/readyz`` answers 200 (the table restored from the
changelog). Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import procs
from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, create_topics, settings_for
from services.insights.state import facts_of
from shared.events import parse_enriched
from shared.kafka import make_consumer, make_producer
from shared.organizations import Organization
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

CATALOG = Path(__file__).resolve().parents[1] / "services" / "enrich" / "data" / "organizations.json"


def enriched_events(n: int) -> list[bytes]:
    """``n`` enriched events (JSON) naming 1-5 of 60 catalog organizations; a third agreements."""
    rng = random.Random(1)
    orgs = [Organization.model_validate_json(orjson.dumps(o)) for o in orjson.loads(CATALOG.read_bytes())][:60]
    run = uuid.uuid4().hex[:6]
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        named = rng.sample(orgs, rng.randint(1, 5))
        mentions = [{"name": o.name, "resolved": o.model_dump(mode="json"), "match": {"method": "exact", "score": 100.0}}
                    for o in named]
        enrichment = {"resolved": [o.id for o in named], "unresolved": [], "catalog_version": "bench",
                      "enriched_at": now}
        base = {"specversion": "1.0", "id": f"b-{run}-{i}", "source": "/bench", "time": now}
        if i % 3 == 0:
            doc = {**base, "type": "agreement.signed", "data": {
                "title": f"Agreement {i}", "organizations": mentions, "sectors": ["metaverse"],
                "enrichment": enrichment}}
        else:
            doc = {**base, "type": "conference.announcement", "data": {
                "headline": f"Announcement {i}", "kind": "forum", "organizations": mentions,
                "location": {"city": "Shanghai"}, "enrichment": enrichment}}
        out.append(orjson.dumps(doc))
    return out


async def fill(settings: AntingSettings, values: list[bytes]) -> None:
    producer = make_producer(settings, linger_ms=20)
    await producer.start()
    try:
        topic = settings.topic(ENRICHED_EVENTS)
        for i, v in enumerate(values):
            await producer.send(topic, value=v, key=b"k%d" % (i % 64))
        await producer.flush()
    finally:
        await producer.stop()


async def raw_loop(settings: AntingSettings, n: int) -> float:
    """Seconds for one consumer to read and parse ``n`` records."""
    consumer = make_consumer(settings, settings.topic(ENRICHED_EVENTS), group_id=None)
    await consumer.start()
    t0 = time.monotonic()
    seen = 0
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for r in records:
                    parse_enriched(r.value or b"")
                    seen += 1
    finally:
        await consumer.stop()
    return time.monotonic() - t0


def applied(base: str) -> float:
    try:
        text = httpx.get(base + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1
    m = re.search(r'anting_insights_facts_total\{outcome="applied"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


async def prepare(settings: AntingSettings, n: int) -> tuple[int, float]:
    """Fill the topic; (facts the events teach, seconds of the raw consume loop)."""
    await create_topics(settings)
    values = enriched_events(n)
    facts = sum(len(facts_of(parse_enriched(v), 0, 0, 0)) for v in values)
    await fill(settings, values)
    return facts, await raw_loop(settings, n)


def measure(bootstrap: str, n: int, log_dir: Path, timeout: float = 900.0) -> dict[str, Any]:
    """The measurements (see the module) on ``bootstrap``, insights' log in ``log_dir``;
    raises ``TimeoutError`` when insights has not folded every fact within ``timeout`` s."""
    settings = settings_for(bootstrap)
    facts, raw_s = asyncio.run(prepare(settings, n))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = ServiceProcess("insights", settings, log_dir / f"insights-{port}.log", ANTING_INSIGHTS_PORT=str(port))
    t0 = time.monotonic()
    proc.start()
    if procs.PROFILE_DIR is not None and proc.proc is not None:  # `python -m bench --profile insights`
        procs._attach_profiler("insights", proc.proc.pid)
    try:
        while applied(base) < facts:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"insights folded {applied(base):.0f} of {facts} facts in {timeout:.0f} s")
            time.sleep(0.2)
        fold_s = time.monotonic() - t0
        time.sleep(3)  # the last commit
        proc.terminate()
        t1 = time.monotonic()
        proc.start()
        while not ready(base):
            time.sleep(0.05)
        recovery_s = time.monotonic() - t1
        entities = len(httpx.get(base + "/v1/organizations", params={"window": "all", "limit": 1000}).json()
                       ["organizations"])
    finally:
        proc.terminate()
    return {"events": n, "facts": facts, "raw_events_per_s": round(n / raw_s),
            "insights_events_per_s": round(n / fold_s), "ratio": round(raw_s / fold_s, 3),
            "insights_seconds": round(fold_s, 1), "recovery_seconds": round(recovery_s, 2),
            "organizations": entities}


def main(n: int) -> dict[str, Any]:
    """:func:`measure` on ``KAFKA_BOOTSTRAP_SERVERS`` (default 127.0.0.1:9092)."""
    return measure(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), n,
                   Path(os.environ.get("TMPDIR", "/tmp")))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--profile"]
    events = int(args[0]) if args else 100_000
    if "--profile" in sys.argv[1:]:
        from bench import profile
        from bench.harness import SCRATCH

        profile.run(f"insights-{events}", lambda: print(orjson.dumps(main(events)).decode()), SCRATCH / "x")
    else:
        print(orjson.dumps(main(events)).decode())
