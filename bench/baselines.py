"""Baselines measured in the same run as the stages: Kafka's own perf tools (the
broker's ceiling here) and raw Python loops with our payload and safe settings."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from bench import payload
from bench.harness import REPO_ROOT, Results, Sizes
from bench.kafkaio import create, fill, fresh_settings, scratch_topic
from shared.kafka import SAFE_PRODUCER, make_consumer, make_producer

CLASSPATH = f"{REPO_ROOT / 'kafka' / 'libs'}/*"


def _java(cls: str, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        ["java", "-Xmx512m", "-cp", CLASSPATH, cls, *args],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cls} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout


def parse_producer_perf(out: str) -> dict[str, float]:
    """The summary line: 'N records sent, X records/sec (Y MB/sec), A ms avg latency, ...'."""
    m = re.search(
        r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency"
        r".*?(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th",
        out,
    )
    if m is None:
        raise ValueError(f"no summary in ProducerPerformance output: {out[-500:]}")
    return {"records": float(m[1]), "records_per_s": float(m[2]), "mb_per_s": float(m[3]),
            "avg_ms": float(m[4]), "p50_ms": float(m[5]), "p99_ms": float(m[7])}


def parse_consumer_perf(out: str) -> dict[str, float]:
    """The CSV header and values; ``fetch.nMsg.sec`` excludes the group rebalance."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if line.startswith("start.time"):
            head = [h.strip() for h in line.split(",")]
            vals = [v.strip() for v in lines[i + 1].split(",")]
            row = dict(zip(head, vals, strict=False))
            return {"records": float(row["data.consumed.in.nMsg"]),
                    "records_per_s": float(row["fetch.nMsg.sec"]),
                    "with_rebalance_per_s": float(row["nMsg.sec"])}
    raise ValueError(f"no CSV in ConsumerPerformance output: {out[-500:]}")


def kafka_perf(bootstrap: str, sizes: Sizes, results: Results, scratch: Path) -> None:
    settings = fresh_settings(bootstrap, "kperf")
    topic = scratch_topic("perf")
    asyncio.run(create(settings, topic))
    name = settings.topic(topic)
    pfile = payload.write_payload_file(scratch / "payload.ndjson", payload.new_run())
    linger = str(SAFE_PRODUCER["linger_ms"])
    batch = str(SAFE_PRODUCER["max_batch_size"])
    out = _java(
        "org.apache.kafka.tools.ProducerPerformance", "--topic", name,
        "--num-records", str(sizes.producer_perf_records), "--payload-file", str(pfile),
        "--throughput", "-1", "--command-property", f"bootstrap.servers={bootstrap}",
        "acks=all", "enable.idempotence=true", f"linger.ms={linger}", f"batch.size={batch}",
    )
    p = parse_producer_perf(out)
    results.add("baseline.kafka_producer_perf.records_per_s", p["records_per_s"], "records/s",
                mb_per_s=p["mb_per_s"], avg_latency_ms=p["avg_ms"], p99_latency_ms=p["p99_ms"],
                records=p["records"])
    out = _java(
        "org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap,
        "--topic", name, "--num-records", str(sizes.consumer_perf_records), "--timeout", "60000",
    )
    c = parse_consumer_perf(out)
    results.add("baseline.kafka_consumer_perf.records_per_s", c["records_per_s"], "records/s",
                records=c["records"], with_rebalance_per_s=c["with_rebalance_per_s"])


def _cpu() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


@dataclass
class Timing:
    """How many items a loop handled, in how many seconds and CPU-seconds (start-up excluded)."""

    done: int
    seconds: float
    cpu: float


class _Clock:
    def __init__(self) -> None:
        self.t0 = 0.0
        self.cpu0 = 0.0

    def start(self) -> None:
        if not self.t0:
            self.t0 = time.perf_counter()
            self.cpu0 = _cpu()

    def stop(self, done: int) -> Timing:
        return Timing(done, time.perf_counter() - self.t0, _cpu() - self.cpu0)


def _record(label: str, unit: str, t: Timing, results: Results, **extra: Any) -> None:
    results.add(f"baseline.{label}.{unit.replace('/', '_per_')}", t.done / t.seconds, unit,
                seconds=round(t.seconds, 3), n=t.done, **extra)
    results.add(f"baseline.{label}.cpu_s_per_1k", t.cpu / max(1, t.done) * 1000, "CPU-s/1k",
                note="CPU of the bench process running the loop")


def run_async(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


async def _produce(settings: Any, topic: str, values: list[bytes], keys: list[bytes]) -> Timing:
    producer = make_producer(settings)
    await producer.start()
    clock = _Clock()
    try:
        clock.start()
        futures = [await producer.send(topic, value=v, key=k) for v, k in zip(values, keys, strict=True)]
        await producer.flush()
        for f in futures:
            f.result()
        return clock.stop(len(futures))
    finally:
        await producer.stop()


async def _consume(settings: Any, topic: str, n: int) -> Timing:
    """From the partitions' assignment to the n-th record."""
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    got = 0
    clock = _Clock()
    try:
        await _assigned(consumer)
        clock.start()
        deadline = time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10000)
            for records in batch.values():
                for r in records:
                    if r.value is not None:
                        got += 1
        return clock.stop(got)
    finally:
        await consumer.stop()


