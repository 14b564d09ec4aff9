"""A single-node Apache Kafka broker (KRaft) on loopback, for machines without Docker.

It exists so that ``make run``, ``anting kafka``, the test suite and the benchmarks
have a real broker without Docker or a broker of one's own. The jars come from Maven
Central through ``kafka/pom.xml`` (``mvn dependency:copy-dependencies`` into the
git-ignored ``kafka/libs``); the broker runs on the JVM as a child of this process and
dies with it (PR_SET_PDEATHSIG), so an interrupted test run or a killed ``make run``
leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from devtools import REPO_ROOT, STATE_DIR
from devtools.supervisor import parent_death_signal

__all__ = [
    "KAFKA_DIR",
    "LIBS_DIR",
    "MISSING_TOOLS_HELP",
    "LocalKafka",
    "LocalKafkaError",
    "broker_answers",
    "check_tools",
    "fetch_jars",
    "free_port",
    "port_open",
    "running",
    "serve_forever",
]

KAFKA_DIR = REPO_ROOT / "kafka"
LIBS_DIR = KAFKA_DIR / "libs"
STAMP = KAFKA_DIR / ".stamp"

MISSING_TOOLS_HELP = (
    "Anting needs a Kafka broker. To run one locally it needs Java 17+ and Maven "
    "(Debian: `apt-get install openjdk-17-jre-headless maven`). Alternatively set "
    "KAFKA_BOOTSTRAP_SERVERS to an existing broker, or use `docker compose up`."
)


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched or started; the message says what to do."""


def _java_major_version() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # 'openjdk version "17.0.15" 2025-04-15' or 'java version "1.8.0_391"'
    for token in out.split('"')[1:2]:
        parts = token.split(".")
        major = int(parts[1]) if parts[0] == "1" else int(parts[0])
        return major
    return None


def check_tools() -> None:
    """Raise ``LocalKafkaError`` with one clear message (``MISSING_TOOLS_HELP``) when
    Java 17+ is missing, or Maven is and the jars are not resolved yet."""
    major = _java_major_version()
    if major is None or major < 17:
        found = "no java on PATH" if major is None else f"java {major}"
        raise LocalKafkaError(f"{MISSING_TOOLS_HELP} (found: {found})")
    if not LIBS_DIR.is_dir() and shutil.which("mvn") is None:
        raise LocalKafkaError(f"{MISSING_TOOLS_HELP} (found: no mvn on PATH)")


def _pom_digest() -> str:
    return hashlib.sha256((KAFKA_DIR / "pom.xml").read_bytes()).hexdigest()


