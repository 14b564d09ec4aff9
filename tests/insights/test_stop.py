"""insights stops on SIGTERM within 10 s in every state: starting with no broker to
talk to, running, and running when its broker stops answering (faust's shutdown waits
for the broker for ever; the process's stop bound ends it)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import pytest

from devtools.localkafka import LocalKafka, free_port
from devtools.testing import ServiceProcess, create_topics, settings_for, wait_until
from shared.runtime import EXIT_FORCED
from shared.settings import AntingSettings
from tests.insights.helpers import instance, ready

pytestmark = pytest.mark.kafka

STOP_WITHIN = 10.0


def _stop_seconds(proc: ServiceProcess) -> tuple[float, int | None]:
    """SIGTERM the process; seconds until it exited (up to 30), and its exit code."""
    assert proc.proc is not None and proc.proc.poll() is None, "it should still be running"
    t0 = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return 30.0, None
    return time.monotonic() - t0, code


def test_starting_without_a_broker_stops_on_sigterm(tmp_path: Path) -> None:
    """Its broker never answers (a port nobody listens on): SIGTERM ends it within 10 s."""
    settings = settings_for(f"127.0.0.1:{free_port()}")
    proc, _ = instance(settings, tmp_path, "nobroker")
    proc.start()
    time.sleep(4)  # well into its start: trying to reach the broker
    seconds, code = _stop_seconds(proc)
    assert seconds < STOP_WITHIN, proc.log()[-2000:]
    assert code is not None


async def test_running_stops_on_sigterm(topics: AntingSettings, tmp_path: Path) -> None:
    """Ready and idle: SIGTERM ends it cleanly (exit 0) within 10 s."""
    proc, base = instance(topics, tmp_path, "running")
    proc.start()
    try:
        await wait_until(lambda: ready(base), 90, "insights ready")
        seconds, code = await asyncio.to_thread(_stop_seconds, proc)
        assert seconds < STOP_WITHIN and code == 0, proc.log()[-2000:]
    finally:
        proc.kill()


async def test_its_broker_gone_it_still_stops_on_sigterm(tmp_path: Path) -> None:
    """Ready, then its broker SIGSTOPped (connections open, nothing answers): SIGTERM ends it
    within 10 s, by the stop bound if the graceful stop hangs (exit code 3 then)."""
    broker = LocalKafka(port=free_port(), data_dir=tmp_path / "kafka", heap="384m")
    await asyncio.to_thread(broker.start)
    proc = None
    try:
        settings = settings_for(broker.bootstrap)
        await create_topics(settings)
        proc, base = instance(settings, tmp_path, "brokergone")
        proc.start()
        await wait_until(lambda: ready(base), 90, "insights ready")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(2)
        seconds, code = await asyncio.to_thread(_stop_seconds, proc)
        assert seconds < STOP_WITHIN, proc.log()[-2000:]
        assert code in (0, EXIT_FORCED)
    finally:
        if proc is not None:
            proc.kill()
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(broker.stop)
