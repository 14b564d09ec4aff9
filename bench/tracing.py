"""What tracing costs: each stage (ingest's single-event POST, enrich exactly once, notify's
webhooks) run with tracing off and with every event traced, alternately, in one session.

Off is the default (no exporter configured: ``shared.tracing.tracer`` answers ``None``).
Its cost is too small to see in a throughput on a shared machine, so it is bounded
instead: the time of what the off path adds per event (the ``tracer()`` look-ups and the
extra ``await`` layers, each timed here) over the stage's CPU per event in its off runs.
On: ``OTEL_EXPORTER_OTLP_ENDPOINT`` points at a receiver process that answers every
export 200 (bench.receiver), the default sampler (``parentbased_always_on``: every event,
as none arrives with a sampled-out parent) and a batch queue large enough that no span is
dropped (``OTEL_BSP_MAX_QUEUE_SIZE``). Each stage reports the median on/off ratio of its
rate and of its CPU per event.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench import payload
from bench.baselines import aiohttp_loop, run_async
from bench.harness import Results, Sizes
from bench.kafkaio import create, fill, fresh_settings, watch
from bench.procs import Receiver, Service, cpu_seconds
from bench.stages import (
    AUTH,
    StageError,
    load_catalog,
    notify_env,
    split_by_topic,
    steady_rate,
    subscribe_warm,
)
from shared import tracing
from shared.topics import ENRICHED_EVENTS

# what the off path adds per event, counted in the instrumented code: tracer() look-ups
# and extra coroutine layers (a delivery passes three: handle_event → _handle,
# run → _attempt, send → _post); enrich tests its one look-up's result per record
OFF_PATH = {
    "ingest": {"lookups": 2, "layers": 0},  # per request: publish and the stage histogram
    "enrich": {"lookups": 0, "layers": 0, "checks": 3},  # one look-up per batch
    "notify": {"lookups": 5, "layers": 3},  # per event delivered to one webhook
}


def _off_env() -> dict[str, str]:
    # the services inherit this process's environment: "none" keeps them off even when
    # the bench itself runs with OTEL_* variables set (the same path as none set)
    return {"OTEL_TRACES_EXPORTER": "none"}


def _on_env(sink: Receiver) -> dict[str, str]:
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
            "OTEL_BSP_MAX_QUEUE_SIZE": "200000", "OTEL_BSP_SCHEDULE_DELAY": "1000"}


def off_path_ns() -> dict[str, float]:
    """The time of one ``tracer()`` look-up with tracing off, of one extra ``await``
    layer, and of one ``is not None`` test, in ns (best of five)."""
    tracing.reset("bench-off")
    import os

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OTEL_")}
    try:
        tracing.tracer("bench-off")
        n = 200_000
        lookup = min(timeit.repeat(lambda: tracing.tracer("bench-off"), number=n, repeat=5)) / n
    finally:
        os.environ.update(saved)
        tracing.reset("bench-off")

    async def inner(x: int) -> int:
        return x

    async def outer(x: int) -> int:
        return await inner(x)

    async def timed(f: Callable[[int], Any]) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(n):
                await f(i)
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    async def both() -> float:
        return await timed(outer) - await timed(inner)

    layer = max(0.0, asyncio.run(both()))
    x = None
    check = min(timeit.repeat(lambda: x is not None, number=n, repeat=5)) / n
    empty = min(timeit.repeat(lambda: None, number=n, repeat=5)) / n
    return {"lookup": lookup * 1e9, "layer": layer * 1e9, "check": max(0.0, check - empty) * 1e9}


def enrich_once(bootstrap: str, sizes: Sizes, scratch: Path, env: dict[str, str],
                label: str) -> dict[str, float]:
    """``anting serve enrich`` (exactly once) over pre-filled inputs: its steady rate and
    CPU per 1,000 events."""
    settings = fresh_settings(bootstrap, f"trace-enrich-{label}")
    asyncio.run(create(settings))
    load_catalog(settings)
    n = sizes.enrich_events
    evs = list(payload.events(n, payload.new_run(), label))

    async def prefill() -> None:
        for topic, (values, keys) in split_by_topic(settings, evs).items():
            await fill(settings, topic, values, keys)

    asyncio.run(prefill())
    filled_ms = time.time() * 1000
    svc = Service("enrich", settings, scratch / "logs", ANTING_ENRICH_GUARANTEE="exactly_once",
                  ANTING_ENRICH_GROUP=f"bench-trace-{settings.topic_prefix}", **env)

    async def go() -> tuple[Any, float, float]:
        ready = asyncio.Event()
        task = asyncio.create_task(watch(settings, settings.topic(ENRICHED_EVENTS), n,
                                         sizes.service_start_timeout + 600, ready=ready))
        await ready.wait()
        t0 = time.monotonic()
        await asyncio.to_thread(svc.start, sizes.service_start_timeout)
        cpu0 = cpu_seconds(svc.pid)
        w = await task
        return w, time.monotonic() - t0, cpu_seconds(svc.pid) - cpu0

    try:
        w, wall, cpu = asyncio.run(go())
    finally:
        svc.stop()
    if w.count < n:
        raise StageError(f"only {w.count} of {n} enriched events: {svc.tail(800)}")
    rate, _how = steady_rate(w, filled_ms, wall)
    return {"rate": float(rate or 0.0), "cpu_s_per_1k": cpu / n * 1000}


def notify_once(bootstrap: str, sizes: Sizes, scratch: Path, receiver: Receiver,
                env: dict[str, str], label: str) -> dict[str, float]:
    """notify delivering ``sizes.notify_events`` waiting events to ``receiver`` (as the
    notify stage does): first to last arrival, and notify's CPU per 1,000 deliveries."""
    settings = fresh_settings(bootstrap, f"trace-notify-{label}")
    asyncio.run(create(settings))
    run = payload.new_run()
    n = sizes.notify_events
    topic = settings.topic(ENRICHED_EVENTS)
    senv = {**notify_env(settings, sizes.http_concurrency), **env}
    with Service("notify", settings, scratch / "logs", **senv).start(sizes.service_start_timeout) as svc:
        subscribe_warm(svc, settings, topic, run, receiver, sizes)
    receiver.reset()
    evs = [payload.enriched(e) for e in payload.events(n, run, "n")]
    asyncio.run(fill(settings, topic, [orjson.dumps(e) for e in evs], [payload.key_of(e) for e in evs]))
    with Service("notify", settings, scratch / "logs", **senv).start(sizes.service_start_timeout) as svc:
        cpu0 = cpu_seconds(svc.pid)
        got = receiver.wait_count(n, 120 + n / 50, ids=True)
        cpu = cpu_seconds(svc.pid) - cpu0
        if got < n:
            raise StageError(f"only {got} of {n} webhooks arrived: {svc.tail(800)}")
    times = sorted(receiver.arrivals()["ids"].values())
    return {"rate": (len(times) - 1) / (times[-1] - times[0]), "cpu_s_per_1k": cpu / n * 1000}


