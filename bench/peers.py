"""Same-run peers of enrich: other stream runtimes doing the same consume → enrich →
produce work on the same input, with Anting's own pure enrichment function
(``services.enrich.enrich.enrich_bytes`` over the shipped catalog), so that only the
runtime differs.

- ``peer.quix.eos.events_per_s``: a Quix Streams application, exactly-once, committing
  every 100 ms like enrich (``ANTING_ENRICH_COMMIT_INTERVAL_MS``) and Kafka Streams under
  exactly-once, its defaults otherwise. Not at Quix's default interval, 5 s: Quix keeps
  its input's timestamps on its output, so its rate can only be read from when the output
  becomes visible to a ``read_committed`` reader, and with 5 s transactions the whole
  input of a run becomes visible in one or two commits (a first bench gave 291,000/s:
  a measure of the commit, not of the processing). quixstreams pins pydantic below 2.14 (Anting's pin), so it runs in
  a virtualenv of its own, built on first use from ``bench/requirements-quix.txt``
  under ``bench/scratch/``.
- ``peer.kafka_copier.eos.records_per_s``: Kafka's own ``TransactionalMessageCopier``
  (kafka-tools jar; ``--group-mode --use-group-metadata``: KIP-447), copying without
  a transform: the ceiling of a transactional copy on this broker.
- ``peer.faust.alo.events_per_s``: a faust-streaming agent, at least once (its
  exactly-once does not survive SIGKILL: services/enrich/README.md).

The peers' workers are in ``bench/peer_workers.py`` (``python -m bench.peer_workers quix|faust``
with ``PEER_*`` env).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench import payload
from bench.harness import REPO_ROOT, SCRATCH, Results, Sizes
from bench.kafkaio import create, fill, fresh_settings, watch
from bench.procs import cpu_seconds
from bench.stages import split_by_topic, steady_rate
from shared.topics import ANNOUNCEMENTS, ENRICHED_EVENTS

QUIX_VENV = SCRATCH / "venv-quix"
QUIX_REQUIREMENTS = REPO_ROOT / "bench" / "requirements-quix.txt"
CLASSPATH = f"{REPO_ROOT / 'kafka' / 'libs'}/*"


# --- the measurements (bench process) -----------------------------------------------------


def _quix_python() -> str:
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(QUIX_REQUIREMENTS)], check=True, timeout=900)
    return str(py)


def _run_peer(bootstrap: str, sizes: Sizes, scratch: Path, label: str, cmd: list[str],
              one_topic: bool = False, **extra_env: str) -> tuple[float | None, str, float, float, int]:
    """Fill the input, start ``cmd``, watch the output until every event came; returns
    (rate, how, wall seconds, CPU seconds of the peer, events)."""
    settings = fresh_settings(bootstrap, f"peer-{label}")
    asyncio.run(create(settings))
    n = sizes.enrich_events
    evs = list(payload.events(n, payload.new_run(), label))
    by_topic = split_by_topic(settings, evs)
    if one_topic:  # the copier reads one topic: every event on announcements
        values = [v for vs, _ in by_topic.values() for v in vs]
        keys = [k for _, ks in by_topic.values() for k in ks]
        by_topic = {settings.topic(ANNOUNCEMENTS): (values, keys)}

    async def prefill() -> None:
        for topic, (values, keys) in by_topic.items():
            await fill(settings, topic, values, keys)

    asyncio.run(prefill())
    filled_ms = time.time() * 1000
    group = f"peer-{label}-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PEER_BOOTSTRAP": bootstrap, "PEER_GROUP": group,
           "PEER_INPUTS": ",".join(by_topic), "PEER_OUTPUT": settings.topic(ENRICHED_EVENTS),
           "PEER_EVENTS": str(n), "PYTHONPATH": str(REPO_ROOT),
           # the peers' local state (Quix's state dir, faust's data dir) stays in the scratch
           "PEER_STATE_DIR": str(scratch / f"peer-{label}-{group}"), **extra_env}
    cmd = [c.replace("{inputs}", ",".join(by_topic)).replace("{output}", settings.topic(ENRICHED_EVENTS))
           .replace("{group}", group).replace("{events}", str(n)) for c in cmd]
    log = open(scratch / f"peer-{label}.log", "ab")

    async def go() -> tuple[Any, float, float]:
        ready = asyncio.Event()
        task = asyncio.create_task(watch(settings, settings.topic(ENRICHED_EVENTS), n,
                                         sizes.service_start_timeout + 600, ready=ready))
        await ready.wait()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,  # noqa: ASYNC220
                                cwd=REPO_ROOT)
        try:
            cpu0 = cpu_seconds(proc.pid)
            while not task.done():
                if proc.poll() is not None:
                    task.cancel()
                    raise RuntimeError(f"{label} exited {proc.returncode} before its output was complete")
                await asyncio.sleep(0.2)
            w = await task
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return w, time.monotonic() - t0, cpu

    try:
        w, wall, cpu = asyncio.run(go())
    finally:
        log.close()
    if w.count < n:
        tail = (scratch / f"peer-{label}.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"{label}: only {w.count} of {n} output records: {tail}")
    rate, how = steady_rate(w, filled_ms, wall)
    return rate, how, wall, cpu, n


def quix(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    rate, how, wall, cpu, n = _run_peer(bootstrap, sizes, scratch, "quix",
                                        [_quix_python(), "-m", "bench.peer_workers", "quix"],
                                        PEER_COMMIT_INTERVAL="0.1")
    results.add("peer.quix.eos.events_per_s", rate, "events/s",
                note=f"Quix Streams exactly-once, committing every 100 ms as enrich does, "
                     f"Anting's enrich_bytes; {n} pre-filled events; {how}",
                wall_seconds_with_startup=round(wall, 2), cpu_s_per_1k=round(cpu / n * 1000, 3))


def faust(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    rate, how, wall, cpu, n = _run_peer(bootstrap, sizes, scratch, "faust",
                                        [sys.executable, "-m", "bench.peer_workers", "faust"])
    results.add("peer.faust.alo.events_per_s", rate, "events/s",
                note=f"faust-streaming agent, at least once, Anting's enrich_bytes; {n} "
                     f"pre-filled events; {how}",
                wall_seconds_with_startup=round(wall, 2), cpu_s_per_1k=round(cpu / n * 1000, 3))


def kafka_copier(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    cmd = ["java", "-Xmx512m", "-cp", CLASSPATH, "org.apache.kafka.tools.TransactionalMessageCopier",
           "--broker-list", bootstrap, "--input-topic", "{inputs}", "--input-partition", "0",
           "--output-topic", "{output}", "--consumer-group", "{group}",
           "--transactional-id", "{group}", "--max-messages", "{events}",
           "--transaction-size", "5000", "--transaction-timeout", "60000",
           "--group-mode", "--use-group-metadata"]
    rate, how, wall, cpu, n = _run_peer(bootstrap, sizes, scratch, "copier", cmd, one_topic=True)
    results.add("peer.kafka_copier.eos.records_per_s", rate, "records/s",
                note=f"Kafka's TransactionalMessageCopier (KIP-447 group mode, 5000 records per "
                     f"transaction), no transform; {n} pre-filled records on one topic; {how}",
                wall_seconds_with_startup=round(wall, 2), cpu_s_per_1k=round(cpu / n * 1000, 3))


def ratios(results: Results) -> None:
    """Anting's figure over each peer's, as rows of their own (``enrich.eos.over_peer.*``)."""
    pairs = [("quix", "enrich.eos.events_per_s", "peer.quix.eos.events_per_s"),
             ("kafka_copier", "enrich.eos.events_per_s", "peer.kafka_copier.eos.records_per_s"),
             ("faust", "enrich.alo.events_per_s", "peer.faust.alo.events_per_s")]
    for name, ours, theirs in pairs:
        a, b = results.rows.get(ours), results.rows.get(theirs)
        if a is None or b is None or not a.value or not b.value:
            continue
        results.add(f"enrich.over_peer.{name}", a.value / b.value, "×",
                    note=f"{ours} over {theirs}, same run")

