"""Kill test: events go through enrich while insights is SIGKILLed again and again; after
the drain every answer of the API (every organization's activity in each window,
partners, latest events; sectors; the rankings; the unresolved names) equals a plain
reader's recomputation from ``enriched-events``: nothing counted twice, nothing lost.

Suite size: 600 events, 2 kills; ``ANTING_CHAOS_FULL=1`` (``make chaos``) runs the full
size: 5,000 events, 5 kills.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from devtools.testing import ServiceProcess, wait_until
from shared.settings import AntingSettings
from tests.enrich.helpers import event, load_catalog, publish
from tests.enrich.seed import SEED_NAMES
from tests.insights.helpers import differences, expected_from_topic, instance, ready

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
FULL = os.environ.get("ANTING_CHAOS_FULL") == "1"
EVENTS, KILLS = (5000, 5) if FULL else (600, 2)


def _events(n: int) -> list[dict[str, object]]:
    rng = random.Random(5)
    names = [*sorted(SEED_NAMES), "Unknown Robotics Co", "Nameless Lab"]
    return [event(i, rng.sample(names, rng.randint(1, 4)), "agreement" if i % 3 == 0 else "announcement")
            for i in range(n)]


async def test_insights_exact_after_kills(topics: AntingSettings, tmp_path: Path) -> None:
    await load_catalog(topics)
    enrich = ServiceProcess("enrich", topics, tmp_path / "enrich.log").start()
    insights, base = instance(topics, tmp_path, "kill")
    insights.start()
    try:
        await wait_until(lambda: ready(base), 90, "insights ready")
        feed = asyncio.create_task(publish(topics, _events(EVENTS), rate=EVENTS / (4.0 * KILLS)))
        rng = random.Random(9)
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            insights.kill()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            insights.start()
            await wait_until(lambda: ready(base), 90, "insights ready after a kill")
        await feed
        expected = await expected_from_topic(topics, EVENTS)
        diffs: list[str] = []
        for _ in range(90):
            diffs = await asyncio.to_thread(differences, base, expected)
            if not diffs:
                break
            await asyncio.sleep(1)
        assert not diffs, diffs[:10]
        assert sum(1 for k in expected.all if k.startswith("org:")) > 5
        assert any(k.startswith("unresolved:") for k in expected.all)
    finally:
        insights.terminate()
        enrich.terminate()
