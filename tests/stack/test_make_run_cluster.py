"""`anting run` with ``ANTING_RUN_BROKERS=3`` (what ``ANTING_RUN_BROKERS=3 make run`` runs):
a local 3-node cluster under the supervisor, the seed enriched and notified on it, and a
broker killed by hand restarted while events published meanwhile all come out.

The tests share one running stack and run in file order; the last one stops it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from devtools.localkafka import free_port
from devtools.testing import read_topic, settings_for
from shared.topics import AGREEMENTS, ENRICHED_EVENTS, NOTIFICATIONS
from tests.cluster.conftest import consecutive_free_ports
from tests.stack.test_make_run import (
    SEED_ACCEPTED,
    SEED_AGREEMENTS,
    SEED_IDS,
    Stack,
    _pump,
    _records,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`anting run` on a 3-node cluster of its own (client ports three consecutive free
    ones of 19300-19399, data in a temporary state directory), without Prometheus."""
    tmp = tmp_path_factory.mktemp("cluster-stack")
    first = consecutive_free_ports(3, 19300, 19400)
    ports = {"ingest": free_port(), "enrich": free_port(), "notify": free_port(), "insights": free_port()}
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "ANTING_NOTIFY_ALLOW_NETWORKS", "ANTING_API_KEYS")}
    env.update({
        "ANTING_RUN_BROKERS": "3",
        "ANTING_RUN_KAFKA_PORT": str(first),
        "ANTING_RUN_PROMETHEUS": "false",
        "ANTING_RUN_STATE_DIR": str(tmp / "state"),
        "ANTING_INGEST_PORT": str(ports["ingest"]),
        "ANTING_ENRICH_PORT": str(ports["enrich"]),
        "ANTING_NOTIFY_PORT": str(ports["notify"]),
        "ANTING_INSIGHTS_PORT": str(ports["insights"]),
        "PYTHONUNBUFFERED": "1",
    })
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "anting"), "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    bootstrap = ",".join(f"127.0.0.1:{first + i}" for i in range(3))
    st = Stack(proc, env, settings_for(bootstrap, ""), ports, tmp / "anting-run.log")
    threading.Thread(target=_pump, args=(st,), daemon=True).start()
    try:
        yield st
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _delivered(stack: Stack, want: int) -> list[dict[str, Any]]:
    """The delivered notifications, once ``want`` distinct (channel, event) pairs are (60 s)."""
    delivered: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = _records(await read_topic(stack.settings, stack.settings.topic(NOTIFICATIONS), idle=1.0))
        delivered = [r for r in records if r["outcome"] == "delivered"]
        if len({(r["channel"], r["event_id"]) for r in delivered}) >= want:
            break
    return delivered


async def test_the_seed_is_delivered_on_three_brokers(cluster_stack: Stack) -> None:
    """The bootstrap list names three brokers; the seed's events come out enriched and are
    delivered to the demo log subscription (every event) and the webhook (agreements)."""
    out = cluster_stack.wait_for(SEED_ACCEPTED, timeout=240)
    assert cluster_stack.settings.kafka.bootstrap_servers in out
    enriched = _records(await read_topic(cluster_stack.settings, cluster_stack.settings.topic(ENRICHED_EVENTS),
                                         expect=len(SEED_IDS), timeout=90))
    assert sorted(e["id"] for e in enriched) == sorted(SEED_IDS)
    delivered = await _delivered(cluster_stack, len(SEED_IDS) + len(SEED_AGREEMENTS))
    by_channel = {ch: {r["event_id"] for r in delivered if r["channel"] == ch} for ch in ("log", "webhook")}
    assert by_channel["log"] == set(SEED_IDS)
    assert by_channel["webhook"] == set(SEED_AGREEMENTS)


async def test_a_broker_killed_by_hand_is_restarted_and_nothing_is_lost(cluster_stack: Stack) -> None:
    """SIGKILL one broker of the running stack: the supervisor says so and restarts it, and
    60 events posted to ingest meanwhile (retried on 503, as a client would) all come out
    enriched, once per input record."""
    brokers = [c for c in psutil.Process(cluster_stack.proc.pid).children()
               if "kafka.Kafka" in " ".join(c.cmdline())]
    assert len(brokers) == 3, [c.cmdline()[:3] for c in brokers]
    victim = brokers[1]
    victim.send_signal(signal.SIGKILL)
    cluster_stack.wait_for(rf"kafka-\d \(pid {victim.pid}\) killed by SIGKILL; restarting", timeout=30)

    ids = [f"by-hand-{i:03d}" for i in range(60)]
    async with httpx.AsyncClient(base_url=cluster_stack.url("ingest"), timeout=15) as client:
        for i in range(0, len(ids), 10):
            body = orjson.dumps([{"specversion": "1.0", "id": eid, "source": "/by-hand",
                                  "type": "agreement.signed", "subject": f"s{n % 3}",
                                  "data": {"title": f"agreement {eid}", "organizations": [{"name": "SAIC Motor"}]}}
                                 for n, eid in enumerate(ids[i:i + 10])])
            for _ in range(60):
                resp = await client.post("/v1/events", content=body,
                                         headers={"content-type": "application/cloudevents-batch+json"})
                if resp.status_code == 202:
                    break
                assert resp.status_code == 503, resp.text
                await asyncio.sleep(1)
            assert resp.status_code == 202, resp.text
    cluster_stack.wait_for(r"restarted kafka-\d \(pid \d+", timeout=60)
    # a batch answered 503 may have been written all the same ("nothing is known to be
    # published"), so its retry can put an event in twice: enrich must then give each
    # input record exactly one enriched record, no more, no fewer
    written = Counter(e["id"] for e in _records(await read_topic(
        cluster_stack.settings, cluster_stack.settings.topic(AGREEMENTS), idle=2.0, timeout=60))
        if e["source"] == "/by-hand")
    assert set(written) == set(ids)
    records = _records(await read_topic(cluster_stack.settings, cluster_stack.settings.topic(ENRICHED_EVENTS),
                                        expect=len(SEED_IDS) + written.total(), timeout=120))
    assert Counter(e["id"] for e in records if e["source"] == "/by-hand") == written


def test_ctrl_c_stops_the_cluster(cluster_stack: Stack) -> None:
    """Ctrl-C stops the services and the three brokers; nothing of the stack is left."""
    children = psutil.Process(cluster_stack.proc.pid).children(recursive=True)
    cluster_stack.proc.send_signal(signal.SIGINT)
    assert cluster_stack.proc.wait(90) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.pid for p in alive]
    assert re.search(r"stopped; nothing left running", cluster_stack.output())
