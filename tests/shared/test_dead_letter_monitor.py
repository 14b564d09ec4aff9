"""Every dead letter reaches Prometheus, whoever wrote it: notify's DeadLetterMonitor reads
dead-letters itself, so a bad line of `anting publish` (a process with no /metrics) and
a letter written with any producer are counted too."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, env_for, wait_until
from shared.deadletters import DeadLetter, dead_letter
from shared.dlq_monitor import DeadLetterMonitor, labels_of
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS, DEAD_LETTERS

ANTING = str(Path(sys.executable).parent / "anting")




@pytest.mark.kafka
async def test_monitor_counts_every_writer_and_goes_on_where_it_left_off(topics: AntingSettings) -> None:
    """Letters from a stage, from kcat (no dlq headers) and in an aborted transaction (not
    counted) are read from the log start; after its consumer is lost, the monitor goes on
    from where it was, counting nothing twice."""
    dlq = topics.topic(DEAD_LETTERS)
    ann = topics.topic(ANNOUNCEMENTS)
    old = int(time.time() * 1000) - 3_600_000
    producer = make_producer(topics)
    await producer.start()
    try:
        letter = dead_letter(stage="enrich", error="bad", key=b"k", value=b"v", topic=ann, partition=0, offset=1)
        await producer.send_and_wait(dlq, letter.value, key=letter.key, headers=letter.headers, timestamp_ms=old)
        await producer.send_and_wait(dlq, b"written by kcat")
    finally:
        await producer.stop()
    aborted = make_producer(topics, transactional_id=f"{topics.topic_prefix}aborted")
    await aborted.start()
    try:
        await aborted.begin_transaction()
        await aborted.send(dlq, b"never", headers=[("dlq.stage", b"enrich"), ("dlq.original.topic", ann.encode())])
        await aborted.abort_transaction()
    finally:
        await aborted.stop()

    monitor = DeadLetterMonitor(topics, poll_ms=200, retry=0.2)
    async with monitor:
        await wait_until(lambda: sum(monitor.counts.values()) >= 2, what="the two letters")
        await asyncio.sleep(1.0)  # nothing more comes: the aborted one is no letter
        assert monitor.counts == {("enrich", ann): 1, ("", ""): 1}
        assert abs(monitor.newest[("enrich", ann)] - old / 1000) < 1
        assert monitor.newest[("", "")] > time.time() - 60
        await monitor.close()  # as a failed round does: the next round makes a new consumer
        await _write_one(topics, dead_letter(stage="notify", error="x", key=None, value=b"w", topic="t2"))
        await wait_until(lambda: ("notify", "t2") in monitor.counts, what="the letter after reconnecting")
        await asyncio.sleep(0.5)
    assert monitor.counts == {("enrich", ann): 1, ("", ""): 1, ("notify", "t2"): 1}


async def _write_one(settings: AntingSettings, letter: DeadLetter) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic(DEAD_LETTERS), letter.value,
                                     key=letter.key, headers=letter.headers)
    finally:
        await producer.stop()


def test_labels_of_reads_the_dlq_headers() -> None:
    """Stage and original topic come from the last dlq.stage / dlq.original.topic; absent is ""."""
    assert labels_of([("dlq.stage", b"ingest"), ("dlq.original.topic", b"")]) == ("ingest", "")
    assert labels_of([("dlq.stage", None), ("x", b"y")]) == ("", "")
    assert labels_of([("dlq.stage", b"a"), ("dlq.stage", b"b" * 500)]) == ("b" * 200, "")


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    return {(s.name, s.labels.get("stage", ""), s.labels.get("topic", "")): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.kafka
async def test_a_bad_line_of_anting_publish_reaches_notify_metrics(topics: AntingSettings, tmp_path: Path) -> None:
    """A bad line `anting publish` dead-letters shows in notify's /metrics as
    anting_dead_letters_in_topic{stage="ingest"} with a fresh last-timestamp, what alert
    AntingDeadLetters reads."""
    port = free_port()
    notify = ServiceProcess("notify", topics, tmp_path / "notify.log", ANTING_NOTIFY_PORT=str(port),
                            ANTING_NOTIFY_GROUP=f"{topics.topic_prefix}notify").start()
    try:
        (tmp_path / "events.ndjson").write_bytes(orjson.dumps({
            "specversion": "1.0", "id": "ok", "source": "/t", "type": "conference.announcement",
            "data": {"headline": "Forum opens", "kind": "forum"}}) + b"\n{not json\n")
        t0 = time.time()
        published = await asyncio.to_thread(
            subprocess.run, [ANTING, "publish", "events.ndjson"], env=env_for(topics), cwd=tmp_path,
            capture_output=True, text=True, timeout=90)
        assert published.returncode == 1, published.stdout + published.stderr  # some line rejected

        seen: dict[tuple[str, str, str], float] = {}
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    seen = _samples((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
                except httpx.HTTPError:
                    seen = {}
                if seen.get(("anting_dead_letters_in_topic", "ingest", "")) == 1:
                    break
                await asyncio.sleep(0.5)
        assert seen.get(("anting_dead_letters_in_topic", "ingest", "")) == 1, notify.log()[-3000:]
        written = seen[("anting_dead_letters_last_timestamp_seconds", "ingest", "")]
        assert t0 - 5 <= written <= time.time()
        # the per-writer counter cannot see it: `anting publish` has no /metrics to scrape
        assert ("anting_dead_letters_total", "ingest", "") not in seen
    finally:
        assert notify.terminate() == 0, notify.log()[-3000:]
