"""Probe: does faust-streaming's ``processing_guarantee="exactly_once"`` survive SIGKILL?

Not a test (pytest does not collect it): the evidence behind the choice of the
aiokafka transactional loop, recorded in services/enrich/README.md. Run it as

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python -m tests.enrich.faust_eos_probe [events] [kills]

It fills a 3-partition input topic, runs a minimal faust exactly-once agent
(forward each record to the output topic) as a child process, SIGKILLs it at
random moments, restarts it, and counts what a read_committed reader sees.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

RUN = os.environ.get("PROBE_RUN")


def worker() -> None:
    import faust

    app = faust.App(
        f"probe-{RUN}", broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
        processing_guarantee="exactly_once", store="memory://", web_enabled=False,
        topic_partitions=3, broker_commit_every=100,
        datadir=os.path.join(tempfile.gettempdir(), f"faust-probe-{RUN}"),
    )
    src = app.topic(f"probe-{RUN}-in", value_serializer="raw", key_serializer="raw")
    dst = app.topic(f"probe-{RUN}-out", value_serializer="raw", key_serializer="raw")

    @app.agent(src)
    async def forward(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            await dst.send(key=key, value=value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()


async def feed(settings: Any, topic: str, total: int, rate: float) -> None:
    from shared.kafka import make_producer

    producer = make_producer(settings)
    await producer.start()
    t0 = time.monotonic()
    for i in range(total):
        await producer.send(topic, key=b"k%d" % i, value=b"%d" % i)
        if i % 50 == 0 and (ahead := t0 + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(ahead)
    await producer.flush()
    await producer.stop()


async def out_end(settings: Any, topic: str) -> int:
    from aiokafka import TopicPartition

    from shared.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def drive(total: int, kills: int) -> None:
    from aiokafka.admin import NewTopic

    from devtools.testing import read_topic, settings_for
    from shared.kafka import make_admin

    run = uuid.uuid4().hex[:6]
    settings = settings_for(os.environ["KAFKA_BOOTSTRAP_SERVERS"], "")
    admin = make_admin(settings)
    await admin.start()
    await admin.create_topics([NewTopic(f"probe-{run}-{t}", 3, 1) for t in ("in", "out")])
    await admin.close()
    env = {**os.environ, "PROBE_RUN": run}
    rng = random.Random(1)
    log = open(os.path.join(tempfile.gettempdir(), f"faust-probe-{run}.log"), "ab")  # noqa: ASYNC230
    cmd = [sys.executable, "-m", "tests.enrich.faust_eos_probe", "--worker"]
    t0 = time.monotonic()
    feeding = asyncio.create_task(feed(settings, f"probe-{run}-in", total, total / (kills * 6.0)))
    for _ in range(kills):
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        # kill only once this worker is producing: mid-stream, mid-transaction
        before = await out_end(settings, f"probe-{run}-out")
        for _ in range(300):
            await asyncio.sleep(0.1)
            if await out_end(settings, f"probe-{run}-out") > before:
                break
        await asyncio.sleep(rng.uniform(0.2, 2.0))
        p.kill()
        p.wait()
    await feeding
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    try:
        out = await read_topic(settings, f"probe-{run}-out", expect=total, timeout=120)
    finally:
        p.terminate()
        p.wait(30)
    counts = Counter(r.value for r in out)
    lost = total - len(counts)
    dups = sum(n - 1 for n in counts.values() if n > 1)
    print(f"run {run}: {total} events, {kills} SIGKILLs, {time.monotonic() - t0:.0f}s: "
          f"seen {len(out)}, distinct {len(counts)}, lost {lost}, duplicated {dups} "
          f"(log in {tempfile.gettempdir()})")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        args = [int(a) for a in sys.argv[1:]]
        asyncio.run(drive(*(args or [2000, 3])))
