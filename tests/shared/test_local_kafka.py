"""The local broker launcher: an interrupted or killed test run leaves no broker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools import REPO_ROOT
from devtools.localkafka import LocalKafka, free_port

INNER = '''
import time
from pathlib import Path

def test_hold_the_broker(kafka_broker):
    """Writes the broker's PID, then waits to be interrupted."""
    _, how, handle = kafka_broker
    assert how == "local"
    Path({pidfile!r}).write_text(str(handle.proc.pid))
    time.sleep(120)
'''


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[1].split()[0] != "Z"


def _start_inner(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    pidfile = tmp_path / "broker.pid"
    test_file = REPO_ROOT / "tests" / f"test_inner_{os.getpid()}_{tmp_path.name}.py"
    test_file.write_text(INNER.format(pidfile=str(pidfile)))
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["DOCKER_HOST"] = "unix:///nonexistent"  # force the local broker
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", str(test_file)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the inner test run died before the broker started"
            time.sleep(0.2)
        assert pidfile.exists(), "the inner run never started its broker"
        time.sleep(0.2)
        return proc, int(pidfile.read_text())
    finally:
        # the inner file must not linger for the outer run to collect
        test_file.unlink(missing_ok=True)


def _wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_test_run_leaves_no_broker(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGINT (Ctrl-C) or even SIGKILL of a test run stops its broker; the next run starts clean."""
    proc, broker_pid = _start_inner(tmp_path)
    assert _alive(broker_pid)
    proc.send_signal(sig)
    proc.wait(60)
    gone = _wait_gone(broker_pid)
    if not gone:
        os.kill(broker_pid, signal.SIGKILL)  # do not leak it even when the test fails
    assert gone, f"broker {broker_pid} outlived the interrupted test run ({sig.name})"
    # the next run gets a fresh broker of its own
    (tmp_path / "next").mkdir()
    proc2, broker2 = _start_inner(tmp_path / "next")
    assert broker2 != broker_pid and _alive(broker2)
    proc2.send_signal(signal.SIGINT)
    proc2.wait(60)
    assert _wait_gone(broker2)


def test_free_port_never_hands_out_a_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux may give two binds to port 0 in a row the same port once the first socket is
    closed; free_port() skips a port it has handed out before, so the ports a test gives
    to several services are distinct."""
    import devtools.localkafka as localkafka

    ports = iter([41001, 41001, 41001, 41002])

    class FakeSocket:
        def __enter__(self) -> FakeSocket:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(ports)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(localkafka, "_HANDED_OUT", set())
    monkeypatch.setattr(localkafka.socket, "socket", FakeSocket)
    assert [localkafka.free_port(), localkafka.free_port()] == [41001, 41002]


def test_server_log_says_what_the_broker_does(tmp_path: Path) -> None:
    """The local broker's server.log holds Kafka's own INFO lines (its start, its
    listeners): the jars bind SLF4J to log4j2, so the log that ``make run`` points to
    explains a failure instead of being empty."""
    from devtools.localkafka import LocalKafka

    with LocalKafka(data_dir=tmp_path / "kafka") as kafka:
        log = kafka.log_file
        deadline = time.monotonic() + 30
        while "Kafka Server started" not in (text := log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"server.log lacks the start line:\n{text[-2000:]}"
            time.sleep(0.2)
    assert " INFO " in text
    assert "SLF4J" not in (tmp_path / "kafka" / "stdout.log").read_text()


def test_a_lone_broker_keeps_its_session_through_a_pause(tmp_path: Path) -> None:
    """One node keeps its broker session through a pause of up to 30 s (its controller would
    otherwise take every leader away for a moment, and a transaction ended then would lose
    its markers); a cluster's nodes keep Kafka's default, so a paused broker's partitions
    move to the others."""
    lone = LocalKafka(port=free_port(), data_dir=tmp_path / "one")._properties()
    assert "broker.session.timeout.ms=30000" in lone.splitlines()
    voters = {1: free_port(), 2: free_port(), 3: free_port()}
    member = LocalKafka(port=free_port(), data_dir=tmp_path / "n1", node_id=1, voters=voters)._properties()
    assert not [line for line in member.splitlines() if line.startswith("broker.session.timeout.ms")]
