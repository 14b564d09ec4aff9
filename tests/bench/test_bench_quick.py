"""The benchmark harness at tiny sizes, so `make bench` cannot rot unnoticed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from bench.harness import BASELINE_OF, REQUIRED, service_present
from devtools import REPO_ROOT


def test_quick_bench_reports_every_required_figure(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`python -m bench --quick` writes every required result: a positive value (and a ratio
    where a baseline exists), or null only while the stage's service is not in the tree."""
    results = tmp_path / "results.json"
    markdown = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    # its own process group: past the hang guard the whole group is killed, the services
    # and receivers the bench started with it (a kill of the bench alone left them running)
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--results", str(results),
         "--markdown", str(markdown)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = bench.communicate(timeout=600)  # a hang guard, not a target
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        out, err = bench.communicate()
        raise AssertionError(f"the quick bench ran past 600 s:\n{err[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bench.pid, signal.SIGKILL)  # anything of the group still alive
    proc = subprocess.CompletedProcess(bench.args, bench.returncode, out, err)
    assert results.is_file(), proc.stderr[-3000:]
    doc = orjson.loads(results.read_bytes())
    assert {"machine", "versions", "results"} <= doc.keys()
    rows = {r["name"]: r for r in doc["results"]}
    problems = []
    for name, (unit, needs) in REQUIRED.items():
        r = rows.get(name)
        if r is None:
            problems.append(f"{name}: missing")
            continue
        assert r["unit"] == unit, name
        absent = needs is not None and not all(
            service_present(s) for s in (("ingest", "enrich", "notify") if needs == "e2e" else (needs,))
        )
        if r["value"] is None:
            if not absent:
                problems.append(f"{name}: no value although its service exists: {r.get('note')}")
            continue
        if not r["value"] > 0:
            problems.append(f"{name}: value {r['value']} is not positive")
        base = r.get("baseline") or BASELINE_OF.get(name)
        if base and rows.get(base, {}).get("value") and not (r.get("ratio") and r["ratio"] > 0):
            problems.append(f"{name}: no ratio to {base}")
    assert not problems, "\n".join(problems) + "\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = markdown.read_text()
    assert "| `ingest.http.batch100.events_per_s` |" in text
