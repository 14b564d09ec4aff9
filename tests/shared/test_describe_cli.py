"""`anting topics describe` and `anting groups` against the real broker: what
kafka-topics.sh and kafka-consumer-groups.sh --describe print, from our own client; a
broker that refuses or is absent, or a name it does not have, is an error naming the
broker (exit 2), never an empty listing."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from devtools.localkafka import free_port
from devtools.testing import env_for, settings_for
from shared.kafka import make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS, NOTIFICATIONS

ANTING = str(Path(sys.executable).parent / "anting")


async def _cli(settings: AntingSettings, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [ANTING, *args], env=env_for(settings, COLUMNS="250"),
        capture_output=True, text=True, timeout=90,
    )


def _row(out: str, *cells: object) -> bool:
    """Whether a line of ``out`` holds ``cells`` in order, as whole columns."""
    pattern = r"\s+".join(re.escape(str(c)) for c in cells)
    return any(re.search(rf"(^|\s){pattern}(\s|$)", line) for line in out.splitlines())


async def test_topics_describe_shows_partitions_replication_and_overrides(topics: AntingSettings) -> None:
    """A topic's partition count, replication factor, its own settings (not the broker's
    defaults) and each partition's leader, replicas and ISR; the broker is named."""
    name = topics.topic(NOTIFICATIONS)
    result = await _cli(topics, "topics", "describe", name)
    assert result.returncode == 0, result.stderr
    assert topics.kafka.bootstrap_servers in result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("Topic:"))
    assert f"Topic: {name}  PartitionCount: 3  ReplicationFactor: 1" in header
    configs = dict(kv.split("=", 1) for kv in header.split("Configs: ")[1].split(","))
    assert configs["retention.ms"] == NOTIFICATIONS.config["retention.ms"]
    assert configs["cleanup.policy"] == "delete"
    assert "compression.type" not in configs  # the broker's default, not the topic's own
    for partition in range(3):
        assert _row(result.stdout, partition, 1, 1, 1), result.stdout


async def test_topics_describe_lists_every_topic_of_the_prefix(topics: AntingSettings) -> None:
    """Without names, every topic is described (Kafka's internal ones only with --internal)."""
    result = await _cli(topics, "topics", "describe")
    assert result.returncode == 0, result.stderr
    assert f"Topic: {topics.topic(ANNOUNCEMENTS)}  PartitionCount:" in result.stdout
    assert "Topic: __consumer_offsets " not in result.stdout


async def test_groups_describe_shows_offsets_lag_and_members(topics: AntingSettings) -> None:
    """Committed offset, end offset and lag per partition, and the member a running
    consumer of the group is, with its client id."""
    topic = topics.topic(ANNOUNCEMENTS)
    group = f"{topics.topic_prefix}describe"
    producer = make_producer(topics)
    await producer.start()
    try:
        for i in range(7):
            await producer.send(topic, b"%d" % i, partition=0)
        for i in range(2):
            await producer.send(topic, b"%d" % i, partition=1)
        await producer.flush()
    finally:
        await producer.stop()
    committer = make_consumer(topics, group_id=group)
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, 0)])
        await committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "")})
    finally:
        await committer.stop()

    result = await _cli(topics, "groups", "describe", group)
    assert result.returncode == 0, result.stderr
    assert topics.kafka.bootstrap_servers in result.stderr
    assert f"Group: {group}  State: Empty" in result.stdout
    assert _row(result.stdout, topic, 0, 4, 7, 3, "-", "-", "-"), result.stdout

    listed = await _cli(topics, "groups", "list")
    # a group known only by its commits has no protocol type yet
    assert listed.returncode == 0 and _row(listed.stdout, group, "-"), listed.stdout

    member = make_consumer(topics, group_id=group, client_id="describe-me")
    member.subscribe([topic])
    await member.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while not member.assignment():
            assert asyncio.get_running_loop().time() < deadline, "no assignment"
            await member.getmany(timeout_ms=200)
        await member.commit({TopicPartition(topic, 1): OffsetAndMetadata(1, "")})
        result = await _cli(topics, "groups", "describe", group)
    finally:
        await member.stop()
    assert result.returncode == 0, result.stderr
    assert f"Group: {group}  State: Stable" in result.stdout and "Members: 1" in result.stdout
    rows = [line for line in result.stdout.splitlines() if f" {topic} " in f" {line} "]
    assert len(rows) == 3 and all("describe-me" in line for line in rows), result.stdout
    assert _row(result.stdout, topic, 1, 1, 2, 1), result.stdout


async def test_a_missing_group_or_topic_is_an_error(topics: AntingSettings) -> None:
    """A name the broker does not have is `error: no such ...` naming the broker, exit 2."""
    for args, what in ((("groups", "describe", "nobody-here"), "no such consumer group: nobody-here"),
                       (("topics", "describe", f"{topics.topic_prefix}nothing"), "no such topic")):
        result = await _cli(topics, *args)
        assert result.returncode == 2, result.stdout
        assert what in result.stderr and topics.kafka.bootstrap_servers in result.stderr
        assert result.stdout == ""


async def test_no_broker_is_an_error_naming_it() -> None:
    """Nothing listening at the bootstrap address: `error:` with the address, exit 2,
    no listing (never an empty one)."""
    settings = settings_for(f"127.0.0.1:{free_port()}")
    for args in (("topics", "describe"), ("groups", "describe"), ("groups", "list")):
        result = await _cli(settings, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "error:" in result.stderr and settings.kafka.bootstrap_servers in result.stderr
        assert result.stdout == ""