def ingest_once(bootstrap: str, sizes: Sizes, scratch: Path, env: dict[str, str],
                label: str) -> dict[str, float]:
    """ingest answering single-event POSTs from the aiohttp loop (``http_concurrency``
    at a time) for ``http_seconds``: requests/s and CPU per 1,000 requests."""
    settings = fresh_settings(bootstrap, f"trace-ingest-{label}")
    asyncio.run(create(settings))
    run = payload.new_run()
    bodies = [orjson.dumps(e) for e in payload.events(1000, run, "tr")]
    with Service("ingest", settings, scratch / "logs", **env).start(sizes.service_start_timeout) as svc:
        url = f"{svc.url}/v1/events"
        # warm: the first requests set up the producer (and, on, the tracer)
        run_async(aiohttp_loop(url, bodies[:50], 0.5, 4, AUTH))
        cpu0 = cpu_seconds(svc.pid)
        t, bad = run_async(aiohttp_loop(url, bodies, sizes.http_seconds, sizes.http_concurrency, AUTH))
        cpu = cpu_seconds(svc.pid) - cpu0
    if bad:
        raise StageError(f"{bad} POSTs not answered 2xx")
    return {"rate": t.done / t.seconds, "cpu_s_per_1k": cpu / max(1, t.done) * 1000}