def fetch_jars(*, quiet: bool = True) -> Path:
    """Resolve the broker's jars with Maven once (again when ``kafka/pom.xml`` changes);
    later calls download nothing. Returns ``kafka/libs``; raises ``LocalKafkaError`` when
    Java or Maven is missing or Maven fails (its output in the message when ``quiet``)."""
    check_tools()
    digest = _pom_digest()
    if LIBS_DIR.is_dir() and STAMP.is_file() and STAMP.read_text().strip() == digest:
        return LIBS_DIR
    shutil.rmtree(LIBS_DIR, ignore_errors=True)
    cmd = [
        "mvn", "-B", "dependency:copy-dependencies",
        f"-DoutputDirectory={LIBS_DIR}", "-DincludeScope=runtime",
    ]
    if quiet:
        cmd.insert(1, "-q")
    print("local-kafka: resolving Apache Kafka jars with Maven (first run only) ...",
          file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=KAFKA_DIR, capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = (proc.stdout or "")[-2000:] if quiet else ""
        raise LocalKafkaError(f"mvn could not resolve the Kafka jars:\n{detail}")
    STAMP.write_text(digest)
    return LIBS_DIR


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that this process has not
    handed out before.

    Linux may give the same ephemeral port to two binds to port 0 in a row once the first
    socket is closed, so a caller asking for the ports of several services at once could
    get one port twice (two services then fight over it). Remembering what was handed out
    rules that out within a process.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts a TCP connection on ``host:port`` within 0.3 s."""
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGTERMs the broker when we die."""
    parent_death_signal(signal.SIGTERM)
    os.setpgid(0, 0)  # its own group: a Ctrl-C at the terminal reaches us, not the JVM


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1; start() blocks until it answers.

    ``port`` is the client listener (a free one when ``None``); the controller gets a
    free port of its own. ``data_dir`` keeps the logs and metadata across starts; without
    one a temporary directory is used and removed by ``stop()``. ``heap`` is the JVM's
    ``-Xmx``/``-Xms`` (``"512m"``), ``log_level`` that of ``server.log`` in the data dir.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        log_level: str = "info",
    ) -> None:
        self.port = port or free_port()
        self.controller_port = free_port()
        self._tmp = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="anting-kafka-"))
        self.heap = heap
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``, for KAFKA_BOOTSTRAP_SERVERS."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        """The running JVM's PID, so a later start can stop one a SIGKILLed run left."""
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2), where a failed start is explained."""
        return self.data_dir / "server.log"

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={logs}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.check.interval.ms=60000",
            "log.cleaner.backoff.ms=1000",
            # a short transaction timeout so a killed transactional producer's
            # open transaction is aborted quickly and read_committed readers go on
            "transaction.max.timeout.ms=900000",
            "",
        ])

    def _kill_stale(self) -> None:
        """A broker left by a SIGKILLed run on this data dir: stop it by its PID."""
        if not self.pid_file.is_file():
            return
        # FileNotFoundError: the PID is gone (e.g. after kill()), so /proc has no entry
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(self.data_dir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
                for _ in range(50):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 90.0) -> LocalKafka:
        """Fetch the jars if needed, format the storage on first use, start the JVM and
        block until the broker answers (at most ``timeout`` seconds); returns ``self``.

        Raises ``LocalKafkaError`` when Java or Maven is missing, the jars cannot be
        resolved, formatting fails, the JVM exits, or it does not answer in time.
        """
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        props = self.data_dir / "server.properties"
        if props.is_file() and (self.data_dir / "logs" / "meta.properties").is_file():
            # restarting on existing data: keep the listener ports it was formatted with
            old = dict(
                line.split("=", 1) for line in props.read_text().splitlines() if "=" in line
            )
            self.controller_port = int(old["controller.quorum.voters"].rsplit(":", 1)[1])
            if port_open(self.controller_port):
                self.controller_port = free_port()
        props.write_text(self._properties())
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(LOG4J2.format(log=self.log_file, level=self.log_level.upper()))
        java = shutil.which("java") or "java"
        classpath = f"{libs}/*"
        jvm = [
            java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            f"-Danting.data.dir={self.data_dir}", "-cp", classpath,
        ]
        if not (self.data_dir / "logs" / "meta.properties").is_file():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                # "=" form: a urlsafe id may start with "-", which argparse would take for an option
                [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                 "-c", str(props), "--ignore-formatted"],
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting the KRaft storage failed:\n{fmt.stderr[-2000:]}")
        with open(self.data_dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(props)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        self.pid_file.write_text(str(self.proc.pid))
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
                raise LocalKafkaError(
                    f"the Kafka broker exited with code {self.proc.returncode}:\n{tail}"
                )
            if port_open(self.port) and asyncio.run(broker_answers(self.bootstrap)):
                return
            time.sleep(0.2)
        self.stop()
        raise LocalKafkaError(f"the Kafka broker did not answer within {timeout:.0f}s")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout`` seconds; a temporary data dir
        is removed. Safe to call when not started or already stopped."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.pid_file.unlink(missing_ok=True)
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the broker (for failure tests); data stays so start() can resume."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def broker_answers(bootstrap: str) -> bool:
    """True when a Kafka broker at ``bootstrap`` (``host:port[,host:port...]``) serves
    metadata, so its controller is up: one admin client connects and lists the topics,
    within about 10 s (5 s to connect, 5 s to list). Any failure, a refused connection
    or something that is not Kafka on the port, is ``False``; it never raises."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@contextlib.contextmanager
def running(port: int | None = None, data_dir: Path | None = None) -> Iterator[LocalKafka]:
    """A started ``LocalKafka`` for the ``with`` block, stopped after it; raises
    ``LocalKafkaError`` as ``LocalKafka.start`` does."""
    broker = LocalKafka(port=port, data_dir=data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def serve_forever(port: int = 9092, data_dir: Path | None = None) -> None:
    """Run a broker in the foreground until SIGINT/SIGTERM (``anting kafka``), its data in
    ``data_dir`` (``.local/kafka-<port>``). Raises ``LocalKafkaError`` when the port is
    taken or the broker cannot start."""
    data_dir = data_dir or STATE_DIR / f"kafka-{port}"
    if port_open(port):
        raise LocalKafkaError(f"127.0.0.1:{port} is already in use: is a broker running there?")
    broker = LocalKafka(port=port, data_dir=data_dir)
    t0 = time.monotonic()
    broker.start()
    print(f"local-kafka: broker ready on {broker.bootstrap} in {time.monotonic() - t0:.1f}s "
          f"(data {data_dir}, log {broker.log_file})", file=sys.stderr, flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        broker.stop()
