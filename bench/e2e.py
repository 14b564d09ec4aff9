"""End to end: the three services on one topic prefix, an open-loop generator posting
single events to ingest at fixed offered loads, the receiver recording each webhook.

latency = arrival at the receiver − scheduled send time (one monotonic clock).
During the 1,000 events/s run every service's RSS is sampled (peak) and its CPU
time taken, giving CPU-seconds per 1,000 events per stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import payload
from bench.harness import LOADS, REPO_ROOT, Results, Sizes
from bench.kafkaio import IdWatcher, create, fresh_settings, timestamps_by_id
from bench.procs import API_KEY, Receiver, Sampler, Service, cpu_seconds
from bench.stages import StageError, load_catalog, notify_env, subscribe, wait_warm
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS

RSS_LOAD = 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of an ascending list."""
    if not sorted_values:
        return math.inf
    k = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[k]


def latencies(scheduled: dict[str, float], arrived: dict[str, float]) -> tuple[list[float], int]:
    """Latencies in ms, ascending, with every event never delivered counted as infinite."""
    out = []
    missing = 0
    for eid, at in scheduled.items():
        t = arrived.get(eid)
        if t is None:
            missing += 1
            out.append(math.inf)
        else:
            out.append((t - at) * 1000)
    out.sort()
    return out, missing


def breakdown(settings: AntingSettings, tag: str, scheduled: dict[str, float],
              visible: dict[str, float], arrived: dict[str, float]) -> dict[str, dict[str, float]]:
    """Where the latency goes, per delivered event: accept = ingest's record timestamp −
    scheduled send (HTTP + the broker's ack); enrich = visible on enriched-events to a
    read_committed consumer − ingest's record (fetch, enrich, transaction commit);
    notify = arrival at the receiver − visible on enriched-events."""
    wall = time.time() - time.monotonic()  # monotonic → wall clock, same machine
    ingested = asyncio.run(timestamps_by_id(
        settings, [settings.topic(ANNOUNCEMENTS), settings.topic(AGREEMENTS)], tag))
    parts: dict[str, list[float]] = {"accept": [], "enrich": [], "notify": []}
    for eid, at in arrived.items():
        t_in, t_vis, t_sched = ingested.get(eid), visible.get(eid), scheduled.get(eid)
        if t_in is None or t_vis is None or t_sched is None:
            continue
        parts["accept"].append(t_in - (t_sched + wall) * 1000)
        parts["enrich"].append((t_vis + wall) * 1000 - t_in)
        parts["notify"].append((at - t_vis) * 1000)
    out = {}
    for k, v in parts.items():
        v.sort()
        if v:
            out[k] = {"p50_ms": round(percentile(v, 0.5), 1), "p99_ms": round(percentile(v, 0.99), 1)}
    return out


def run_load(ingest_url: str, receiver: Receiver, rate: int, seconds: float, drain: float,
             scratch: Path, run: str, settings: AntingSettings,
             watcher: IdWatcher) -> dict[str, Any]:
    out = scratch / f"schedule-{rate}.json"
    tag = f"r{rate}"
    receiver.reset()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--url", f"{ingest_url}/v1/events",
         "--rate", str(rate), "--seconds", str(seconds), "--run", run, "--tag", tag,
         "--key", API_KEY, "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=seconds + 120,
    )
    if proc.returncode != 0:
        raise StageError(f"load generator failed: {proc.stderr[-800:]}")
    gen = orjson.loads(out.read_bytes())
    n = int(gen["sent"])
    accepted = sum(v for k, v in gen["status"].items() if k.startswith("2"))
    got = receiver.wait_count(accepted, drain, ids=True)
    arr = receiver.arrivals()
    ids: dict[str, float] = arr["ids"]
    mine = {k: v for k, v in ids.items() if f"-{tag}-" in k}
    lat, missing = latencies(gen["scheduled"], mine)
    try:
        parts = breakdown(settings, tag, gen["scheduled"], watcher.seen, mine)
    except Exception as exc:  # a diagnostic: never fail the measurement for it
        parts = {"error": {"message": str(exc)[:200]}}  # type: ignore[dict-item]
    return {"sent": n, "accepted": accepted, "delivered": got, "missing": missing,
            "status": gen["status"], "late_ms": gen["late_ms"], "latencies": lat,
            "duplicates": arr["duplicates"], "breakdown": parts}


