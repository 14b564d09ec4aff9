"""Processes the bench runs as black boxes: ``anting serve X``, the receiver, and
psutil sampling of their memory and CPU."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from devtools import REPO_ROOT
from devtools.localkafka import free_port
from devtools.testing import ServiceProcess
from shared.settings import AntingSettings

PORT_VAR = {"ingest": "ANTING_INGEST_PORT", "enrich": "ANTING_ENRICH_PORT",
            "notify": "ANTING_NOTIFY_PORT"}
API_KEY = "bench-key"

# set by `--profile`: every service started is sampled by py-spy into this folder
PROFILE_DIR: Path | None = None
_profilers: list[subprocess.Popen[bytes]] = []


def _attach_profiler(name: str, pid: int) -> None:
    assert PROFILE_DIR is not None
    spy = Path(sys.executable).parent / "py-spy"
    out = PROFILE_DIR / f"{name}-{pid}.raw"
    with open(PROFILE_DIR / f"{name}-{pid}.py-spy.log", "ab") as log:
        _profilers.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=log, stderr=subprocess.STDOUT,
        ))


def stop_profilers() -> None:
    """py-spy writes its output when its target exits or on SIGINT."""
    while _profilers:
        p = _profilers.pop()
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class ServiceFailed(RuntimeError):
    """A service did not come up or died; the message carries its log's tail."""


class Service:
    """``anting serve NAME`` on a free port with the given topic prefix and settings."""

    def __init__(self, name: str, settings: AntingSettings, log_dir: Path, **env: str) -> None:
        self.name = name
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        env = {PORT_VAR[name]: str(self.port), "ANTING_API_KEYS": API_KEY,
               "ANTING_LOG_LEVEL": "WARNING", **env}
        self.proc = ServiceProcess(name, settings, self.log_path, **env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def tail(self, n: int = 1500) -> str:
        return self.proc.log()[-n:]

    def start(self, timeout: float) -> Service:
        self.proc.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                assert self.proc.proc is not None
                if self.proc.proc.poll() is not None:
                    raise ServiceFailed(
                        f"{self.name} exited with code {self.proc.proc.returncode}: {self.tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        if PROFILE_DIR is not None:
                            _attach_profiler(self.name, self.pid)
                        return self
                time.sleep(0.2)
        self.stop()
        raise ServiceFailed(f"{self.name} not ready within {timeout:.0f}s: {self.tail()}")

    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def stop(self) -> None:
        self.proc.terminate(timeout=20.0)
        stop_profilers()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Receiver:
    """``python -m bench.receiver`` on a free port."""

    def __init__(self, log_dir: Path, delay_ms: float = 0.0) -> None:
        self.delay_ms = delay_ms
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"receiver-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # one client for every poll: a new httpx client per call builds an SSL context
        # (~15 ms of CPU), which at 10 polls a second took a sixth of a core from the
        # services being measured
        self.http = httpx.Client(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.receiver", "--port", str(self.port),
                 "--delay-ms", str(self.delay_ms)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get(f"{self.url}/__stats", timeout=1).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"receiver did not start: {self.log_path.read_text()[-1000:]}")

    def reset(self) -> None:
        self.http.post(f"{self.url}/__reset", timeout=10)

    def stats(self) -> dict[str, int]:
        data: dict[str, int] = self.http.get(f"{self.url}/__stats", timeout=10).json()
        return data

    def arrivals(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get(f"{self.url}/__arrivals", timeout=30).json()
        return data

    def wait_count(self, n: int, timeout: float, *, ids: bool = False) -> int:
        """Wait until ``n`` requests (or distinct event ids) arrived; returns how many did."""
        deadline = time.monotonic() + timeout
        got = 0
        while time.monotonic() < deadline:
            got = self.stats()["ids" if ids else "count"]
            if got >= n:
                break
            time.sleep(0.1)
        return got

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children now, in MiB."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class Sampler:
    """Samples the RSS of some processes every ``interval`` seconds, keeping the peak."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                rss = 0
                for p in _tree(pid):
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                self.peak[name] = max(self.peak[name], rss / 2**20)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
