"""`anting subscriptions add|list|rm` and `anting subscribe` against a real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from devtools import REPO_ROOT
from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, env_for, produce
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ACME, ALLIANCE, agreement, announcement, encode

pytestmark = pytest.mark.kafka
ANTING = str(Path(sys.executable).parent / "anting")


async def cli(settings: AntingSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``anting ARGS``; unless told otherwise, no notify service answers where the CLI looks
    for one (a free port), so `subscriptions add` writes the topic itself."""
    env = {"ANTING_NOTIFY_PORT": str(free_port()), **env}
    return await asyncio.to_thread(
        subprocess.run, [ANTING, *args], env=env_for(settings, **env), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=60,
    )


async def test_subscriptions_add_list_rm(topics: AntingSettings) -> None:
    """add prints the subscription with its secret once; list shows it without; rm deletes it."""
    added = await cli(topics, "subscriptions", "add", "--name", "alliances", "--webhook",
                      "https://hooks.example.com/x", "--kind", "alliance_established", "--org", "SMIIA")
    assert added.returncode == 0, added.stderr
    doc = orjson.loads(added.stdout)
    assert doc["secret"].startswith("whsec_") and doc["filter"]["organizations"] == ["SMIIA"]
    listed = await cli(topics, "subscriptions", "list", "--format", "json")
    assert listed.returncode == 0 and doc["id"] in listed.stdout and doc["secret"] not in listed.stdout
    refused = await cli(topics, "subscriptions", "add", "--name", "x", "--webhook", "http://10.0.0.1/")
    assert refused.returncode == 2 and "refused" in refused.stderr
    removed = await cli(topics, "subscriptions", "rm", doc["id"])
    assert removed.returncode == 0, removed.stderr
    assert doc["id"] not in (await cli(topics, "subscriptions", "list", "--format", "json")).stdout


async def test_subscribe_tails_matching_events(topics: AntingSettings) -> None:
    """`anting subscribe --org smiia` prints only matching enriched events as JSON lines, and a table."""
    events = [agreement([ACME]), announcement([ALLIANCE], kind="alliance_established"), agreement([ACME])]
    await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])
    out = await cli(topics, "subscribe", "--org", "smiia", "--from-beginning", "--idle-exit", "3")
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [d["id"] for d in lines] == [events[1].id]
    assert lines[0]["reason"][0]["organization"] == ALLIANCE.id
    table = await cli(topics, "subscribe", "--org", "smiia", "--from-beginning", "--limit", "1", "--format", "table")
    assert table.returncode == 0 and "shanghai-metaverse-alliance" in table.stdout and "why:" in table.stdout


async def test_subscriptions_add_lets_the_running_service_decide(topics: AntingSettings, tmp_path: Path) -> None:
    """With notify running (allowing 127.0.0.0/8), `subscriptions add` goes through its API: a
    loopback webhook the CLI's own environment would refuse is accepted, and a refusal names
    the service's reason and ANTING_NOTIFY_ALLOW_NETWORKS."""
    port = free_port()
    service = ServiceProcess("notify", topics, tmp_path / "notify.log", ANTING_NOTIFY_PORT=str(port),
                             ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8")
    service.start()
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(150):
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=1)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        added = await cli(topics, "subscriptions", "add", "--name", "local", "--webhook",
                          "http://127.0.0.1:9/hook", ANTING_NOTIFY_PORT=str(port),
                          ANTING_NOTIFY_ALLOW_NETWORKS="")
        assert added.returncode == 0, added.stderr + service.log_path.read_text()[-2000:]
        doc = orjson.loads(added.stdout)
        assert doc["secret"].startswith("whsec_") and doc["channel"]["url"] == "http://127.0.0.1:9/hook"
        refused = await cli(topics, "subscriptions", "add", "--name", "x", "--webhook",
                            "http://10.0.0.1/", ANTING_NOTIFY_PORT=str(port))
        assert refused.returncode == 2
        assert f"127.0.0.1:{port}" in refused.stderr and "ANTING_NOTIFY_ALLOW_NETWORKS" in refused.stderr
    finally:
        service.terminate()
