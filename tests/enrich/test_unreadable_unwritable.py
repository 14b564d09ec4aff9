"""Records enrich cannot read or cannot write go to dead-letters and the stream goes on
(the real broker): an event too large for enriched-events, more than the contract lets an
event name, both CloudEvents content modes, and a session held failing."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cloudevents.v1.http import CloudEvent
from cloudevents.v1.kafka import to_binary

from devtools.testing import produce, produce_raw_header, read_topic, set_topic_config
from services.enrich import pipeline
from services.enrich.catalog import Catalog
from services.enrich.settings import EnrichSettings
from shared import stage
from shared.deadletters import read_dead_letters
from shared.kafka import make_producer
from shared.lag import LagMonitor
from shared.metrics import CONSUMER_LAG, WORKER_RESTARTS
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS
from tests.enrich.helpers import Worker, event, load_catalog, publish, publish_raw

pytestmark = pytest.mark.kafka

# names of the shipped catalog: each resolves to a record of a few hundred bytes
RESOLVED = ["Anting Town Government", "SAIC Motor", "Tongji University", "China Simulation Federation"]


async def _set_max_message_bytes(settings: AntingSettings, topic: str, limit: int) -> None:
    await set_topic_config(settings, settings.topic(topic), {"max.message.bytes": str(limit)})


async def _letters(settings: AntingSettings, n: int, timeout: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    letters: list[Any] = []
    while time.monotonic() < deadline:
        letters = [dl for _, dl in await read_dead_letters(settings, limit=1000, idle_ms=500)]
        if len(letters) >= n:
            break
        await asyncio.sleep(0.5)
    return letters


async def test_an_event_too_large_for_enriched_events_is_dead_lettered_and_the_stream_goes_on(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """With enriched-events taking 20 KB, an event whose enriched form is larger goes to
    dead-letters saying why, and the next event (another partition) is enriched in seconds."""
    await _set_max_message_bytes(topics, ENRICHED_EVENTS, 20_000)
    await load_catalog(topics)
    big = event(1, RESOLVED * 25, kind="agreement")  # 100 mentions, each resolved: ~50 KB out
    small = [event(2 + i, ["SAIC Motor"]) for i in range(6)]  # several keys: other partitions
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        await publish(topics, [big])
        t0 = time.monotonic()
        await publish(topics, small)
        out = [orjson.loads(r.value) for r in await read_topic(
            topics, topics.topic(ENRICHED_EVENTS), expect=len(small), timeout=30)]
        assert time.monotonic() - t0 < 30
        assert sorted(e["id"] for e in out) == sorted(e["id"] for e in small)
        letters = await _letters(topics, 1)
        assert len(letters) == 1
        letter = letters[0]
        assert orjson.loads(letter.value)["id"] == big["id"]  # the original, not the enriched form
        assert letter.header("dlq.stage") == "enrich"
        assert letter.header("dlq.error.class") == "RecordTooLarge"
        assert "max.message.bytes" in (letter.header("dlq.error.message") or "")
        assert letter.header("dlq.original.topic") == topics.topic(AGREEMENTS)
        assert "enrich is stuck" not in worker.proc.log()
    finally:
        worker.stop()


async def test_more_than_an_event_may_name_written_straight_to_the_topic_is_dead_lettered(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """2,500 repeats of one organization (a ~110 KB event ingest refuses with 422) written
    by another producer: dead-lettered for data.organizations, and the stream goes on."""
    await load_catalog(topics)
    flood = event(1, ["SAIC Motor Corporation Limited"] * 2500, kind="agreement")
    after = [event(2 + i) for i in range(4)]
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        await publish(topics, [flood, *after])
        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=len(after), timeout=30)
        assert sorted(orjson.loads(r.value)["id"] for r in out) == sorted(e["id"] for e in after)
        letters = await _letters(topics, 1)
        assert [orjson.loads(dl.value)["id"] for dl in letters] == [flood["id"]]
        assert letters[0].header("dlq.error.class") == "ValidationError"
        # the field path and message ingest answers with, not pydantic's dump
        assert (letters[0].header("dlq.error.message") or "").startswith("data.organizations: ")
    finally:
        worker.stop()


async def test_both_cloudevents_content_modes_are_enriched_and_written_structured(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A record the CloudEvents SDK wrote in binary mode (ce_* headers, the value is the data)
    and one in structured mode are both enriched, and both come out in structured mode."""
    await load_catalog(topics)
    sdk_event = CloudEvent({
        "type": "agreement.signed", "source": "/press/sdk", "id": "sdk-binary-1",
        "subject": "wmc-2", "time": "2024-05-01T10:00:00Z", "datacontenttype": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }, {"title": "SAIC signs with Anting Town", "organizations": [{"name": "SAIC Motor"}]})
    message = to_binary(sdk_event)
    assert "ce_id" in message.headers and not message.value.startswith(b'{"specversion')
    producer = make_producer(topics)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.topic(AGREEMENTS), value=message.value,
            key=message.key.encode() if isinstance(message.key, str) else message.key,
            headers=list(message.headers.items()))
    finally:
        await producer.stop()
    await publish(topics, [event(7, ["Tongji University"])])
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=2, timeout=30)
        by_id = {orjson.loads(r.value)["id"]: r for r in out}
        assert set(by_id) == {"sdk-binary-1", "ev-000007"}
        record = by_id["sdk-binary-1"]
        doc = orjson.loads(record.value)
        assert doc["source"] == "/press/sdk" and doc["subject"] == "wmc-2"
        assert doc["time"] == "2024-05-01T10:00:00Z"
        assert doc["traceparent"].startswith("00-0af7651916cd43dd")
        assert doc["data"]["title"] == "SAIC signs with Anting Town"
        assert doc["data"]["enrichment"]["resolved"] == ["saic-motor"]
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        assert not await read_dead_letters(topics, limit=10, idle_ms=300)
    finally:
        worker.stop()


