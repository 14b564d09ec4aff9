"""`python -m bench [--quick]`: baselines, stages, end to end, in one session on one broker.

Writes ``bench/results.json`` and ``BENCHMARKS.md`` (quick mode: under
``bench/scratch/quick/`` unless ``--results``/``--markdown`` say otherwise). Exits
non-zero when a measurement failed whose service is in the tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import baselines, e2e, payload, peers, report, stages, tracing
from bench.harness import (
    LOADS,
    MARKDOWN_PATH,
    RESULTS_PATH,
    SCRATCH,
    SERVICES,
    Results,
    Sizes,
    machine,
    now_iso,
    service_present,
    versions,
    write_results,
)
from bench.procs import Receiver


@dataclass
class Step:
    key: str
    names: list[str]
    needs: tuple[str, ...]
    fn: Callable[[], None]


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[tuple[str, str]]:
    """KAFKA_BOOTSTRAP_SERVERS (or --bootstrap) when given, else one local broker for the run."""
    if bootstrap:
        yield bootstrap, f"given ({bootstrap})"
        return
    from devtools.localkafka import LocalKafka

    k = LocalKafka(heap="1g", log_level="warn")
    t0 = time.monotonic()
    k.start()
    print(f"bench: local broker on {k.bootstrap} in {time.monotonic() - t0:.1f}s",
          file=sys.stderr, flush=True)
    try:
        yield k.bootstrap, "local KRaft broker (devtools.localkafka, 1 GB heap)"
    finally:
        k.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not speed")
    p.add_argument("--results", type=Path, help="where to write results.json")
    p.add_argument("--markdown", type=Path, help="where to write BENCHMARKS.md")
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                   help="an existing broker (default: KAFKA_BOOTSTRAP_SERVERS, else a local one)")
    p.add_argument("--only", help="comma-separated step keys (baselines.kafka, ingest.http, e2e, ...)")
    p.add_argument("--no-wrk", action="store_true",
                   help="drive ingest with the Python client even when wrk is installed")
    p.add_argument("--profile", metavar="STEP",
                   help="run STEP with py-spy attached to its service; writes bench/scratch/profile-*")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.for_mode(args.quick)
    baselines.USE_WRK = not args.no_wrk
    quick_dir = SCRATCH / "quick"
    results_path = args.results or (quick_dir / "results.json" if args.quick else RESULTS_PATH)
    markdown_path = args.markdown or (quick_dir / "BENCHMARKS.md" if args.quick else MARKDOWN_PATH)
    scratch = SCRATCH / f"run-{payload.new_run()}"
    scratch.mkdir(parents=True, exist_ok=True)
    payload.check_templates()
    results = Results()
    meta: dict[str, object] = {
        "machine": machine(),
        "versions": versions(),
        "command": "make bench" if not args.quick else "make bench-quick",
        "mode": "quick" if args.quick else "full",
        "date": now_iso(),
        "payload_bytes": payload.sizes(),
        "sizes": {k: v for k, v in vars(sizes).items()},
    }
    failed: list[str] = []
    t_start = time.monotonic()
    receiver = Receiver(scratch / "logs").start()
    try:
        with broker(args.bootstrap) as (bootstrap, how):
            meta["broker"] = how
            steps = [
                Step("baselines.kafka", ["baseline.kafka_producer_perf.records_per_s"], (),
                     lambda: baselines.kafka_perf(bootstrap, sizes, results, scratch)),
                Step("baselines.aiokafka", ["baseline.aiokafka_produce.events_per_s",
                                            "baseline.consume_transform_produce.events_per_s"], (),
                     lambda: baselines.raw_kafka(bootstrap, sizes, results)),
                Step("baselines.http", ["baseline.http_client.requests_per_s"], (),
                     lambda: baselines.http(receiver.url, sizes, results)),
                Step("ingest.file", ["ingest.file.events_per_s"], ("ingest",),
                     lambda: stages.ingest_file(bootstrap, sizes, results, scratch)),
                Step("ingest.http", ["ingest.http.single.requests_per_s",
                                     "ingest.http.batch100.events_per_s"], ("ingest",),
                     lambda: stages.ingest_http(bootstrap, sizes, results, scratch)),
                Step("enrich.alo", ["enrich.alo.events_per_s"], ("enrich",),
                     lambda: stages.enrich(bootstrap, sizes, results, scratch, "at_least_once")),
                Step("enrich.eos", ["enrich.eos.events_per_s"], ("enrich",),
                     lambda: stages.enrich(bootstrap, sizes, results, scratch, "exactly_once")),
                Step("peers.quix", ["peer.quix.eos.events_per_s"], ("enrich",),
                     lambda: peers.quix(bootstrap, sizes, results, scratch)),
                Step("peers.kafka_copier", ["peer.kafka_copier.eos.records_per_s"], ("enrich",),
                     lambda: peers.kafka_copier(bootstrap, sizes, results, scratch)),
                Step("peers.faust", ["peer.faust.alo.events_per_s"], ("enrich",),
                     lambda: peers.faust(bootstrap, sizes, results, scratch)),
                Step("peers.ratios", [], ("enrich",), lambda: peers.ratios(results)),
                Step("notify", ["notify.webhook.deliveries_per_s"], ("notify",),
                     lambda: stages.notify(bootstrap, sizes, results, scratch, receiver)),
                Step("insights", ["insights.events_per_s", "insights.recovery_seconds"], ("insights",),
                     lambda: stages.insights(bootstrap, sizes, results, scratch)),
                Step("notify.match", [f"notify.match.events_per_s@{n}_subscriptions" for n in (1, 1000, 10000)]
                     + ["rss_mb.notify@10000_subscriptions"], ("notify",),
                     lambda: stages.notify_match(bootstrap, sizes, results, scratch, receiver)),
                # tracing off and on, paired, per stage; not in quick mode, whose whole run
                # must fit the suite's time (run it alone with `--only tracing`)
                *([] if args.quick else [Step(
                    "tracing", [f"tracing.{s}.on_over_off" for s in SERVICES], SERVICES,
                    lambda: tracing.measure(bootstrap, sizes, results, scratch, receiver))]),
                Step("e2e", [*(f"e2e.latency.{p}_ms@{load}" for load in LOADS
                               for p in ("p50", "p99", "p999")),
                             *(f"rss_mb.{s}" for s in SERVICES)], SERVICES,
                     lambda: e2e.e2e(bootstrap, sizes, results, scratch, receiver)),
            ]
            if args.profile:
                from bench import profile

                step = next((s for s in steps if s.key == args.profile), None)
                if step is None:
                    raise SystemExit(f"no step {args.profile!r}: {[s.key for s in steps]}")
                profile.run(step.key, step.fn, scratch)
                return 0
            only = set(args.only.split(",")) if args.only else None
            for step in steps:
                if only is not None and step.key not in only:
                    continue
                absent = [s for s in step.needs if not service_present(s)]
                if absent:
                    results.missing(step.names, f"not runnable yet: services/{absent[0]}/main.py "
                                    f"is not in the tree (`anting serve {absent[0]}`)")
                    continue
                t0 = time.monotonic()
                print(f"bench: --- {step.key} ---", file=sys.stderr, flush=True)
                try:
                    step.fn()
                except Exception as exc:
                    traceback.print_exc()
                    failed.append(step.key)
                    msg = " ".join(str(exc).split())[:600]
                    results.missing([n for n in step.names if n not in results.rows],
                                    f"failed: {type(exc).__name__}: {msg}")
                print(f"bench: {step.key} took {time.monotonic() - t0:.1f}s",
                      file=sys.stderr, flush=True)
    finally:
        receiver.stop()
        if not args.profile:  # a profile run is not a measurement: it writes no results
            meta["seconds"] = round(time.monotonic() - t_start, 1)
            meta["failed_steps"] = failed
            results.finish()
            write_results(results_path, results, meta)
            doc = orjson.loads(results_path.read_bytes())
            report.write(markdown_path, doc)
            print(f"bench: wrote {results_path} and {markdown_path} in {meta['seconds']}s",
                  file=sys.stderr, flush=True)
            if not failed:
                shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0
