"""Truth or 503 through rebalances: two instances, a third joining and one leaving while
events keep coming and queries run in a loop against every live instance; every answer
either equals the recomputation at the position it reports (``X-Anting-Position``) or is a
503 problem with ``Retry-After``; none is wrong."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.testing import produce, read_topic, wait_until
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS, INSIGHTS_FACTS
from tests.insights.helpers import (
    AtPosition,
    catalog,
    differences,
    expected_from_topic,
    instance,
    random_events,
    ready,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FIRST, LATER = 300, 300


class Loop:
    """Queries in a thread, round-robin over the live instances and a fixed set of paths,
    until stopped; every answer kept (path, status, headers, body)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.bases: list[str] = []
        self.answers: list[tuple[str, int, dict[str, str], Any]] = []
        self.unreachable = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                for base in list(self.bases):
                    path = self.paths[i % len(self.paths)]
                    i += 1
                    params = {"window": "all", "limit": "1000"} if path == "/v1/organizations" else {}
                    try:
                        r = client.get(base + path, params=params)
                    except httpx.HTTPError:
                        self.unreachable += 1  # an instance that left, or not listening yet
                        continue
                    try:
                        doc = r.json()
                    except ValueError:
                        doc = r.text  # not JSON: wrong whatever it says
                    self.answers.append((path, r.status_code, dict(r.headers), doc))


@pytest.mark.xfail(strict=False, reason=(
    "known fault, open: after a member leaves, a survivor's answer can stay one event off for "
    "good (2 of 4 two-worker suites on 2026-12-07: an unresolved name 24 for 25, a sector's "
    "total)"))
async def test_every_answer_is_true_at_its_position_or_503(topics: AntingSettings, tmp_path: Path) -> None:
    """Through a join and a leave, each answer equals the recomputation at the position it
    reports, or is a 503 with Retry-After and a reason."""
    events = random_events(FIRST + LATER, seed=23)
    await produce(topics, topics.topic(ENRICHED_EVENTS), events[:FIRST])
    orgs = [o.id for o in catalog()[:30]]
    paths = [f"/v1/organizations/{oid}/{what}" for oid in orgs[:8] for what in ("activity", "partners", "events")]
    paths += ["/v1/sectors/metaverse/activity", "/v1/organizations"]
    (a, base_a), (b, base_b), (c, base_c) = (instance(topics, tmp_path, n) for n in ("a", "b", "c"))
    loop = Loop(paths)
    a.start()
    b.start()
    try:
        await wait_until(lambda: ready(base_a) and ready(base_b), 90, "both instances ready")
        loop.bases[:] = [base_a, base_b]
        loop.thread.start()

        async def feed() -> None:
            for at in range(FIRST, FIRST + LATER, 20):
                await produce(topics, topics.topic(ENRICHED_EVENTS), events[at:at + 20])
                await asyncio.sleep(0.5)

        feeding = asyncio.create_task(feed())
        await asyncio.sleep(3)
        c.start()
        loop.bases.append(base_c)
        await wait_until(lambda: ready(base_c), 90, "the third instance ready")
        await asyncio.sleep(3)
        loop.bases.remove(base_b)
        await asyncio.to_thread(b.terminate)  # leaves the group
        await feeding
        await asyncio.sleep(8)
        loop.stop.set()
        await asyncio.to_thread(loop.thread.join, 30)

        # the survivors converge on the whole stream's answers (503s do not last)
        expected = await expected_from_topic(topics, FIRST + LATER)
        diffs: list[str] = []
        for _ in range(60):
            diffs = [d for base in (base_a, base_c) for d in await asyncio.to_thread(differences, base, expected)]
            if not diffs:
                break
            await asyncio.sleep(1)
        assert not diffs, diffs[:5]
    finally:
        loop.stop.set()
        for p in (a, b, c):
            p.terminate()

    records = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=FIRST + LATER, timeout=60)
    facts = await read_topic(topics, topics.topic(INSIGHTS_FACTS), timeout=60, idle=3)
    at = AtPosition(records, facts)
    counts: Counter[str] = Counter()
    wrong: list[str] = []
    for path, status, headers, doc in loop.answers:
        if status == 503:
            assert headers.get("retry-after") and headers["content-type"] == "application/problem+json", doc
            assert doc["detail"], doc
            counts["503"] += 1
            continue
        why = at.check(path, status, headers, doc) if isinstance(doc, dict) else f"{path}: {status} {doc[:200]}"
        if why is None:
            counts["true at its position"] += 1
        else:
            counts["wrong"] += 1
            wrong.append(why)
    counts["unreachable (connection refused or reset)"] = loop.unreachable
    print(f"\nanswers through the rebalances: {dict(counts)}")
    assert not wrong, (dict(counts), wrong[:10])
    assert counts["true at its position"] > 100, dict(counts)
    assert len({h.get("x-anting-position") for p, s, h, _ in loop.answers if s == 200}) > 3
