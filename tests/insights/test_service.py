"""insights as it runs: two instances on one group answer every query the same, each key
from the instance that owns it, and both equal a plain reader's recomputation; errors
are problem+json; the API key guards /v1; the CLI prints partners and the top."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from devtools.testing import env_for, produce, produce_raw_header, read_topic, wait_until
from shared.settings import AntingSettings
from shared.topics import DEAD_LETTERS, ENRICHED_EVENTS
from tests.insights.helpers import (
    Expected,
    differences,
    expected_from_topic,
    instance,
    random_events,
    ready,
)

KEY = "k-insights"
AUTH = {"authorization": f"Bearer {KEY}"}


async def test_two_instances_answer_the_same(topics: AntingSettings, tmp_path: Path) -> None:
    events = random_events(400, seed=11)
    await produce(topics, topics.topic(ENRICHED_EVENTS), events)
    expected = await expected_from_topic(topics, len(events))
    (a, base_a), (b, base_b) = (instance(topics, tmp_path, n, ANTING_API_KEYS=KEY) for n in ("a", "b"))
    a.start()
    b.start()
    try:
        await wait_until(lambda: ready(base_a) and ready(base_b), 90, "both instances ready")
        diffs: dict[str, list[str]] = {}

        def agree() -> bool:
            for base in (base_a, base_b):
                diffs[base] = differences(base, expected, AUTH)
            return not any(diffs.values())

        for _ in range(60):
            if await asyncio.to_thread(agree):
                break
            await asyncio.sleep(1)
        assert not any(diffs.values()), {k: v[:5] for k, v in diffs.items()}

        await asyncio.to_thread(check_routing_errors_and_cli, topics, expected, base_a, base_b)
    finally:
        for p in (a, b):
            p.terminate()
        if os.environ.get("ANTING_TEST_SHOW_LOGS"):
            print(a.log()[-4000:], b.log()[-4000:])


def check_routing_errors_and_cli(topics: AntingSettings, expected: Expected, base_a: str, base_b: str) -> None:
    """The blocking half of the test (HTTP calls and the CLI), run in a thread."""
# both own keys: some answers were forwarded (faust's routing), named by the header
    served = set()
    for oid in sorted(k[4:] for k in expected.all if k.startswith("org:"))[:20]:
        r = httpx.get(f"{base_a}/v1/organizations/{oid}/partners", headers=AUTH)
        served.add(r.headers["x-anting-served-by"])
    assert served == {base_a, base_b}

    r = httpx.get(f"{base_b}/v1/organizations/no-such-org/activity", headers=AUTH)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404
    r = httpx.get(f"{base_a}/v1/organizations/x/activity", params={"window": "year"}, headers=AUTH)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = httpx.get(f"{base_a}/v1/organizations")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert "/v1/organizations/{org_id}/partners" in httpx.get(f"{base_a}/openapi.json").json()["paths"]
    assert "anting_insights_facts" in httpx.get(f"{base_b}/metrics").text

    # the CLI, against either instance
    top_id = max((k for k in expected.all if k.startswith("org:")), key=lambda k: expected.all[k]["total"])
    env = env_for(topics, ANTING_INSIGHTS_URL=base_b, ANTING_API_KEYS=KEY, COLUMNS="200")
    anting = str(Path(sys.executable).parent / "anting")
    out = subprocess.run([anting, "insights", "partners", top_id[4:]], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    some_partner = next(iter(expected.partners[top_id]))
    assert some_partner in out.stdout
    out = subprocess.run([anting, "insights", "top", "--window", "all", "--limit", "5"],
                         env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "Most active organizations" in out.stdout
    assert re.search(rf"│\s*{expected.all[top_id]['total']}\s*│", out.stdout), out.stdout
    out = subprocess.run([anting, "insights", "partners", "no-such-org"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "404" in out.stderr


async def test_a_record_insights_cannot_read_is_dead_lettered(topics: AntingSettings, tmp_path: Path) -> None:
    """A record on enriched-events that is not an enriched event, and one whose header name
    is not UTF-8 (as kcat writes one), go to dead-letters (stage insights, the reason, the
    original bytes) and the events after them are counted."""
    events = random_events(40, seed=5)
    poison = b'{"specversion": "1.0", "id": "bad"'
    await produce(topics, topics.topic(ENRICHED_EVENTS), [poison, *events[:20]])
    # a copy of an event (counted once whatever happens) whose header name is not UTF-8
    await produce_raw_header(topics, topics.topic(ENRICHED_EVENTS), events[0], partition=0)
    await produce(topics, topics.topic(ENRICHED_EVENTS), events[20:])
    expected = await expected_from_topic(topics, len(events) + 2)
    proc, base = instance(topics, tmp_path, "poison")
    proc.start()
    try:
        await wait_until(lambda: ready(base), 90, "insights ready")
        for _ in range(60):
            if not await asyncio.to_thread(differences, base, expected):
                break
            await asyncio.sleep(1)
        assert not await asyncio.to_thread(differences, base, expected)
        letters = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=2, timeout=30)
    finally:
        proc.terminate()
    assert sorted(r.value or b"" for r in letters) == sorted([poison, events[0]])
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["dlq.stage"] == b"insights"
        assert headers["dlq.original.topic"] == topics.topic(ENRICHED_EVENTS).encode()
    odd = next(dict(r.headers) for r in letters if r.value == events[0])
    assert b"header name is not UTF-8" in odd["dlq.error.message"]
