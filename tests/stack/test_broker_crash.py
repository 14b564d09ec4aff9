"""A broker that dies under `make run` says why: the last lines of its server.log and
output are printed, whether it is the single local broker or a supervised cluster node."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from devtools.localkafka import LocalKafka
from devtools.stack import watch_broker
from devtools.supervisor import Child, Supervisor, last_lines


class Lines:
    """A Printer that keeps (label, message) pairs."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def say(self, label: str, message: str, style: str | None = None) -> None:
        self.lines.append((label, message))

    def child_line(self, label: str, raw: str) -> None:
        self.lines.append((label, raw.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(f"{label} | {message}" for label, message in self.lines)


def python(code: str) -> subprocess.Popen[bytes]:
    """A process standing in for the broker's JVM."""
    return subprocess.Popen([sys.executable, "-c", code])


def test_last_lines_reads_the_end_of_a_long_file(tmp_path: Path) -> None:
    """The last lines of a file far larger than what is read, whole; a missing file gives none."""
    log = tmp_path / "server.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert last_lines(log, 3) == ["line 99997", "line 99998", "line 99999"]
    assert last_lines(tmp_path / "absent.log") == []


async def test_the_single_broker_dying_prints_its_last_lines_and_stops_the_stack(tmp_path: Path) -> None:
    """The local broker `make run` started exits: its server.log and stdout tails are
    printed under `kafka`, and the stack is told to stop (exit code returned)."""
    broker = LocalKafka(port=1, controller_port=2, data_dir=tmp_path)
    broker.log_file.write_text("[x] INFO starting (kafka.Kafka)\n[y] ERROR Fatal error during "
                               "KafkaServer startup. Prepare to shutdown (kafka.server.KafkaRaftServer)\n")
    broker.stdout_file.write_text("java.lang.OutOfMemoryError: Java heap space\n")
    broker.proc = python("import sys; sys.exit(1)")
    out = Lines()
    stopping = asyncio.Event()
    rc = await asyncio.wait_for(watch_broker(broker, out, stopping, interval=0.05), 10)  # type: ignore[arg-type]
    assert rc == 1 and stopping.is_set()
    text = out.text()
    assert "exited with code 1" in text
    assert "kafka | [y] ERROR Fatal error during KafkaServer startup" in text
    assert "kafka | java.lang.OutOfMemoryError: Java heap space" in text


async def test_the_watch_ends_quietly_on_a_stop(tmp_path: Path) -> None:
    """A stop that has begun ends the watch without a word: the broker is stopped after it."""
    broker = LocalKafka(port=1, controller_port=2, data_dir=tmp_path)
    broker.proc = python("import time; time.sleep(30)")
    try:
        out = Lines()
        stopping = asyncio.Event()
        watch = asyncio.create_task(watch_broker(broker, out, stopping, interval=0.05))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        stopping.set()
        assert await asyncio.wait_for(watch, 5) is None
        assert out.lines == []
    finally:
        broker.proc.kill()
        broker.proc.wait()


async def test_a_supervised_node_dying_prints_its_log_tail(tmp_path: Path) -> None:
    """A supervised child with log files (a cluster node) that dies: its server.log and
    output tails are printed under its label before it is restarted."""
    log = tmp_path / "server.log"
    log.write_text("[z] ERROR Exiting Kafka due to fatal exception (kafka.Kafka$)\n")
    output = tmp_path / "stdout.log"
    out = Lines()
    sup = Supervisor(out, cwd=tmp_path)  # type: ignore[arg-type]
    child = Child("kafka-2", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                  env={}, restart=False, output=output, logs=(log,))
    await sup.start(child)
    await asyncio.wait_for(asyncio.gather(*sup.tasks), 10)
    text = out.text()
    assert "kafka-2 exited with code 3" in text
    assert "kafka-2 | [z] ERROR Exiting Kafka due to fatal exception (kafka.Kafka$)" in text
    assert "kafka-2 | bye" in text
