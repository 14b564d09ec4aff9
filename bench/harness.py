"""The shape of a benchmark run: sizes, results, the machine and versions, the output file.

Each measurement appends :class:`Result` rows; ``ratio`` is filled at the end from
the baseline measured in the same run (:data:`BASELINE_OF`). A measurement that
could not run (its service not yet in the tree, or failing) is kept with
``value: null`` and a note saying why — never a made-up number.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = REPO_ROOT / "bench" / "results.json"
MARKDOWN_PATH = REPO_ROOT / "BENCHMARKS.md"
SCRATCH = REPO_ROOT / "bench" / "scratch"

LOADS = (500, 1000, 2000)
SERVICES = ("ingest", "enrich", "notify")

# name -> (unit, the service it needs or None for a baseline)
REQUIRED: dict[str, tuple[str, str | None]] = {
    "baseline.kafka_producer_perf.records_per_s": ("records/s", None),
    "baseline.aiokafka_produce.events_per_s": ("events/s", None),
    "baseline.consume_transform_produce.events_per_s": ("events/s", None),
    "baseline.http_client.requests_per_s": ("requests/s", None),
    "ingest.file.events_per_s": ("events/s", "ingest"),
    "ingest.http.single.requests_per_s": ("requests/s", "ingest"),
    "ingest.http.batch100.events_per_s": ("events/s", "ingest"),
    "enrich.alo.events_per_s": ("events/s", "enrich"),
    "enrich.eos.events_per_s": ("events/s", "enrich"),
    "notify.webhook.deliveries_per_s": ("deliveries/s", "notify"),
    **{
        f"e2e.latency.{p}_ms@{load}": ("ms", "e2e")
        for load in LOADS
        for p in ("p50", "p99", "p999")
    },
    "rss_mb.ingest": ("MB", "ingest"),
    "rss_mb.enrich": ("MB", "enrich"),
    "rss_mb.notify": ("MB", "notify"),
}

# the baseline each figure is compared with (ratio = value / baseline value)
BASELINE_OF: dict[str, str] = {
    "baseline.aiokafka_produce.events_per_s": "baseline.kafka_producer_perf.records_per_s",
    "baseline.aiokafka_consume.events_per_s": "baseline.kafka_consumer_perf.records_per_s",
    "baseline.http_client.requests_per_s": "baseline.http_wrk.requests_per_s",
    "ingest.file.events_per_s": "baseline.aiokafka_produce.events_per_s",
    "ingest.http.single.requests_per_s": "baseline.http_wrk.requests_per_s",
    "ingest.http.single.python.requests_per_s": "baseline.http_client.requests_per_s",
    "baseline.http_httpx.requests_per_s": "baseline.http_client.requests_per_s",
    "ingest.http.batch100.events_per_s": "baseline.aiokafka_produce.events_per_s",
    "enrich.alo.events_per_s": "baseline.consume_transform_produce.events_per_s",
    "enrich.eos.events_per_s": "baseline.consume_transform_produce.events_per_s",
    "notify.webhook.deliveries_per_s": "baseline.http_client_paired.requests_per_s",
    "baseline.http_lean.requests_per_s": "baseline.http_client.requests_per_s",
    "notify.webhook.own_client.deliveries_per_s": "baseline.http_lean.requests_per_s",
    "notify.webhook_5ms.deliveries_per_s": "baseline.http_client_5ms.requests_per_s",
    "insights.events_per_s": "baseline.insights_consume.events_per_s",
    "notify.match.events_per_s@100_subscriptions": "notify.match.events_per_s@1_subscriptions",
    "notify.match.events_per_s@1000_subscriptions": "notify.match.events_per_s@1_subscriptions",
    "notify.match.events_per_s@10000_subscriptions": "notify.match.events_per_s@1_subscriptions",
    "cpu_s_per_1k.ingest": "baseline.aiokafka_produce.cpu_s_per_1k",
    "cpu_s_per_1k.enrich": "baseline.consume_transform_produce.cpu_s_per_1k",
    "cpu_s_per_1k.notify": "baseline.http_client.cpu_s_per_1k",
}

# the targets: name -> (kind, bound); "ratio>=" compares the ratio, the others the value
TARGETS: dict[str, tuple[str, float]] = {
    "ingest.file.events_per_s": ("ratio>=", 0.5),
    "ingest.http.batch100.events_per_s": (">=", 20000),
    "ingest.http.single.requests_per_s": (">=", 3000),
    "enrich.eos.events_per_s": ("ratio>=", 0.6),
    "enrich.over_peer.quix": (">=", 1.0),
    "enrich.alo.events_per_s": ("ratio>=", 0.5),
    "notify.webhook.deliveries_per_s": ("ratio>=", 0.8),
    "e2e.latency.p50_ms@1000": ("<=", 20),
    "e2e.latency.p99_ms@1000": ("<=", 60),
    "rss_mb.ingest": ("<=", 150),
    "rss_mb.enrich": ("<=", 150),
    "rss_mb.notify": ("<=", 150),
    "notify.match.events_per_s@10000_subscriptions": ("ratio>=", 0.8),
    "rss_mb.notify@10000_subscriptions": ("<=", 150),
}


@dataclass
class Sizes:
    """How much each measurement does; ``quick`` is for the test suite (seconds, not numbers)."""

    quick: bool
    producer_perf_records: int = 200_000
    consumer_perf_records: int = 200_000
    produce_events: int = 50_000
    consume_events: int = 50_000
    ctp_events: int = 100_000  # at 30,000 the raw loop ran about a second: too short to compare
    http_seconds: float = 8.0
    http_concurrency: int = 32
    wrk_seconds: float = 8.0
    # wrk connections: single events gain from many in flight (each waits for the broker's
    # ack); batches of 100 are CPU-bound in ingest, where more connections only add queueing
    wrk_single_connections: int = 64
    wrk_batch_connections: int = 16
    file_events: int = 30_000
    enrich_events: int = 100_000
    notify_events: int = 50_000
    notify_rounds: int = 3  # (raw loop, notify) pairs; the medians are reported
    insights_events: int = 100_000  # at 20,000 the fold's own start-up is most of the time measured
    e2e_seconds: float = 15.0
    e2e_drain_seconds: float = 60.0
    service_start_timeout: float = 120.0

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if not quick:
            return cls(quick=False)
        return cls(
            quick=True,
            producer_perf_records=2_000,
            consumer_perf_records=2_000,
            produce_events=1_000,
            consume_events=1_000,
            ctp_events=500,
            http_seconds=1.0,
            http_concurrency=8,
            wrk_seconds=1.0,
            wrk_single_connections=8,
            wrk_batch_connections=4,
            file_events=300,
            enrich_events=300,
            notify_events=150,
            notify_rounds=1,
            insights_events=200,
            e2e_seconds=0.5,
            e2e_drain_seconds=30.0,
            service_start_timeout=60.0,
        )


@dataclass
class Result:
    name: str
    value: float | None
    unit: str
    baseline: str | None = None
    baseline_value: float | None = None
    ratio: float | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Results:
    """The rows of one run, in the order measured."""

    def __init__(self) -> None:
        self.rows: dict[str, Result] = {}

    def add(self, name: str, value: float | None, unit: str, note: str | None = None,
            **extra: Any) -> Result:
        r = Result(name, None if value is None else round(float(value), 3), unit, note=note,
                   extra=extra)
        self.rows[name] = r
        shown = "—" if value is None else f"{value:,.2f}"
        print(f"bench: {name} = {shown} {unit}" + (f"  ({note})" if note else ""),
              file=sys.stderr, flush=True)
        return r

    def missing(self, names: list[str], why: str) -> None:
        for n in names:
            unit = REQUIRED.get(n, ("", None))[0]
            self.add(n, None, unit, note=why)

    def value(self, name: str) -> float | None:
        r = self.rows.get(name)
        return r.value if r else None

    def finish(self) -> None:
        """Fill baseline and ratio; list required names that no measurement produced."""
        for name, (unit, _) in REQUIRED.items():
            if name not in self.rows:
                self.add(name, None, unit, note="not measured in this run")
        for r in self.rows.values():
            base = r.baseline or BASELINE_OF.get(r.name)
            if base is None:
                continue
            r.baseline = base
            r.baseline_value = self.value(base)
            if r.value is not None and r.baseline_value:
                r.ratio = round(r.value / r.baseline_value, 3)

    def as_list(self) -> list[dict[str, Any]]:
        out = []
        for r in self.rows.values():
            d = asdict(r)
            if not d["extra"]:
                d.pop("extra")
            if d["note"] is None:
                d.pop("note")
            out.append(d)
        return out


def target_status(r: dict[str, Any]) -> str:
    """'met', 'short by …', or '' when the figure has no target."""
    t = TARGETS.get(r["name"])
    if t is None:
        return ""
    kind, bound = t
    v = r.get("ratio") if kind == "ratio>=" else r.get("value")
    if v is None:
        return "not measured"
    if kind in ("ratio>=", ">="):
        if v >= bound:
            return "met"
        return f"short by {(1 - v / bound) * 100:.0f}%"
    if v <= bound:
        return "met"
    if v >= 2 * bound:
        return f"over by {v / bound:,.0f}×"
    return f"over by {(v / bound - 1) * 100:.0f}%"


def target_text(name: str) -> str:
    t = TARGETS.get(name)
    if t is None:
        return ""
    kind, bound = t
    if kind == "ratio>=":
        return f"≥ {bound:g}× baseline"
    return f"{kind.replace('>=', '≥').replace('<=', '≤')} {bound:,g}"


def service_present(service: str) -> bool:
    """Whether ``anting serve <service>`` has an entry module in the tree yet."""
    try:
        return importlib.util.find_spec(f"services.{service}.main") is not None
    except (ImportError, ValueError):
        return False


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _dist(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _java() -> str | None:
    with contextlib.suppress(OSError):
        out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        m = re.search(r'version "([^"]+)"', out)
        return m.group(1) if m else None
    return None


def _kafka_version() -> str | None:
    libs = REPO_ROOT / "kafka" / "libs"
    for jar in sorted(libs.glob("kafka-clients-*.jar")):
        return jar.stem.removeprefix("kafka-clients-")
    return None


def _wrk() -> str | None:
    with contextlib.suppress(OSError):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
        return m.group(1) if m else None
    return None


def versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version(), "kafka": _kafka_version(),
                         "java": _java(), "wrk": _wrk()}
    for d in ("aiokafka", "faust-streaming", "fastapi", "uvicorn", "uvloop", "httpx", "aiohttp",
              "orjson", "pydantic", "psutil", "py-spy"):
        v[d] = _dist(d)
    return v


def write_results(path: Path, results: Results, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": meta["machine"],
        "versions": meta["versions"],
        "run": {k: v for k, v in meta.items() if k not in ("machine", "versions")},
        "results": results.as_list(),
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
