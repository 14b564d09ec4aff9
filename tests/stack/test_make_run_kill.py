"""`kill -9` of `make run` itself, or its terminal closed, as a user would do it: nothing
of that run is left.

`anting run` is make's child; when make dies it gets the parent-death signal it asked
for and stops what it started (services, Prometheus, its own broker) as Ctrl-C does, so
every port is free for the next `make run`. A closed terminal hangs up make and
`anting run` together (SIGHUP to their process group): the same stop.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from devtools.localkafka import free_port

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill_9_make(make: subprocess.Popen[bytes]) -> None:
    os.kill(make.pid, signal.SIGKILL)


def _hang_up(make: subprocess.Popen[bytes]) -> None:
    os.killpg(make.pid, signal.SIGHUP)  # what a closed terminal sends its foreground group


def _kill_9_anting_run(make: subprocess.Popen[bytes]) -> None:
    # the supervisor itself, with no chance to stop anything: every service and the broker
    # it started exit on their parent-death signal (make then ends, its child gone)
    run = next(p for p in psutil.Process(make.pid).children() if " ".join(p.cmdline()).endswith("anting run"))
    os.kill(run.pid, signal.SIGKILL)


@pytest.mark.parametrize("stop", [_kill_9_make, _hang_up, _kill_9_anting_run],
                         ids=["kill -9 of make", "closed terminal", "kill -9 of anting run"])
def test_make_run_stopped_from_outside_leaves_no_process_and_frees_every_port(
    stop: Callable[[subprocess.Popen[bytes]], None], tmp_path: Path,
) -> None:
    """`make run` on ports of its own with its own broker; after `kill -9` of the make process
    (or a hang-up) every process it had started is gone within seconds, every port free."""
    ports = {name: free_port() for name in ("kafka", "ingest", "enrich", "notify", "insights", "prometheus")}
    env = dict(os.environ)
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ANTING_NOTIFY_ALLOW_NETWORKS", "ANTING_TOPIC_PREFIX",
                 "MAKEFLAGS", "MAKELEVEL"):
        env.pop(name, None)  # a broker of its own, as `make run` on a fresh shell starts
    env.update({
        "ANTING_RUN_KAFKA_PORT": str(ports["kafka"]),
        "ANTING_INGEST_PORT": str(ports["ingest"]),
        "ANTING_ENRICH_PORT": str(ports["enrich"]),
        "ANTING_NOTIFY_PORT": str(ports["notify"]),
        "ANTING_INSIGHTS_PORT": str(ports["insights"]),
        "ANTING_RUN_PROMETHEUS_PORT": str(ports["prometheus"]),
        "ANTING_RUN_STATE_DIR": str(tmp_path / "state"),
        "ANTING_RUN_SEED": str(tmp_path / "no-seed.ndjson"),  # up is enough; no need to publish
        "PYTHONUNBUFFERED": "1",
    })
    make = subprocess.Popen(
        # -o: the suite's virtualenv is installed already; a test never runs pip
        ["make", "--no-print-directory", "-C", str(REPO), "-o", ".venv/.installed",
         f"BIN={Path(sys.executable).parent}", "run"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines: list[str] = []

    def read() -> None:
        assert make.stdout is not None
        for raw in make.stdout:  # until every process holding the pipe is gone
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 150
        while not any("Ctrl-C stops everything this started" in ln for ln in lines):
            assert make.poll() is None and time.monotonic() < deadline, "\n".join(lines[-40:])
            time.sleep(0.2)
        started = psutil.Process(make.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in started]
        for wanted in (r"anting run$", r"serve ingest$", r"serve enrich$", r"serve notify$",
                       r"serve insights$", r"prometheus .*--web\.listen-address", r"java .*kafka\.Kafka "):
            assert any(re.search(wanted, c) for c in commands), (wanted, commands)

        stop(make)
        make.wait(30)
        t0 = time.monotonic()
        bound = 15 if stop is _kill_9_anting_run else 30  # a parent-death signal needs no stop of anting run's
        while (left := [p for p in started if _running(p)]) and time.monotonic() - t0 < bound:
            time.sleep(0.2)
        took = time.monotonic() - t0
        assert not left, f"still running {took:.0f}s after it: {left}\n" + "\n".join(lines[-30:])
        busy = {name: port for name, port in ports.items() if _port_open(port)}
        assert not busy, f"ports still answering: {busy}"
        reader.join(10)
        if stop is not _kill_9_anting_run:  # a supervisor killed by -9 says nothing
            assert any("stopped; nothing left running" in ln for ln in lines), "\n".join(lines[-30:])
    finally:
        if make.poll() is None:
            make.kill()
            make.wait()
        for p in started:  # only if the assertion above failed: nothing may outlive the test
            if _running(p):
                p.kill()