async def test_lag_rises_while_enrich_is_held_failing(
    topics: AntingSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A session that fails on every batch commits nothing: anting_consumer_lag (end minus
    committed) climbs with every event published, the restarts are counted, and the log
    says enrich is stuck at which offsets."""
    settings = EnrichSettings(**topics.model_dump(), group=f"held-{topics.topic_prefix.rstrip('.')}",
                              batch_wait_ms=50)

    async def fail(self: Any, *args: Any) -> Any:
        raise RuntimeError("held failing by the test")

    monkeypatch.setattr(pipeline.Enricher, "handle", fail)
    catalog = Catalog(settings)
    worker = pipeline.Worker(settings, catalog)
    await catalog.start()
    stop = asyncio.Event()
    restarts = WORKER_RESTARTS.labels("enrich")
    before = restarts._value.get()
    caplog.set_level(logging.ERROR, logger="shared.stage")

    def lag() -> float:
        return sum(CONSUMER_LAG.labels(settings.group, settings.topic(t), str(p))._value.get()
                   for t in (ANNOUNCEMENTS, AGREEMENTS) for p in range(t.partitions))

    monitor = LagMonitor(settings, {settings.group: worker.inputs}, interval=0.5)
    task = asyncio.create_task(worker.run(stop))
    try:
        async with monitor:
            await publish(settings, [event(i) for i in range(10)])
            seen = []
            for n in (10, 30):
                if n == 30:
                    await publish_raw(settings, settings.topic(ANNOUNCEMENTS),
                                      [orjson.dumps(event(100 + i)) for i in range(20)])
                for _ in range(100):  # up to 30 s
                    if lag() >= n:
                        break
                    await asyncio.sleep(0.3)
                seen.append(lag())
            assert seen == [10, 30]
            for _ in range(100):
                if restarts._value.get() - before >= pipeline.STUCK_AFTER:
                    break
                await asyncio.sleep(0.3)
        assert restarts._value.get() - before >= pipeline.STUCK_AFTER
        stuck = [r.getMessage() for r in caplog.records if "enrich is stuck" in r.getMessage()]
        assert stuck and settings.topic(ANNOUNCEMENTS) in stuck[-1] and "@0" in stuck[-1]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await catalog.stop()


async def test_a_session_failing_before_it_starts_closes_its_consumer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose set-up fails (the topic limits unreadable while a broker is away)
    closes the consumer it had made: none is left for asyncio to report as unclosed."""
    settings = EnrichSettings(kafka={"bootstrap_servers": "127.0.0.1:1"}, group="setup-fails")
    made: list[Any] = []

    def consumer(*args: Any, **kwargs: Any) -> Any:
        made.append(pipeline_make_consumer(*args, **kwargs))
        return made[-1]

    async def unreadable(self: Any) -> None:
        raise RuntimeError("no broker answered the describe")

    pipeline_make_consumer = stage.make_consumer
    monkeypatch.setattr(stage, "make_consumer", consumer)
    monkeypatch.setattr(stage.StageRunner, "read_limits", unreadable)
    worker = pipeline.Worker(settings, Catalog(settings))
    with pytest.raises(RuntimeError, match="no broker answered"):
        await worker.runner._session(asyncio.Event())
    assert len(made) == 1 and made[0]._closed
    assert worker.runner.consumer is None and not worker.running


async def test_a_record_whose_header_name_is_not_utf8_is_dead_lettered_and_the_partition_goes_on(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A record whose header name is not UTF-8 (as kcat writes one), with events after it
    on the same partition: it goes to dead-letters saying so, the events after it are
    enriched within seconds, and the session never restarts."""
    await load_catalog(topics)
    odd = event(1, ["SAIC Motor"], kind="agreement")
    partition = await produce_raw_header(
        topics, topics.topic(AGREEMENTS), orjson.dumps(odd), key=b"same-key", header_name=b"x-\xff\xfe")
    after = [event(2 + i, ["Tongji University"], kind="agreement") for i in range(5)]
    await produce(topics, topics.topic(AGREEMENTS), [orjson.dumps(e) for e in after],
                  keys=[b"same-key"] * len(after))  # the same partition, behind the odd record
    worker = Worker(topics, tmp_path, "w").start()
    try:
        await worker.wait_ready()
        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=len(after), timeout=30)
        assert [orjson.loads(r.value)["id"] for r in out] == [e["id"] for e in after]
        letters = await _letters(topics, 1)
        assert len(letters) == 1
        letter = letters[0]
        assert orjson.loads(letter.value)["id"] == odd["id"]
        assert letter.header("dlq.original.partition") == str(partition)
        assert letter.header("dlq.original.offset") == "0"
        assert letter.header("dlq.error.class") == "NotACloudEvent"
        assert "header name is not UTF-8" in (letter.header("dlq.error.message") or "")
        # the name as Java's client reads it: each byte that is not UTF-8 is U+FFFD
        assert ("x-\ufffd\ufffd", b"v") in letter.headers
        assert "session failed" not in worker.proc.log()
    finally:
        worker.stop()


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_a_write_refused_after_the_limit_was_lowered_at_run_time_loses_nothing(
    topics: AntingSettings, tmp_path: Path, guarantee: str
) -> None:
    """enriched-events' max.message.bytes lowered while enrich runs (it read 1 MB at start):
    the event whose enriched form is over the new limit goes to dead-letters with the
    reason; the small event beside it on the same output partition, and every event after
    the limit is restored, are enriched once (no OutOfOrderSequenceNumber, no loss)."""
    await load_catalog(topics)
    worker = Worker(topics, tmp_path, "w", ANTING_ENRICH_GUARANTEE=guarantee).start()
    try:
        await worker.wait_ready()
        await publish(topics, [event(100, ["SAIC Motor"])])  # the session is running
        await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=1, timeout=30)
        await _set_max_message_bytes(topics, ENRICHED_EVENTS, 20_000)
        big = {**event(1, RESOLVED * 25, kind="agreement"), "id": "big"}  # ~50 KB out
        neighbour = {**event(2, ["SAIC Motor"]), "id": "neighbour"}  # a few hundred bytes
        # one key: the same output partition, so one producer batch would hold both
        await produce(topics, topics.topic(AGREEMENTS), [orjson.dumps(big)], keys=[b"k"])
        await produce(topics, topics.topic(ANNOUNCEMENTS), [orjson.dumps(neighbour)], keys=[b"k"])
        letters = await _letters(topics, 1)
        await _set_max_message_bytes(topics, ENRICHED_EVENTS, 1_000_000)
        later = [{**event(10 + i, ["Tongji University"]), "id": f"later-{i}"} for i in range(5)]
        await produce(topics, topics.topic(ANNOUNCEMENTS), [orjson.dumps(e) for e in later],
                      keys=[b"k"] * len(later))
        want = ["ev-000100", "neighbour", *(e["id"] for e in later)]
        out = await read_topic(topics, topics.topic(ENRICHED_EVENTS), expect=len(want), timeout=60)
        ids = [orjson.loads(r.value)["id"] for r in out]
        if guarantee == "exactly_once":
            assert sorted(ids) == sorted(want)
        else:
            assert set(ids) == set(want)
        assert [orjson.loads(dl.value)["id"] for dl in letters] == ["big"]
        assert letters[0].header("dlq.error.class") in ("RecordTooLarge", "MessageSizeTooLargeError")
        assert letters[0].header("dlq.original.topic") == topics.topic(AGREEMENTS)
        metrics = await worker.metrics()
        assert 'anting_enrich_events_total{outcome="enriched",type="agreement.signed"}' not in metrics
        assert "enrich is stuck" not in worker.proc.log()
    finally:
        worker.stop()