def e2e(bootstrap: str, sizes: Sizes, results: Results, scratch: Path,
        receiver: Receiver) -> None:
    settings = fresh_settings(bootstrap, "e2e")
    asyncio.run(create(settings))
    catalog = load_catalog(settings)
    run = payload.new_run()
    logs = scratch / "logs"
    with contextlib.ExitStack() as stack:
        svcs: dict[str, Service] = {}
        for name, env in (("ingest", {}),
                          ("enrich", {"ANTING_ENRICH_GROUP": f"bench-enrich-{settings.topic_prefix}"}),
                          ("notify", notify_env(settings, sizes.http_concurrency))):
            svcs[name] = stack.enter_context(Service(name, settings, logs, **env))
        # started side by side: three interpreters importing at once is the slow part
        with ThreadPoolExecutor(len(svcs)) as pool:
            for f in [pool.submit(s.start, sizes.service_start_timeout) for s in svcs.values()]:
                f.result()
        subscribe(svcs["notify"].url, f"{receiver.url}/hook")
        receiver.reset()
        warm = orjson.dumps(payload.event(run, 0, "warm"))
        r = httpx.post(f"{svcs['ingest'].url}/v1/events", content=warm,
                       headers={"content-type": "application/json",
                                "authorization": f"Bearer {API_KEY}"}, timeout=30)
        if r.status_code >= 300:
            raise StageError(f"ingest answered {r.status_code}: {r.text[:300]}")
        wait_warm(receiver, sizes.service_start_timeout,
                  "through ingest, enrich and notify: "
                  + " | ".join(f"{k}: {s.tail(300)}" for k, s in svcs.items()))
        later: list[tuple[str, float, str, str]] = []
        watcher = stack.enter_context(IdWatcher(settings, [settings.topic(ENRICHED_EVENTS)]))
        try:
            for rate in LOADS:
                pids = {k: s.pid for k, s in svcs.items()}
                cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
                sampler = Sampler(pids)
                t0 = time.monotonic()
                with sampler.running():
                    res = run_load(svcs["ingest"].url, receiver, rate, sizes.e2e_seconds,
                                   sizes.e2e_drain_seconds, scratch, run, settings, watcher)
                wall = time.monotonic() - t0
                cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
                dead = [k for k, s in svcs.items() if not s.alive()]
                lat = res["latencies"]
                note = (f"open loop, {res['sent']} events over {sizes.e2e_seconds:g}s; "
                        f"{res['delivered']}/{res['accepted']} accepted were delivered")
                if res["missing"]:
                    note += f"; {res['missing']} never delivered within {sizes.e2e_drain_seconds:g}s"
                if dead:
                    note += f"; died: {', '.join(dead)}"
                for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
                    v = percentile(lat, q)
                    if math.isinf(v):
                        finite = [x for x in lat if not math.isinf(x)]
                        v = (finite[-1] if finite else 0.0) or sizes.e2e_drain_seconds * 1000
                        results.add(f"e2e.latency.{label}_ms@{rate}", v, "ms",
                                    note=note + "; a lower bound: this percentile was never delivered",
                                    lower_bound=True)
                    else:
                        results.add(f"e2e.latency.{label}_ms@{rate}", v, "ms", note=note,
                                    status=res["status"], generator_late_ms=res["late_ms"],
                                    duplicates=res["duplicates"], breakdown=res["breakdown"])
                if rate == RSS_LOAD:
                    for k, peak in sampler.peak.items():
                        later.append((f"rss_mb.{k}", peak, "MB",
                                      f"peak RSS during the {rate} events/s run (psutil, 0.1 s samples)"))
                    for k, c in cpu.items():
                        later.append((f"cpu_s_per_1k.{k}", c / max(1, res["sent"]) * 1000, "CPU-s/1k",
                                      f"user+system CPU of the {k} process over the {rate} events/s "
                                      f"run ({wall:.1f}s incl. drain)"))
                if dead:
                    raise StageError(f"service(s) died during the {rate}/s run: {dead}")
        finally:
            for name, value, unit, note in later:
                results.add(name, value, unit, note=note)
    results.rows[f"e2e.latency.p50_ms@{LOADS[0]}"].extra["catalog"] = catalog
