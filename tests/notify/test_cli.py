"""`anting subscriptions add|list|disable|enable|rm` and `anting subscribe`: clients of
notify's API (a real one, on a real broker) with the key in ANTING_API_KEY; each tenant's
key sees and changes only its own; with notify away they fail naming the URL and write
nothing to Kafka."""

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
from devtools.testing import ServiceProcess, create_topics, env_for, produce, read_topic
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS, SUBSCRIPTIONS

from .helpers import ACME, ALLIANCE, agreement, announcement, encode
from .tenancy import notify_in_thread, write_keys

pytestmark = pytest.mark.kafka
ANTING = str(Path(sys.executable).parent / "anting")


def cli(settings: AntingSettings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``anting ARGS`` with this test's broker and topic prefix in its environment (so a
    command that touched Kafka would touch this test's topics) and ``env``."""
    return subprocess.run([ANTING, *args], env=env_for(settings, **env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_subscriptions_add_list_disable_enable_rm(settings: AntingSettings, tmp_path: Path) -> None:
    """add prints the subscription with its secret once; list shows it without; disable and
    enable say what changed; rm deletes it; a webhook notify's policy refuses is exit 2."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    with notify_in_thread(settings, tmp_path / "keys", keys.admin) as (url, _):
        env = {"ANTING_NOTIFY_URL": url, "ANTING_API_KEY": keys.a}
        added = cli(settings, "subscriptions", "add", "--name", "alliances", "--webhook",
                    "https://hooks.example.com/x", "--kind", "alliance_established", "--org", "SMIIA", **env)
        assert added.returncode == 0, added.stderr
        doc = orjson.loads(added.stdout)
        assert doc["secret"].startswith("whsec_") and doc["filter"]["organizations"] == ["SMIIA"]
        assert doc["tenant"] == "acme"
        listed = cli(settings, "subscriptions", "list", "--format", "json", **env)
        assert listed.returncode == 0 and doc["id"] in listed.stdout and doc["secret"] not in listed.stdout
        disabled = cli(settings, "subscriptions", "disable", doc["id"], **env)
        assert disabled.returncode == 0 and f"disabled {doc['id']}" in disabled.stderr, disabled.stderr
        table = cli(settings, "subscriptions", "list", COLUMNS="250", **env)
        assert "disabled since" in table.stdout and "disabled on request" in table.stdout, table.stdout
        enabled = cli(settings, "subscriptions", "enable", doc["id"], **env)
        assert enabled.returncode == 0 and "it was disabled: disabled on request" in enabled.stderr
        again = cli(settings, "subscriptions", "enable", doc["id"], **env)
        assert again.returncode == 0 and "not disabled; nothing changed" in again.stderr
        refused = cli(settings, "subscriptions", "add", "--name", "x", "--webhook", "http://10.0.0.1/", **env)
        assert refused.returncode == 2 and "refused" in refused.stderr and url in refused.stderr
        removed = cli(settings, "subscriptions", "rm", doc["id"], **env)
        assert removed.returncode == 0, removed.stderr
        assert doc["id"] not in cli(settings, "subscriptions", "list", "--format", "json", **env).stdout
        gone = cli(settings, "subscriptions", "rm", doc["id"], **env)
        assert gone.returncode == 2 and f"no subscription {doc['id']}" in gone.stderr


def test_each_tenant_sees_and_changes_only_its_own(settings: AntingSettings, tmp_path: Path) -> None:
    """Two tenants' keys from a key file: `subscriptions list` shows each its own; rm,
    enable and disable of the other's id are exit 2 'no subscription' and change nothing
    (the admin key sees both, unchanged); `subscribe` needs a key with stream:read."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    with notify_in_thread(settings, tmp_path / "keys", keys.admin) as (url, _):
        acme = {"ANTING_NOTIFY_URL": url, "ANTING_API_KEY": keys.a}
        globex = {"ANTING_NOTIFY_URL": url, "ANTING_API_KEY": keys.b}
        admin = {"ANTING_NOTIFY_URL": url, "ANTING_API_KEY": keys.admin}

        def add(env: dict[str, str], name: str) -> str:
            out = cli(settings, "subscriptions", "add", "--name", name, "--log", f"{name}.jsonl", **env)
            assert out.returncode == 0, out.stderr
            return str(orjson.loads(out.stdout)["id"])

        def ids(env: dict[str, str]) -> dict[str, bool]:
            out = cli(settings, "subscriptions", "list", "--format", "json", **env)
            assert out.returncode == 0, out.stderr
            return {d["id"]: d["disabled"] for d in map(orjson.loads, out.stdout.splitlines())}

        a1, a2 = add(acme, "acme-one"), add(acme, "acme-two")
        b1 = add(globex, "globex-one")
        assert ids(acme) == {a1: False, a2: False}
        assert ids(globex) == {b1: False}
        table = cli(settings, "subscriptions", "list", COLUMNS="250", **globex).stdout
        assert a1 not in table and "acme-one" not in table and b1 in table

        for command in ("rm", "enable", "disable"):
            tried = cli(settings, "subscriptions", command, a1, **globex)
            assert tried.returncode == 2 and f"no subscription {a1}" in tried.stderr, (command, tried.stderr)
        assert ids(acme) == {a1: False, a2: False}
        assert cli(settings, "subscriptions", "disable", a1, **acme).returncode == 0
        assert cli(settings, "subscriptions", "rm", a2, **acme).returncode == 0
        assert ids(acme) == {a1: True}
        assert ids(globex) == {b1: False}
        assert ids(admin) == {a1: True, b1: False}

        events = [agreement([ACME]), announcement([ALLIANCE], kind="alliance_established")]
        asyncio.run(produce(settings, settings.topic(ENRICHED_EVENTS), [encode(e) for e in events],
                            [e.key for e in events]))
        tail = ("subscribe", "--org", "smiia", "--from-beginning", "--idle-exit", "3")
        seen = cli(settings, *tail, ANTING_NOTIFY_URL=url, ANTING_API_KEY=keys.stream_only)
        assert seen.returncode == 0, seen.stderr
        assert [orjson.loads(line)["id"] for line in seen.stdout.splitlines()] == [events[1].id]
        no_scope = cli(settings, *tail, ANTING_NOTIFY_URL=url, ANTING_API_KEY=keys.publish_only)
        assert no_scope.returncode == 2 and "403" in no_scope.stderr and no_scope.stdout == ""
        unknown = cli(settings, *tail, ANTING_NOTIFY_URL=url, ANTING_API_KEY="ak_not-a-key")
        assert unknown.returncode == 2 and "401" in unknown.stderr and unknown.stdout == ""
        managing = cli(settings, "subscriptions", "list", ANTING_NOTIFY_URL=url,
                       ANTING_API_KEY=keys.stream_only)
        assert managing.returncode == 2 and "403" in managing.stderr


def test_with_notify_away_every_command_fails_naming_the_url_and_writes_no_topic(
        settings: AntingSettings) -> None:
    """No notify answers: add, list, rm, enable, disable and subscribe exit 2 naming the URL
    they tried, and nothing reaches the subscriptions topic (no fallback to Kafka)."""
    asyncio.run(create_topics(settings))
    url = f"http://127.0.0.1:{free_port()}"
    commands = [
        ("subscriptions", "add", "--name", "x", "--webhook", "https://hooks.example.com/x"),
        ("subscriptions", "add", "--name", "y", "--log", "y.jsonl"),
        ("subscriptions", "list"),
        ("subscriptions", "rm", "sub_0123456789abcdef0123"),
        ("subscriptions", "enable", "sub_0123456789abcdef0123"),
        ("subscriptions", "disable", "sub_0123456789abcdef0123"),
        ("subscribe", "--from-beginning", "--idle-exit", "2"),
    ]
    for args in commands:
        out = cli(settings, *args, ANTING_NOTIFY_URL=url)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert url in out.stderr and "did not answer" in out.stderr, (args, out.stderr)
    # and through ANTING_NOTIFY_PORT, as before ANTING_NOTIFY_URL: that port's URL is named
    port = str(free_port())
    out = cli(settings, "subscriptions", "add", "--name", "z", "--log", "z.jsonl", ANTING_NOTIFY_PORT=port)
    assert out.returncode == 2 and f"http://127.0.0.1:{port}/v1/subscriptions" in out.stderr, out.stderr
    assert asyncio.run(read_topic(settings, settings.topic(SUBSCRIPTIONS), idle=1.0)) == []


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
        added = await asyncio.to_thread(cli, topics, "subscriptions", "add", "--name", "local", "--webhook",
                                        "http://127.0.0.1:9/hook", ANTING_NOTIFY_PORT=str(port),
                                        ANTING_NOTIFY_ALLOW_NETWORKS="")
        assert added.returncode == 0, added.stderr + service.log_path.read_text()[-2000:]
        doc = orjson.loads(added.stdout)
        assert doc["secret"].startswith("whsec_") and doc["channel"]["url"] == "http://127.0.0.1:9/hook"
        refused = await asyncio.to_thread(cli, topics, "subscriptions", "add", "--name", "x", "--webhook",
                                          "http://10.0.0.1/", ANTING_NOTIFY_PORT=str(port))
        assert refused.returncode == 2
        assert f"127.0.0.1:{port}" in refused.stderr and "ANTING_NOTIFY_ALLOW_NETWORKS" in refused.stderr
    finally:
        service.terminate()
