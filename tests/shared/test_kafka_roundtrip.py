"""The foundation against the real broker: publish/read back, the topic registry."""

from __future__ import annotations

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devtools.testing import read_topic
from shared.events import dump_event, parse_event
from shared.kafka import ensure_topics, leaders_settled, make_admin, make_consumer, make_producer
from shared.settings import AntingSettings
from shared.topics import ALL_TOPICS, ANNOUNCEMENTS

EVENT = {
    "specversion": "1.0",
    "id": "wmc-2023-opening",
    "source": "/press/shine.cn",
    "type": "conference.announcement",
    "subject": "world-metaverse-conference-2023",
    "time": "2023-07-05T09:00:00+08:00",
    "data": {
        "headline": "World Metaverse Conference begins in Jiading District",
        "kind": "conference_opened",
        "organizations": [{"name": "Beijing Institute of Technology", "role": "host"}],
        "figures": {"experts": 110},
    },
}


async def test_publish_and_read_back_committed(topics: AntingSettings) -> None:
    """A CloudEvent sent with aiokafka is read back intact by a read_committed consumer."""
    import orjson

    event = parse_event(orjson.dumps(EVENT))
    producer = make_producer(topics)
    await producer.start()
    try:
        meta = await producer.send_and_wait(
            topics.topic(ANNOUNCEMENTS), dump_event(event), key=event.key,
            headers=[("ce_id", event.id.encode())],
        )
    finally:
        await producer.stop()
    consumer = make_consumer(topics, topics.topic(ANNOUNCEMENTS), group_id=None)
    assert consumer._isolation_level == "read_committed"
    await consumer.stop()
    records = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert len(records) == 1
    rec = records[0]
    assert (rec.partition, rec.offset) == (meta.partition, meta.offset)
    assert rec.key == b"world-metaverse-conference-2023"
    assert parse_event(rec.value or b"") == event
    assert ("ce_id", b"wmc-2023-opening") in rec.headers


async def test_transaction_aborted_records_are_invisible(topics: AntingSettings) -> None:
    """aiokafka transactions work against this broker: aborted records never reach read_committed."""
    producer = make_producer(topics, transactional_id=f"{topics.topic_prefix}tx")
    await producer.start()
    topic = topics.topic(ANNOUNCEMENTS)
    try:
        async with producer.transaction():
            await producer.send(topic, b"committed-1", partition=0)
        await producer.begin_transaction()
        await producer.send(topic, b"aborted", partition=0)
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-2", partition=0)
    finally:
        await producer.stop()
    records = await read_topic(topics, topic, expect=2, timeout=20)
    assert [r.value for r in records] == [b"committed-1", b"committed-2"]


async def test_topics_created_with_registry_partitions_and_cleanup(settings: AntingSettings) -> None:
    """ensure_topics creates each topic with its partitions and cleanup policy, and is idempotent."""
    created = await ensure_topics(settings)
    assert sorted(created) == sorted(settings.topic(t) for t in ALL_TOPICS)
    assert await ensure_topics(settings) == []  # the second time changes nothing

    admin = make_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics([settings.topic(t) for t in ALL_TOPICS])
        partitions = {d["topic"]: len(d["partitions"]) for d in described}
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(t)) for t in ALL_TOPICS]
        )
    finally:
        await admin.close()
    cleanup: dict[str, str] = {}
    retention: dict[str, str] = {}
    for response in configs:
        for resource in response.resources:
            _err, _msg, _type, name, entries = resource[:5]
            for entry in entries:
                if entry[0] == "cleanup.policy":
                    cleanup[name] = entry[1]
                if entry[0] == "retention.ms":
                    retention[name] = entry[1]
    for t in ALL_TOPICS:
        assert partitions[settings.topic(t)] == t.partitions, t.name
        assert cleanup[settings.topic(t)] == t.cleanup, t.name
        if "retention.ms" in t.config:
            assert retention[settings.topic(t)] == t.config["retention.ms"], t.name


async def test_a_running_broker_has_settled_leaders(topics: AntingSettings) -> None:
    """On a broker that runs, every partition of every topic (internal ones too) has a
    leader: a transaction's abort waits for this, and here it does not wait."""
    producer = make_producer(topics)
    await producer.start()
    try:
        assert await leaders_settled(producer, 10.0) == []
    finally:
        await producer.stop()
