"""Broker failure: with the broker gone, ingest answers 503 within 5 s (never hangs) and
recovers by itself once the broker is back, without a restart of ingest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.localkafka import LocalKafka, free_port
from devtools.testing import create_topics, read_topic, settings_for
from services.ingest.main import make_publisher
from shared.topics import ANNOUNCEMENTS
from tests.ingest.conftest import announcement, ingest_settings, make_client


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own (port and data dir kept so it can be restarted)."""
    broker = LocalKafka(port=free_port(), data_dir=tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_503_within_5s_while_down_then_recovers(own_broker: LocalKafka, tmp_path: Path) -> None:
    """Kill the broker: POST → 503 problem+json within 5 s and /readyz → 503; start it again on
    the same port and data: POST → 202 with the same ingest instance."""
    base = settings_for(own_broker.bootstrap)
    await create_topics(base)
    settings = ingest_settings(base)
    async with make_publisher(settings) as publisher, \
            await make_client(settings, publisher) as client:
        assert (await client.post("/v1/events", json=announcement("before"))).status_code == 202

        await asyncio.to_thread(own_broker.kill)
        for i in range(2):  # the first failure, and a request on the rebuilt producer
            t0 = time.monotonic()
            resp = await asyncio.wait_for(
                client.post("/v1/events", json=announcement(f"down-{i}")), 5.0)
            assert resp.status_code == 503, resp.text
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["status"] == 503 and "broker" in resp.json()["detail"]
            print(f"503 after {time.monotonic() - t0:.2f}s")
        ready = await asyncio.wait_for(client.get("/readyz"), 5.0)
        assert ready.status_code == 503

        restarted = LocalKafka(port=own_broker.port, data_dir=own_broker.data_dir)
        await asyncio.to_thread(restarted.start)
        own_broker.proc = restarted.proc  # so the fixture stops the running one
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline:
            status = (await client.post("/v1/events", json=announcement("after"))).status_code
            if status == 202:
                break
            assert status == 503
            await asyncio.sleep(0.5)
        assert status == 202, "ingest did not recover within 60 s of the broker's return"
        assert (await client.get("/readyz")).status_code == 200

    records = await read_topic(base, base.topic(ANNOUNCEMENTS), idle=2.0, timeout=30)
    ids = {httpx.Response(200, content=r.value).json()["id"] for r in records}
    assert {"ann-before", "ann-after"} <= ids


async def test_deliveries_abandoned_by_a_503_are_settled_quietly() -> None:
    """A request that answered 503 leaves delivery futures the producer fails later; their
    errors are retrieved, so asyncio logs no "Future exception was never retrieved"."""
    import gc

    from services.ingest import publisher

    loop = asyncio.get_running_loop()
    seen: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(str(ctx.get("message"))))
    try:
        settled, unsettled = loop.create_future(), loop.create_future()
        publisher._settle_later([settled])
        for fut in (settled, unsettled):
            fut.set_exception(ConnectionError("broker gone"))
        await asyncio.sleep(0)  # the done callbacks run
        del settled, fut
        gc.collect()
        assert seen == []
        del unsettled  # the control: an unretrieved failure is reported
        gc.collect()
        assert seen == ["Future exception was never retrieved"]
    finally:
        loop.set_exception_handler(previous)


async def test_an_abandoned_producer_leaves_no_flush_pending(own_broker: LocalKafka) -> None:
    """A producer whose stop() timed out with a batch undelivered (its broker killed) and
    that was then abandoned leaves no task still flushing it: such a task, collected while
    pending, is logged by asyncio as an error ("Task was destroyed but it is pending!")."""
    from services.ingest import publisher
    from shared.kafka import abandon_producer, make_producer

    base = settings_for(own_broker.bootstrap)
    await create_topics(base)
    producer = make_producer(base, request_timeout_ms=30000)
    await producer.start()
    await asyncio.to_thread(own_broker.kill)
    publisher._settle_later([await producer.send(base.topic(ANNOUNCEMENTS), b"{}", key=b"k")])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(producer.stop(), 1.0)
    await abandon_producer(producer)
    await asyncio.sleep(0.1)
    flushing = [t for t in asyncio.all_tasks() if not t.done()
                and getattr(t.get_coro(), "__qualname__", "") == "MessageAccumulator.close"]
    assert flushing == []
