"""Topics follow the cluster: replication min(3, brokers), two in-sync replicas with three,
the internal offsets and transaction-state topics likewise, and the changelog insights'
faust app creates itself; ``ensure_topics`` fixes a topic's low ``min.insync.replicas``
and refuses, naming it, one whose partitions or replication differ from the contract."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.structs import OffsetAndMetadata

from devtools.localkafka import LocalCluster, free_port
from devtools.testing import ServiceProcess, settings_for
from shared.kafka import (
    TopicMismatchError,
    contract_replication,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
)
from shared.settings import AntingSettings
from shared.topics import ALL_TOPICS, ANNOUNCEMENTS, DEAD_LETTERS, ENRICHED_EVENTS, INSIGHTS_FACTS

pytestmark = pytest.mark.kafka


async def describe(settings: AntingSettings, names: list[str]) -> dict[str, dict[str, Any]]:
    """name → {"partitions": n, "rf": smallest replica count, "config": {name: value}}."""
    admin = make_admin(settings)
    await admin.start()
    try:
        out: dict[str, dict[str, Any]] = {}
        for d in await admin.describe_topics(names):
            out[d["topic"]] = {"partitions": len(d["partitions"]),
                               "rf": min(len(p["replicas"]) for p in d["partitions"])}
        for response in await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n, None) for n in names]):
            for res in response.resources:
                out[res[3]]["config"] = {e[0]: e[1] for e in res[4]}
        return out
    finally:
        await admin.close()


async def create_raw(settings: AntingSettings, name: str, partitions: int, rf: int,
                     config: dict[str, str]) -> None:
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, rf, topic_configs=config)])
    finally:
        await admin.close()


def test_contract_replication() -> None:
    """RF = min(3, brokers); min.insync.replicas 2 only with three replicas."""
    assert [contract_replication(n) for n in (1, 2, 3, 4)] == [(1, None), (2, None), (3, 2), (3, 2)]


async def test_every_topic_is_replicated_three_ways_with_two_in_sync(cluster: LocalCluster) -> None:
    """On three brokers every registered topic gets RF 3 and min.insync.replicas 2, keeps
    its partitions and cleanup policy; a second call creates and changes nothing."""
    settings = settings_for(cluster.bootstrap)
    created = await ensure_topics(settings)
    assert created == [settings.topic(t) for t in ALL_TOPICS]
    seen = await describe(settings, created)
    for t in ALL_TOPICS:
        d = seen[settings.topic(t)]
        assert (d["partitions"], d["rf"]) == (t.partitions, 3), t.name
        assert d["config"]["min.insync.replicas"] == "2", t.name
        assert d["config"]["cleanup.policy"] == t.cleanup, t.name
    assert await ensure_topics(settings) == []


async def test_internal_topics_are_replicated_like_the_contracts(cluster: LocalCluster) -> None:
    """A transaction and a group commit make the brokers create __transaction_state and
    __consumer_offsets: both have three replicas, the transaction state two in sync."""
    settings = settings_for(cluster.bootstrap)
    await ensure_topics(settings, [ANNOUNCEMENTS])
    topic = settings.topic(ANNOUNCEMENTS)
    producer = make_producer(settings, transactional_id=f"{settings.topic_prefix}txn")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"x", key=b"k")
    finally:
        await producer.stop()
    consumer = make_consumer(settings, topic, group_id=f"{settings.topic_prefix}group")
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=2000)
        await consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, "")})
    finally:
        await consumer.stop()
    seen = await describe(settings, ["__transaction_state", "__consumer_offsets"])
    assert seen["__transaction_state"]["rf"] == 3
    assert seen["__transaction_state"]["config"]["min.insync.replicas"] == "2"
    assert seen["__consumer_offsets"]["rf"] == 3


async def test_a_low_min_insync_is_fixed_and_other_overrides_kept(cluster: LocalCluster) -> None:
    """A topic of three replicas requiring only one in sync gets min.insync.replicas 2;
    its retention override stays."""
    settings = settings_for(cluster.bootstrap)
    name = settings.topic(DEAD_LETTERS)
    await create_raw(settings, name, DEAD_LETTERS.partitions, 3,
                     {"min.insync.replicas": "1", "retention.ms": "123456789"})
    assert await ensure_topics(settings, [DEAD_LETTERS]) == []
    config = (await describe(settings, [name]))[name]["config"]
    assert config["min.insync.replicas"] == "2"
    assert config["retention.ms"] == "123456789"


@pytest.mark.parametrize(("partitions", "rf", "said"), [
    (5, 3, "5 partitions, the contract has 3"),
    (3, 1, "replication factor 1, wanted 3"),
], ids=["partitions", "replication"])
async def test_a_topic_unlike_the_contract_is_refused_by_name(
    cluster: LocalCluster, partitions: int, rf: int, said: str,
) -> None:
    """enriched-events with other partitions (keys would land elsewhere) or fewer replicas
    than the cluster wants: ensure_topics raises, naming the topic and what differs."""
    settings = settings_for(cluster.bootstrap)
    name = settings.topic(ENRICHED_EVENTS)
    await create_raw(settings, name, partitions, rf, ENRICHED_EVENTS.topic_config())
    with pytest.raises(TopicMismatchError) as caught:
        await ensure_topics(settings, [ANNOUNCEMENTS, ENRICHED_EVENTS])
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(f"{name}: {said}"), caught.value.problems
    assert name in str(caught.value) and said in str(caught.value)


async def test_one_broker_keeps_replication_one(settings: AntingSettings) -> None:
    """On the single test broker topics get RF 1 and no min.insync.replicas override, as
    before the cluster existed."""
    await ensure_topics(settings, [ANNOUNCEMENTS])
    name = settings.topic(ANNOUNCEMENTS)
    d = (await describe(settings, [name]))[name]
    assert (d["partitions"], d["rf"]) == (3, 1)
    assert d["config"]["min.insync.replicas"] == "1"


async def test_insights_topics_follow_the_cluster_faust_s_own_too(cluster: LocalCluster, tmp_path: Path) -> None:
    """insights with no replication configured: insights-facts and the table changelog faust
    creates itself (a non-default group's) are replicated three ways on three brokers."""
    settings = settings_for(cluster.bootstrap)
    group = "insights-rf"
    service = ServiceProcess("insights", settings, tmp_path / "insights.log",
                             ANTING_INSIGHTS_PORT=str(free_port()), ANTING_INSIGHTS_GROUP=group)
    changelog = f"{settings.topic_prefix}{group}-entities-changelog"
    facts = settings.topic(INSIGHTS_FACTS)
    service.start()
    try:
        admin = make_admin(settings)
        await admin.start()
        try:
            deadline = time.monotonic() + 90
            while not {changelog, facts} <= set(await admin.list_topics()):
                assert service.proc is not None and service.proc.poll() is None, service.log()[-3000:]
                assert time.monotonic() < deadline, f"no {changelog} in 90 s:\n{service.log()[-3000:]}"
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        topics = await describe(settings, [changelog, facts])
        assert topics[changelog]["rf"] == 3 and topics[facts]["rf"] == 3, topics
        assert topics[facts]["config"].get("min.insync.replicas") == "2"
    finally:
        service.terminate(20)