async def _assigned(consumer: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    # aiokafka has no event for "partitions assigned": poll
    while not consumer.assignment() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def _transform(value: bytes) -> bytes:
    """What a minimal enrich does: parse, add an enrichment block, serialise."""
    ev = orjson.loads(value)
    names = [o["name"] for o in ev["data"].get("organizations", [])]
    ev["data"]["enrichment"] = {"resolved": [], "unresolved": names, "catalog_version": "raw",
                                "enriched_at": "2023-08-23T09:00:00Z"}
    return orjson.dumps(ev)


async def _ctp(settings: Any, src: str, dst: str, n: int, group: str) -> Timing:
    """At-least-once consume → transform → produce: commit a batch after its sends are
    acked; timed from the partitions' assignment (the group join is not counted)."""
    consumer = make_consumer(settings, src, group_id=group)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    done = 0
    clock = _Clock()
    try:
        await _assigned(consumer)
        clock.start()
        deadline = time.monotonic() + 300
        while done < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=1000)
            futures = []
            for records in batch.values():
                for r in records:
                    futures.append(await producer.send(dst, value=_transform(r.value), key=r.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
                done += len(futures)
        return clock.stop(done)
    finally:
        await producer.stop()
        await consumer.stop()


def raw_kafka(bootstrap: str, sizes: Sizes, results: Results) -> None:
    run = payload.new_run()
    settings = fresh_settings(bootstrap, "raw")
    src, dst = scratch_topic("raw-in"), scratch_topic("raw-out")
    asyncio.run(create(settings, src, dst))
    n = sizes.produce_events
    evs = list(payload.events(n, run))
    values = [orjson.dumps(e) for e in evs]
    keys = [payload.key_of(e) for e in evs]
    t = run_async(_produce(settings, settings.topic(src), values, keys))
    _record("aiokafka_produce", "events/s", t, results,
            settings="shared.kafka.make_producer (idempotent, acks=all, linger 5 ms)")
    m = min(sizes.consume_events, n)
    t = run_async(_consume(settings, settings.topic(src), m))
    _record("aiokafka_consume", "events/s", t, results,
            settings="shared.kafka.make_consumer (read_committed, no group)")
    k = min(sizes.ctp_events, n)
    ctp_settings = fresh_settings(bootstrap, "ctp")
    asyncio.run(create(ctp_settings, src, dst))
    asyncio.run(fill(ctp_settings, ctp_settings.topic(src), values[:k], keys[:k]))
    t = run_async(_ctp(ctp_settings, ctp_settings.topic(src), ctp_settings.topic(dst), k,
                  f"bench-ctp-{run}"))
    _record("consume_transform_produce", "events/s", t, results,
            settings="orjson transform; commit per batch after its sends are acked")


async def http_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int,
                    headers: dict[str, str] | None = None) -> tuple[Timing, int]:
    """``concurrency`` httpx workers POSTing the bodies in turn for ``seconds``;
    returns the timing of the 2xx answers and how many were not 2xx."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    hdrs = {"content-type": "application/json", **(headers or {})}
    ok = bad = 0
    i = 0
    clock = _Clock()
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            nonlocal ok, bad, i
            while time.perf_counter() - clock.t0 < seconds:
                body = bodies[i % len(bodies)]
                i += 1
                r = await client.post(url, content=body, headers=hdrs)
                if r.status_code < 300:
                    ok += 1
                else:
                    bad += 1
        clock.start()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.stop(ok), bad


def http_httpx(receiver_url: str, sizes: Sizes, results: Results) -> None:
    body = orjson.dumps(payload.enriched(payload.event(payload.new_run(), 0)))
    t, bad = run_async(http_loop(f"{receiver_url}/hook", [body], sizes.http_seconds,
                                 sizes.http_concurrency))
    _record("http_httpx", "requests/s", t, results,
            client=f"httpx.AsyncClient, {sizes.http_concurrency} concurrent", body_bytes=len(body))
    results.rows["baseline.http_httpx.requests_per_s"].note = (
        "httpx.AsyncClient: its pool slows down sharply as concurrency grows (encode/httpx#3215)"
        + (f"; {bad} answers not 2xx" if bad else ""))


WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "{ctype}"
wrk.headers["Authorization"] = "Bearer {key}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""


USE_WRK = True  # `--no-wrk` turns it off (to check the fallback, or compare clients)


def wrk_available() -> bool:
    return USE_WRK and shutil.which("wrk") is not None


def wrk(url: str, body: bytes, seconds: float, connections: int, *,
        ctype: str = "application/json", key: str = "") -> dict[str, Any]:
    """Run wrk against ``url`` POSTing ``body``; requests/s and non-2xx count."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        bpath = Path(tmp) / "body"
        bpath.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_LUA.format(ctype=ctype, key=key, body=bpath))
        threads = max(1, min(2, os.cpu_count() or 1, connections))
        proc = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
             "--timeout", "30s", "--latency", "-s", str(script), url],
            capture_output=True, text=True, timeout=seconds + 60,
        )
    out = proc.stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"wrk failed: {out[-800:]} {proc.stderr[-500:]}")
    total = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)  # connect, read, write, timeout counts
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)

    def ms(mm: re.Match[str] | None) -> float | None:
        if mm is None:
            return None
        return float(mm[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mm[2]]

    return {"requests_per_s": float(m[1]), "requests": float(total[1]) if total else 0.0,
            "non_2xx": float(bad[1]) if bad else 0.0, "socket_errors": errs[1] if errs else "",
            "p50_ms": ms(p50), "p99_ms": ms(p99)}


def wrk_problems(w: dict[str, Any]) -> str:
    """What went wrong in a wrk run, for a result's note ('' when nothing did)."""
    out = ""
    if w["non_2xx"]:
        out += f"; {w['non_2xx']:.0f} answers not 2xx"
    if w["socket_errors"]:
        out += f"; socket errors: {w['socket_errors']}"
    return out


def http_wrk(receiver_url: str, sizes: Sizes, results: Results) -> None:
    if not wrk_available():
        results.add("baseline.http_wrk.requests_per_s", None, "requests/s",
                    note="wrk not used: not installed (Debian: apt-get install wrk) or --no-wrk")
        return
    body = orjson.dumps(payload.enriched(payload.event(payload.new_run(), 0)))
    w = wrk(f"{receiver_url}/hook", body, sizes.wrk_seconds, sizes.http_concurrency)
    results.add("baseline.http_wrk.requests_per_s", w["requests_per_s"], "requests/s",
                note=("wrk, the fastest client here" + wrk_problems(w)), client=f"wrk, {sizes.http_concurrency} connections", p50_ms=w["p50_ms"],
                p99_ms=w["p99_ms"])


async def aiohttp_loop(url: str, bodies: list[bytes], seconds: float, concurrency: int,
                       headers: dict[str, str] | None = None) -> tuple[Timing, int]:
    """``concurrency`` aiohttp workers POSTing the bodies in turn for ``seconds``;
    returns the timing of the 2xx answers and how many were not 2xx."""
    import aiohttp

    hdrs = {"content-type": "application/json", **(headers or {})}
    ok = bad = i = 0
    clock = _Clock()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            nonlocal ok, bad, i
            while time.perf_counter() - clock.t0 < seconds:
                body = bodies[i % len(bodies)]
                i += 1
                async with session.post(url, data=body, headers=hdrs) as r:
                    await r.read()
                    if r.status < 300:
                        ok += 1
                    else:
                        bad += 1
        clock.start()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.stop(ok), bad


async def lean_loop(url: str, body: bytes, seconds: float, concurrency: int) -> tuple[Timing, int]:
    """The same loop on notify's own webhook client (services/notify/channels/http1.py)."""
    import ipaddress

    from services.notify.channels.http1 import WebhookClient
    from services.notify.ssrf import GuardedResolver

    client = WebhookClient(GuardedResolver([ipaddress.ip_network("127.0.0.0/8")]), 30.0,
                           max_idle_per_origin=concurrency)
    hdrs = [("content-type", "application/json")]
    ok = bad = 0
    clock = _Clock()

    async def worker() -> None:
        nonlocal ok, bad
        while time.perf_counter() - clock.t0 < seconds:
            r = await client.post(url, body, hdrs)
            if r.status < 300:
                ok += 1
            else:
                bad += 1
    try:
        clock.start()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return clock.stop(ok), bad
    finally:
        await client.aclose()


def http(receiver_url: str, sizes: Sizes, results: Results) -> None:
    """The raw client loop is on aiohttp, the usual asyncio HTTP client (and the one
    notify used before its own): the notify ratio is against what a Python dispatcher
    would get from a plain client loop. The same loop on notify's own client
    (``http_lean``), httpx and wrk are kept for reference."""
    body = orjson.dumps(payload.enriched(payload.event(payload.new_run(), 0)))
    t, _bad = run_async(aiohttp_loop(f"{receiver_url}/hook", [body], sizes.http_seconds,
                                     sizes.http_concurrency))
    _record("http_client", "requests/s", t, results,
            client=f"aiohttp.ClientSession, {sizes.http_concurrency} concurrent",
            body_bytes=len(body))
    results.rows["baseline.http_client.requests_per_s"].note = (
        f"aiohttp.ClientSession, {sizes.http_concurrency} concurrent, enriched-event body")
    t, _bad = run_async(lean_loop(f"{receiver_url}/hook", body, sizes.http_seconds,
                                  sizes.http_concurrency))
    _record("http_lean", "requests/s", t, results,
            client=f"notify's webhook client, {sizes.http_concurrency} concurrent", body_bytes=len(body))
    results.rows["baseline.http_lean.requests_per_s"].note = (
        f"notify's own webhook client (asyncio + httptools), {sizes.http_concurrency} concurrent")
    http_httpx(receiver_url, sizes, results)
    http_wrk(receiver_url, sizes, results)