def measure(bootstrap: str, sizes: Sizes, results: Results, scratch: Path,
            receiver: Receiver) -> None:
    """Every stage off and on, alternately, ``rounds`` pairs each; the rows
    ``tracing.<stage>.on_over_off`` (rate), ``tracing.<stage>.cpu_on_over_off`` and
    ``tracing.<stage>.off_overhead_pct`` (the bound on the off path's cost)."""
    rounds = 1 if sizes.quick else 2
    sink = Receiver(scratch / "logs").start()  # the OTLP endpoint: any POST answered 200
    ns = off_path_ns()
    runners: dict[str, Callable[[dict[str, str], str], dict[str, float]]] = {
        "ingest": lambda env, label: ingest_once(bootstrap, sizes, scratch, env, label),
        "enrich": lambda env, label: enrich_once(bootstrap, sizes, scratch, env, label),
        "notify": lambda env, label: notify_once(bootstrap, sizes, scratch, receiver, env, label),
    }
    unit = {"ingest": "requests/s", "enrich": "events/s", "notify": "deliveries/s"}
    try:
        for stage, runner in runners.items():
            off: list[dict[str, float]] = []
            on: list[dict[str, float]] = []
            for i in range(rounds):
                off.append(runner(_off_env(), f"off{i}"))
                on.append(runner(_on_env(sink), f"on{i}"))
            rate_ratios = [b["rate"] / a["rate"] for a, b in zip(off, on, strict=True)]
            # (a run too short to read its CPU, as in quick sizes, has none to compare)
            cpu_ratios = [b["cpu_s_per_1k"] / a["cpu_s_per_1k"]
                          for a, b in zip(off, on, strict=True) if a["cpu_s_per_1k"] > 0]
            off_rate = statistics.median(m["rate"] for m in off)
            on_rate = statistics.median(m["rate"] for m in on)
            off_cpu = statistics.median(m["cpu_s_per_1k"] for m in off)
            results.add(f"tracing.{stage}.off.rate", off_rate, unit[stage],
                        note=f"tracing off (no exporter); median of {rounds}",
                        runs=[round(m["rate"], 1) for m in off],
                        cpu_s_per_1k=[round(m["cpu_s_per_1k"], 4) for m in off])
            results.add(f"tracing.{stage}.on.rate", on_rate, unit[stage],
                        note=f"every event traced, exported over OTLP/HTTP; median of {rounds}",
                        runs=[round(m["rate"], 1) for m in on],
                        cpu_s_per_1k=[round(m["cpu_s_per_1k"], 4) for m in on])
            results.add(f"tracing.{stage}.on_over_off", statistics.median(rate_ratios), "ratio",
                        note="rate with every event traced over the rate off, each pair run "
                        "back to back; median", pairs=[round(r, 3) for r in rate_ratios])
            results.add(f"tracing.{stage}.cpu_on_over_off",
                        statistics.median(cpu_ratios) if cpu_ratios else None, "ratio",
                        note="CPU per event traced over CPU per event off; median",
                        pairs=[round(r, 3) for r in cpu_ratios])
            path = OFF_PATH[stage]
            added = (path["lookups"] * ns["lookup"] + path["layers"] * ns["layer"]
                     + path.get("checks", 0) * ns["check"])
            per_event_ns = off_cpu / 1000 * 1e9
            results.add(f"tracing.{stage}.off_overhead_pct",
                        added / per_event_ns * 100 if per_event_ns else None, "%",
                        note=f"bound on what tracing off adds: {path} per event at "
                        f"{ns['lookup']:.0f} ns a look-up, {ns['layer']:.0f} ns a layer, "
                        f"{ns['check']:.0f} ns a check = {added:.0f} ns, over the stage's "
                        f"{per_event_ns / 1000:.1f} µs of CPU per event off",
                        added_ns=round(added, 1))
    finally:
        sink.stop()
