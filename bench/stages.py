"""The stages, driven as black boxes: ``anting`` subprocesses configured by environment,
HTTP requests, and Kafka topics read back like any user would.

Each rate is the stage's steady rate: from its first output to its last (record
timestamps on Kafka, arrival times at the receiver), so interpreter and group
start-up are not counted; the wall time including start-up is kept beside it.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import payload
from bench.baselines import aiohttp_loop, run_async, wrk, wrk_available, wrk_problems
from bench.harness import Results, Sizes
from bench.kafkaio import Watch, create, end_offsets_total, fill, fresh_settings, watch
from bench.procs import API_KEY, Receiver, Service, ServiceFailed, cpu_seconds, rss_mb
from devtools import REPO_ROOT
from devtools.testing import env_for
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, ENRICHED_EVENTS, INPUT_TOPICS_BY_TYPE

ANTING = str(Path(sys.executable).parent / "anting")
AUTH = {"authorization": f"Bearer {API_KEY}"}


class StageError(RuntimeError):
    """The stage ran but did not do what it must (wrong status, missing outputs)."""


def anting(settings: AntingSettings, *args: str, timeout: float = 300,
           **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANTING, *args], env=env_for(settings, **env), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


@functools.cache
def has_command(*words: str) -> bool:
    """Whether ``anting WORDS --help`` exists (a service's CLI may land after its server)."""
    proc = subprocess.run([ANTING, *words, "--help"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    return proc.returncode == 0


def input_topics(settings: AntingSettings) -> list[str]:
    return [settings.topic(ANNOUNCEMENTS), settings.topic(AGREEMENTS)]


def split_by_topic(settings: AntingSettings,
                   evs: list[dict[str, Any]]) -> dict[str, tuple[list[bytes], list[bytes]]]:
    out: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for ev in evs:
        topic = settings.topic(INPUT_TOPICS_BY_TYPE[ev["type"]])
        values, keys = out.setdefault(topic, ([], []))
        values.append(orjson.dumps(ev))
        keys.append(payload.key_of(ev))
    return out


def steady_rate(w: Watch, not_before_ms: float, wall: float) -> tuple[float | None, str]:
    """The writer's rate from record timestamps, unless the writer kept its inputs'
    timestamps (then the arrival times at our consumer: from the first fetch to the
    last); when everything came in one fetch (tiny sizes), over the wall time."""
    if w.count >= 2 and min(w.timestamps) >= not_before_ms:
        rate = w.rate_from_timestamps()
        if rate is not None:
            return rate, "first to last output record timestamp"
    rate = w.rate_from_arrivals()
    if rate is not None:
        return rate, "first to last fetch of a read_committed consumer"
    return w.count / wall, "over the wall time with start-up (all output came in one fetch)"


# --- ingest -----------------------------------------------------------------------------


def ingest_file(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    name = "ingest.file.events_per_s"
    if not has_command("publish"):
        results.add(name, None, "events/s", note="`anting publish` not available yet")
        return
    settings = fresh_settings(bootstrap, "file")
    asyncio.run(create(settings))
    n = sizes.file_events
    path = scratch / "events.ndjson"
    path.write_bytes(b"\n".join(payload.event_bytes(n, payload.new_run(), "file")) + b"\n")

    async def go() -> tuple[Watch, float, subprocess.CompletedProcess[str]]:
        ready = asyncio.Event()
        task = asyncio.create_task(watch(settings, input_topics(settings), n, 300, ready=ready))
        await ready.wait()
        t0 = time.monotonic()
        start_ms = time.time() * 1000
        proc = await asyncio.to_thread(anting, settings, "publish", "--quiet", str(path))
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            task.cancel()
            raise StageError(f"anting publish exited {proc.returncode}: "
                             f"{(proc.stdout + proc.stderr)[-800:]}")
        w = await task
        w.started = start_ms
        return w, wall, proc

    w, wall, _ = asyncio.run(go())
    if w.count < n:
        raise StageError(f"only {w.count} of {n} published events reached the topics")
    rate, how = steady_rate(w, w.started - 1000, wall)
    results.add(name, rate, "events/s", note=f"`anting publish FILE`, {n} events; {how}",
                wall_seconds_with_startup=round(wall, 2),
                wall_events_per_s=round(n / wall, 1))


def _check_accepts(url: str, body: bytes, ctype: str = "application/json") -> None:
    r = httpx.post(url, content=body, headers={"content-type": ctype, **AUTH}, timeout=30)
    if r.status_code >= 300:
        raise StageError(f"POST {url} answered {r.status_code}: {r.text[:500]}")


def ingest_http(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    settings = fresh_settings(bootstrap, "http")
    asyncio.run(create(settings))
    run = payload.new_run()
    one = orjson.dumps(payload.event(run, 0, "single"))
    batch = orjson.dumps(list(payload.events(100, run, "batch")))
    with Service("ingest", settings, scratch / "logs").start(sizes.service_start_timeout) as svc:
        url = f"{svc.url}/v1/events"
        _check_accepts(url, one)
        _check_accepts(url, batch)
        cpu0 = cpu_seconds(svc.pid)
        accepted = 0
        c = sizes.http_concurrency
        if wrk_available():
            cs = sizes.wrk_single_connections
            w = wrk(url, one, sizes.wrk_seconds, cs, key=API_KEY)
            results.add("ingest.http.single.requests_per_s", w["requests_per_s"], "requests/s",
                        note=f"wrk, {cs} connections, one event per POST"
                        + wrk_problems(w),
                        p50_ms=w["p50_ms"], p99_ms=w["p99_ms"])
            accepted += int(w["requests"] - w["non_2xx"])
        bodies = [orjson.dumps(e) for e in payload.events(1000, run, "hx")]
        t, bad = run_async(aiohttp_loop(url, bodies, sizes.http_seconds, c, AUTH))
        name = ("ingest.http.single.python.requests_per_s" if wrk_available()
                else "ingest.http.single.requests_per_s")
        row = results.add(name, t.done / t.seconds, "requests/s",
                    note=f"aiohttp client, {c} concurrent, in the bench process"
                    + (f"; {bad} not 2xx" if bad else ""))
        if not wrk_available():
            row.baseline = "baseline.http_client.requests_per_s"  # no wrk baseline either
        accepted += t.done
        if wrk_available():
            cb = sizes.wrk_batch_connections
            w = wrk(url, batch, sizes.wrk_seconds, cb, key=API_KEY)
            results.add("ingest.http.batch100.events_per_s", w["requests_per_s"] * 100,
                        "events/s", note=f"wrk, {cb} connections, JSON arrays of 100 events"
                        + wrk_problems(w),
                        requests_per_s=w["requests_per_s"], p50_ms=w["p50_ms"],
                        p99_ms=w["p99_ms"])
            accepted += int(w["requests"] - w["non_2xx"]) * 100
        else:
            t, bad = run_async(aiohttp_loop(url, [batch], sizes.http_seconds,
                                            sizes.wrk_batch_connections, AUTH))
            results.add("ingest.http.batch100.events_per_s", t.done * 100 / t.seconds, "events/s",
                        note="aiohttp client (wrk not used), JSON arrays of 100"
                        + (f"; {bad} not 2xx" if bad else ""))
            accepted += t.done * 100
        cpu = cpu_seconds(svc.pid) - cpu0
        results.add("ingest.http.cpu_s_per_1k", cpu / max(1, accepted) * 1000, "CPU-s/1k",
                    note="ingest process CPU over every accepted event of the HTTP runs")
    on_topics = asyncio.run(end_offsets_total(settings, *input_topics(settings)))
    if on_topics < accepted:
        raise StageError(f"ingest answered 2xx for {accepted} events, topics hold {on_topics}")


# --- enrich -----------------------------------------------------------------------------


def load_catalog(settings: AntingSettings) -> str:
    """The shipped catalog through `anting orgs load`, when that command exists."""
    if not has_command("orgs", "load"):
        return "no catalog (`anting orgs load` not available)"
    proc = anting(settings, "orgs", "load")
    if proc.returncode != 0:
        raise StageError(f"anting orgs load exited {proc.returncode}: "
                         f"{(proc.stdout + proc.stderr)[-800:]}")
    return "shipped catalog loaded with `anting orgs load`"


def enrich(bootstrap: str, sizes: Sizes, results: Results, scratch: Path, guarantee: str) -> None:
    label = {"at_least_once": "alo", "exactly_once": "eos"}[guarantee]
    settings = fresh_settings(bootstrap, f"enrich-{label}")
    asyncio.run(create(settings))
    catalog = load_catalog(settings)
    n = sizes.enrich_events
    evs = list(payload.events(n, payload.new_run(), label))

    async def prefill() -> None:
        for topic, (values, keys) in split_by_topic(settings, evs).items():
            await fill(settings, topic, values, keys)

    asyncio.run(prefill())
    filled_ms = time.time() * 1000
    svc = Service("enrich", settings, scratch / "logs", ANTING_ENRICH_GUARANTEE=guarantee,
                  ANTING_ENRICH_GROUP=f"bench-enrich-{settings.topic_prefix}")

    async def go() -> tuple[Watch, float, float]:
        ready = asyncio.Event()
        task = asyncio.create_task(watch(settings, settings.topic(ENRICHED_EVENTS), n,
                                         sizes.service_start_timeout + 600, ready=ready))
        await ready.wait()
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(svc.start, sizes.service_start_timeout)
        except ServiceFailed:
            task.cancel()
            raise
        cpu0 = cpu_seconds(svc.pid)
        w = await task
        return w, time.monotonic() - t0, cpu_seconds(svc.pid) - cpu0

    try:
        w, wall, cpu = asyncio.run(go())
        alive = svc.alive()
    finally:
        svc.stop()
    if w.count < n:
        raise StageError(f"only {w.count} of {n} enriched events within the wait "
                         f"(service alive: {alive}): {svc.tail(800)}")
    rate, how = steady_rate(w, filled_ms, wall)
    results.add(f"enrich.{label}.events_per_s", rate, "events/s",
                note=f"ANTING_ENRICH_GUARANTEE={guarantee}, {n} pre-filled events; {how}; {catalog}",
                wall_seconds_with_startup=round(wall, 2), cpu_s_per_1k=round(cpu / n * 1000, 3))


# --- notify -----------------------------------------------------------------------------


def subscribe(notify_url: str, hook_url: str) -> dict[str, Any]:
    body = {"name": "bench", "filter": {}, "channel": {"type": "webhook", "url": hook_url}}
    r = httpx.post(f"{notify_url}/v1/subscriptions", json=body, headers=AUTH, timeout=30)
    if r.status_code != 201:
        raise StageError(f"POST /v1/subscriptions answered {r.status_code}: {r.text[:500]}")
    data: dict[str, Any] = r.json()
    return data


def notify_env(settings: AntingSettings, concurrency: int) -> dict[str, str]:
    """notify's environment for a bench run: one subscription gets every slot (its own cap,
    4 by default, would measure the cap rather than notify), as in the earlier runs."""
    return {"ANTING_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
            "ANTING_NOTIFY_CONCURRENCY": str(concurrency),
            "ANTING_NOTIFY_MAX_IN_FLIGHT_PER_SUBSCRIPTION": str(concurrency),
            "ANTING_NOTIFY_MAX_IN_FLIGHT_PER_TENANT": str(concurrency),
            "ANTING_NOTIFY_GROUP": f"bench-notify-{settings.topic_prefix}"}


def subscribe_warm(svc: Service, settings: AntingSettings, topic: str, run: str, receiver: Receiver,
                   sizes: Sizes) -> None:
    """Subscribe ``receiver``'s /hook to everything on the running notify ``svc``, then send
    one event through: the subscription is in effect and the group's offsets exist."""
    subscribe(svc.url, f"{receiver.url}/hook")
    receiver.reset()
    warm = payload.enriched(payload.event(run, 0, "warm"))
    asyncio.run(fill(settings, topic, [orjson.dumps(warm)], [payload.key_of(warm)]))
    wait_warm(receiver, sizes.service_start_timeout, f"notify log: {svc.tail(600)}")


def wait_warm(receiver: Receiver, timeout: float, what: str) -> None:
    if receiver.wait_count(1, timeout, ids=True) < 1:
        raise StageError(f"the warm-up event was not delivered within {timeout:.0f}s ({what})")


SLOW_MS = 5  # the slow receiver's answer time: a nearby endpoint's


def notify_run(bootstrap: str, sizes: Sizes, scratch: Path, receiver: Receiver,
               label: str) -> dict[str, Any]:
    """notify delivering ``sizes.notify_events`` waiting events to ``receiver``: the rate
    from the first to the last arrival, and notify's CPU."""
    settings = fresh_settings(bootstrap, label)
    asyncio.run(create(settings))
    run = payload.new_run()
    n = sizes.notify_events
    topic = settings.topic(ENRICHED_EVENTS)
    env = notify_env(settings, sizes.http_concurrency)
    with Service("notify", settings, scratch / "logs", **env).start(sizes.service_start_timeout) as svc:
        subscribe_warm(svc, settings, topic, run, receiver, sizes)
    # The backlog is written while notify is down and delivered when it comes back (as the
    # enrich stages measure a pre-filled topic): the bench's producer does not compete with
    # notify for the CPU, as the raw loop has none competing either.
    receiver.reset()
    evs = [payload.enriched(e) for e in payload.events(n, run, "n")]
    asyncio.run(fill(settings, topic, [orjson.dumps(e) for e in evs], [payload.key_of(e) for e in evs]))
    with Service("notify", settings, scratch / "logs", **env).start(sizes.service_start_timeout) as svc:
        cpu0 = cpu_seconds(svc.pid)
        t0 = time.monotonic()
        got = receiver.wait_count(n, 120 + n / 50, ids=True)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(svc.pid) - cpu0
        if got < n:
            raise StageError(f"only {got} of {n} webhooks arrived: {svc.tail(800)}")
    arr = receiver.arrivals()
    times = sorted(arr["ids"].values())
    return {"rate": (len(times) - 1) / (times[-1] - times[0]), "wall_seconds": round(wall, 2),
            "cpu_s_per_1k": round(cpu / n * 1000, 3), "duplicates": arr["duplicates"],
            "requests": len(arr["times"])}


def notify(bootstrap: str, sizes: Sizes, results: Results, scratch: Path,
           receiver: Receiver) -> None:
    c = sizes.http_concurrency
    # The raw loop and notify alternate, ``notify_rounds`` times, against one receiver, and
    # the medians are compared: on a shared machine the speed drifts within minutes (the
    # raw loop of the baselines step, a minute or two earlier, has read 10,400 and 15,100
    # requests/s on one day), so a ratio against a far-off single run says more about the
    # machine than about notify.
    body = orjson.dumps(payload.enriched(payload.event(payload.new_run(), 0)))
    raw: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(sizes.notify_rounds):
        t, _bad = run_async(aiohttp_loop(f"{receiver.url}/hook", [body], sizes.http_seconds, c))
        raw.append(t.done / t.seconds)
        runs.append(notify_run(bootstrap, sizes, scratch, receiver, "notify"))
    rates = [m["rate"] for m in runs]
    pairs = ", ".join(f"{n:,.0f}/{r:,.0f}" for n, r in zip(rates, raw, strict=True))
    results.add("baseline.http_client_paired.requests_per_s", statistics.median(raw), "requests/s",
                note=f"the raw aiohttp loop ({c} concurrent) run just before each notify run; "
                f"median of {len(raw)}", runs=[round(r, 1) for r in raw])
    m = runs[rates.index(sorted(rates)[len(rates) // 2])]  # the median run's details
    results.add("notify.webhook.deliveries_per_s", statistics.median(rates), "deliveries/s",
                note=f"ANTING_NOTIFY_CONCURRENCY={c}, {sizes.notify_events} events waiting on "
                "enriched-events, one webhook subscription matching all; first to last arrival "
                f"at the receiver; median of {len(rates)} runs, each after a raw-loop run "
                f"(notify/raw: {pairs})",
                **{k: v for k, v in m.items() if k != "rate"},
                runs=[round(r, 1) for r in rates],
                pair_ratios=[round(n / r, 3) for n, r in zip(rates, raw, strict=True)])
    results.add("notify.webhook.own_client.deliveries_per_s", statistics.median(rates), "deliveries/s",
                note="the same runs over the raw loop on notify's own client: its overhead "
                "beyond the HTTP exchange")
    # Once more against a receiver that takes SLOW_MS to answer, as real endpoints do, next
    # to the raw loop against it: does notify keep its delivery slots full when the CPU is
    # not the limit?
    slow = Receiver(scratch / "logs", delay_ms=SLOW_MS).start()
    try:
        body = orjson.dumps(payload.enriched(payload.event(payload.new_run(), 0)))
        t, _bad = run_async(aiohttp_loop(f"{slow.url}/hook", [body], sizes.http_seconds, c))
        results.add(f"baseline.http_client_{SLOW_MS}ms.requests_per_s", t.done / t.seconds,
                    "requests/s", note=f"aiohttp.ClientSession, {c} concurrent, to a receiver "
                    f"answering after {SLOW_MS} ms")
        m = notify_run(bootstrap, sizes, scratch, slow, "notify-slow")
        results.add(f"notify.webhook_{SLOW_MS}ms.deliveries_per_s", m.pop("rate"), "deliveries/s",
                    note=f"as notify.webhook, to a receiver answering after {SLOW_MS} ms", **m)
    finally:
        slow.stop()


MATCH_SUBSCRIPTIONS = (1, 1_000, 10_000)


def _idle_subscriptions(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` subscriptions (key, record value) that match no bench event, spread over every
    field a filter can name (an organization, a city, a sector, a kind no bench event has,
    a type together with a city), as users' real filters are."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = []
    for i in range(n):
        flt = ({"organizations": [f"nobody-{i}"]}, {"cities": [f"nowhere-{i}"]}, {"sectors": [f"nothing-{i}"]},
               {"kinds": ["exhibition"]}, {"types": ["agreement.signed"], "cities": [f"nowhere-{i}"]})[i % 5]
        sub_id = f"sub_idle_{i:06d}"
        out.append((sub_id.encode(), orjson.dumps({
            "id": sub_id, "name": f"idle {i}", "filter": flt, "created_at": now,
            "channel": {"type": "webhook", "url": f"http://127.0.0.1:9/idle/{i}"},
            "secrets": ["whsec_" + "A" * 43]})))
    return out


def notify_match(bootstrap: str, sizes: Sizes, results: Results, scratch: Path, receiver: Receiver) -> None:
    """Deliveries to one probe subscription (matching every event) while 0, 999 and 9,999
    other subscriptions match nothing: matching cost as subscriptions grow. The idle ones
    are written to the subscriptions topic before notify starts (as a restart finds them);
    notify's peak RSS is read at the end of each run."""
    from shared.topics import SUBSCRIPTIONS

    counts = (1, 100) if sizes.quick else MATCH_SUBSCRIPTIONS
    n = sizes.notify_events // 2
    for count in counts:
        settings = fresh_settings(bootstrap, f"match{count}")
        asyncio.run(create(settings))
        idle = _idle_subscriptions(count - 1)
        if idle:
            asyncio.run(fill(settings, settings.topic(SUBSCRIPTIONS), [v for _, v in idle], [k for k, _ in idle]))
        run = payload.new_run()
        evs = [payload.enriched(e) for e in payload.events(n, run, "m")]
        env = notify_env(settings, sizes.http_concurrency)
        topic = settings.topic(ENRICHED_EVENTS)
        with Service("notify", settings, scratch / "logs", **env).start(sizes.service_start_timeout) as svc:
            subscribe_warm(svc, settings, topic, run, receiver, sizes)
            receiver.reset()
            asyncio.run(fill(settings, topic, [orjson.dumps(e) for e in evs], [payload.key_of(e) for e in evs]))
            got = receiver.wait_count(n, 120 + n / 50, ids=True)
            rss = rss_mb(svc.pid)
            if got < n:
                raise StageError(f"only {got} of {n} webhooks arrived with {count} subscriptions: {svc.tail(800)}")
        times = sorted(receiver.arrivals()["ids"].values())
        rate = (len(times) - 1) / (times[-1] - times[0])
        results.add(f"notify.match.events_per_s@{count}_subscriptions", rate, "events/s",
                    note=f"deliveries to one probe subscription matching all {n} events, "
                    f"{count - 1} others matching none; ratio over the 1-subscription run",
                    rss_mb=round(rss, 1))
        if count == counts[-1]:
            results.add(f"rss_mb.notify@{count}_subscriptions", rss, "MB",
                        note=f"notify's RSS at the end of the {count}-subscription run")



def insights(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    """insights folding ``sizes.insights_events`` enriched events (1-5 catalog organizations
    each), against the raw consume loop over the same topic (read committed, each event
    parsed with the contract), and its recovery from the changelog after a restart."""
    from bench import insights as insights_bench

    m = insights_bench.measure(bootstrap, sizes.insights_events, scratch / "logs")
    results.add("baseline.insights_consume.events_per_s", m["raw_events_per_s"], "events/s",
                note="one aiokafka consumer reading the insights input, read committed, each event parsed")
    results.add("insights.events_per_s", m["insights_events_per_s"], "events/s",
                note=f"anting serve insights from start until every fact of {m['events']} events "
                f"({m['facts']} facts) is folded", facts=m["facts"])
    results.add("insights.recovery_seconds", m["recovery_seconds"], "s",
                note=f"restart until /readyz answers, the table ({m['organizations']} organizations "
                "and the other entities) restored from its changelog")
