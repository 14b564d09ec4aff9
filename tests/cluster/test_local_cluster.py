"""The local 3-node KRaft cluster: every broker registered, topics replicated three ways,
an acknowledged write surviving the SIGKILL of its partition's leader, the killed node
rejoining, and ``anting kafka --brokers 3`` restarting a node that dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import NewTopic

from devtools.localkafka import LocalCluster, cluster_brokers, cluster_replication
from devtools.testing import read_topic, settings_for
from shared.kafka import make_admin, make_producer
from shared.settings import AntingSettings
from tests.cluster.conftest import consecutive_free_ports

pytestmark = pytest.mark.kafka


async def partitions(settings: AntingSettings, topic: str) -> list[dict[str, Any]]:
    """The topic's partitions as the cluster's metadata has them (leader, replicas, isr)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        return sorted(described["partitions"], key=lambda p: p["partition"])
    finally:
        await admin.close()


async def until(check: Any, timeout: float, what: str) -> None:
    """Await the coroutine function ``check`` every 0.5 s until it returns true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_replication_follows_the_cluster_size() -> None:
    """RF = min(3, brokers); two in-sync replicas required only when RF is 3."""
    assert [cluster_replication(n) for n in (1, 2, 3, 5)] == [(1, 1), (2, 1), (3, 2), (3, 2)]
    with pytest.raises(ValueError):
        cluster_replication(0)


async def test_every_broker_registers_and_the_quorum_is_kept_on_disk(cluster: LocalCluster) -> None:
    """Three brokers answer on the bootstrap list; the listeners, controllers and cluster id
    are written once so that a node restarts into the same quorum."""
    assert await cluster_brokers(cluster.bootstrap) == {1, 2, 3}
    assert cluster.bootstrap.count(",") == 2
    props = (cluster.node(2).data_dir / "server.properties").read_text()
    voters = re.search(r"^controller\.quorum\.voters=(.*)$", props, re.M)
    assert voters is not None and voters.group(1).count("@") == 3
    assert "node.id=2" in props and "min.insync.replicas=2" in props
    assert "transaction.state.log.replication.factor=3" in props
    assert "offsets.topic.replication.factor=3" in props
    again = LocalCluster(3, data_dir=cluster.data_dir)  # what a restart of the whole cluster reads
    assert again.bootstrap == cluster.bootstrap and again.cluster_id == cluster.cluster_id
    assert again.nodes[0].voters == cluster.nodes[0].voters


async def test_an_acknowledged_write_survives_the_sigkill_of_its_leader(cluster: LocalCluster) -> None:
    """acks=all records written before and after the partition leader is SIGKILLed are all
    read back; the killed node restarts on its data and rejoins the in-sync replicas."""
    settings = settings_for(cluster.bootstrap)
    topic = f"{settings.topic_prefix}replicated"
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 3, topic_configs={"min.insync.replicas": "2"})])
    finally:
        await admin.close()

    async def leader_known() -> bool:
        parts = await partitions(settings, topic)
        return bool(parts) and parts[0]["leader"] >= 0 and len(parts[0]["isr"]) == 3

    await until(leader_known, 30, "a leader and three in-sync replicas")
    [part] = await partitions(settings, topic)
    assert sorted(part["replicas"]) == [1, 2, 3]
    leader = part["leader"]

    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(100):
            await producer.send(topic, f"before-{i}".encode(), key=b"k")
        await producer.flush()
        cluster.kill(leader)
        for i in range(100):
            await producer.send(topic, f"after-{i}".encode(), key=b"k")
        await asyncio.wait_for(producer.flush(), 60)
    finally:
        await producer.stop()
    values = [r.value for r in await read_topic(settings, topic, expect=200, timeout=60)]
    assert values == [f"before-{i}".encode() for i in range(100)] + [f"after-{i}".encode() for i in range(100)]
    [moved] = await partitions(settings, topic)
    assert moved["leader"] not in (leader, -1)

    async def fenced() -> bool:  # its session with the controller has expired
        live = await cluster_brokers(cluster.live_bootstrap)
        return bool(live) and leader not in live and \
            leader not in (await partitions(settings, topic))[0]["isr"]

    await until(fenced, 60, f"node {leader} fenced and out of the in-sync replicas")
    cluster.restart(leader)  # in this thread: the JVM's parent-death signal follows the forking thread

    async def rejoined() -> bool:
        return leader in (await partitions(settings, topic))[0]["isr"]

    await until(rejoined, 90, f"node {leader} back in the in-sync replicas")
    await asyncio.to_thread(cluster.wait_ready)


def test_anting_kafka_brokers_3_restarts_a_node_that_dies(tmp_path: Path) -> None:
    """`anting kafka --brokers 3` prints the bootstrap list; a SIGKILLed node is said and
    started again; SIGTERM stops every node."""
    port = consecutive_free_ports(3)
    data = tmp_path / f"cluster-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "anting-kafka.log"
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "anting"), "kafka", "--brokers", "3",
             "--port", str(port), "--data-dir", str(data)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_for(pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if re.search(pattern, text):
                return text
            assert proc.poll() is None, f"anting kafka exited ({proc.returncode}):\n{text[-3000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in:\n{log.read_text(errors='replace')[-3000:]}")

    pids: list[int] = []
    try:
        wait_for(r"3-node cluster ready", 150)
        text = log.read_text()
        assert f"127.0.0.1:{port},127.0.0.1:{port + 1},127.0.0.1:{port + 2}" in text
        assert "replication factor 3, min.insync.replicas 2" in text
        pids = [int((data / f"node-{i}" / "broker.pid").read_text()) for i in (1, 2, 3)]
        os.kill(pids[1], signal.SIGKILL)
        text = wait_for(r"restarted kafka-2 \(pid \d+\)", 30)
        assert f"kafka-2 (pid {pids[1]}) killed by SIGKILL; restarting in 1s" in text
        pids.append(int((data / "node-2" / "broker.pid").read_text()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3], \
            f"node pid {pid} outlived anting kafka"
