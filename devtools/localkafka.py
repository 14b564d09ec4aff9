"""Apache Kafka (KRaft) on loopback, one node or a replicated cluster, for machines without Docker.

It exists so that ``make run``, ``anting kafka``, the test suite and the benchmarks
have a real broker without Docker or a broker of one's own; ``LocalCluster`` runs
several combined broker+controller nodes with a static controller quorum
(``controller.quorum.voters``, as Kafka's own system tests configure KRaft), so that
replication, leader changes and coordinator moves can be seen on one machine. The jars come from Maven
Central through ``kafka/pom.xml`` (``mvn dependency:copy-dependencies`` into the
git-ignored ``kafka/libs``); the broker runs on the JVM as a child of this process and
dies with it (PR_SET_PDEATHSIG), so an interrupted test run or a killed ``make run``
leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
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
from typing import TYPE_CHECKING, Any

from devtools import REPO_ROOT, STATE_DIR
from devtools.supervisor import last_lines, parent_death_signal

if TYPE_CHECKING:
    from devtools.secure import SecureMaterial

__all__ = [
    "KAFKA_DIR",
    "LIBS_DIR",
    "MISSING_TOOLS_HELP",
    "SECURITY_CHOICES",
    "LocalCluster",
    "LocalKafka",
    "LocalKafkaError",
    "broker_answers",
    "check_tools",
    "cluster_brokers",
    "cluster_replication",
    "fetch_jars",
    "free_port",
    "new_cluster_id",
    "port_open",
    "running",
    "secure_material",
    "secured_lines",
    "serve_cluster_forever",
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
    # one resolution at a time: the suite's workers (pytest-xdist) each start a broker of
    # their own, and on a fresh clone each would empty and fill the same folder at once
    KAFKA_DIR.mkdir(parents=True, exist_ok=True)
    with open(KAFKA_DIR / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if LIBS_DIR.is_dir() and STAMP.is_file() and STAMP.read_text().strip() == digest:
            return LIBS_DIR  # another process resolved them while this one waited
        return _resolve(digest, quiet=quiet)


def _resolve(digest: str, *, quiet: bool) -> Path:
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


def new_cluster_id() -> str:
    """A fresh KRaft cluster id: 16 random bytes, URL-safe base64 without padding (the
    form ``kafka-storage random-uuid`` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# Kafka's lines at INFO into server.log (a broker's start, its listeners, why it stopped),
# rolled at 20 MB with two old files kept, so a long-lived data dir (make run's) stays small
LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = warn
"""


def cluster_replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers`` nodes: the
    factor is min(3, brokers); two in-sync replicas are required when it is 3, so that
    an acknowledged write survives the loss of any one broker and one broker may be down
    while writes go on (Kafka's documented production setting). Raises ``ValueError``
    for fewer than one broker."""
    if brokers < 1:
        raise ValueError(f"a cluster has at least one broker, not {brokers}")
    rf = min(3, brokers)
    return rf, (2 if rf == 3 else 1)


def _write_argfile(path: Path, args: list[str]) -> None:
    """A java launcher argument file (``java @path``) of ``args``, one quoted argument a
    line, created readable by its owner only."""
    def quoted(arg: str) -> str:
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(quoted(a) + "\n" for a in args))


class LocalKafka:
    """One KRaft broker+controller on 127.0.0.1; start() blocks until it answers.

    ``port`` is the client listener (a free one when ``None``); the controller gets a
    free port of its own. ``data_dir`` keeps the logs and metadata across starts; without
    one a temporary directory is used and removed by ``stop()``. ``heap`` is the JVM's
    ``-Xmx``/``-Xms`` (``"512m"``), ``log_level`` that of ``server.log`` in the data dir.

    As a node of a ``LocalCluster`` it is given its ``node_id``, its ``controller_port``,
    the quorum's ``voters`` (node id → controller port, all on 127.0.0.1) and the
    ``cluster_id`` every node is formatted with; the replication of the internal topics
    then follows the quorum's size (``cluster_replication``).

    With ``secure`` (a ``devtools.secure.SecureMaterial`` whose ``issue_tls`` has run)
    the client listener is SASL_SSL with SCRAM-SHA-512 users (every principal of the ACL
    table, created when the storage is formatted), the StandardAuthorizer denies what no
    ACL allows, and the controller listener takes the brokers' own PLAIN login only
    (``SecureMaterial.broker_properties`` says why). The ACLs themselves are applied
    once the broker answers, by whoever started it (``services.acls.apply_acls``).
    ``server.properties`` then holds passwords and is written 0600. Without it nothing
    differs from a plain local broker.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        log_level: str = "info",
        *,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: dict[int, int] | None = None,
        cluster_id: str | None = None,
        secure: SecureMaterial | None = None,
    ) -> None:
        self.secure = secure
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self._tmp = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="anting-kafka-"))
        self.heap = heap
        self.log_level = log_level
        self.node_id = node_id
        self._voters = voters  # None: a quorum of this node alone
        self.cluster_id = cluster_id
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def voters(self) -> dict[int, int]:
        """The controller quorum: node id → controller port on 127.0.0.1."""
        return self._voters if self._voters is not None else {self.node_id: self.controller_port}

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

    @property
    def stdout_file(self) -> Path:
        """The JVM's own output: what it says before log4j2 runs (a bad option, a
        missing class, an out-of-memory error)."""
        return self.data_dir / "stdout.log"

    def last_lines(self, n: int = 20) -> str:
        """The last ``n`` lines of ``server.log`` and of ``stdout.log``, each under its
        path, for a message saying why the broker died; ``""`` when both are empty."""
        parts = []
        for path in (self.log_file, self.stdout_file):
            lines = last_lines(path, n)
            if lines:
                parts.append(f"last {len(lines)} lines of {path}:\n" + "\n".join(lines))
        return "\n".join(parts)

    def client_options(self, principal: str = "anting-admin") -> dict[str, Any]:
        """aiokafka keyword arguments reaching this broker (as ``principal`` when it is
        secured), for the readiness checks and the tools that start it."""
        if self.secure is None:
            return {"bootstrap_servers": self.bootstrap}
        return self.secure.aiokafka_options(principal, self.bootstrap)

    def _properties(self) -> str:
        logs = self.data_dir / "logs"
        rf, min_isr = cluster_replication(len(self.voters))
        voters = ",".join(f"{n}@127.0.0.1:{p}" for n, p in sorted(self.voters.items()))
        client = "PLAINTEXT" if self.secure is None else "SASL_SSL"
        controller = "PLAINTEXT" if self.secure is None else "SASL_PLAINTEXT"
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            f"controller.quorum.voters={voters}",
            f"listeners={client}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={client}://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={client}",
            f"listener.security.protocol.map={client}:{client},CONTROLLER:{controller}",
            *(self.secure.broker_properties(client) if self.secure is not None else []),
            f"log.dirs={logs}",
            "num.partitions=1",
            # the internal topics (group offsets, transaction state) replicated like the
            # contract's own: a broker's death must not lose a commit or a transaction
            f"default.replication.factor={rf}",
            f"min.insync.replicas={min_isr}",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=10",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={min_isr}",
            "transaction.state.log.num.partitions=10",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={min_isr}",
            "unclean.leader.election.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.check.interval.ms=60000",
            "log.cleaner.backoff.ms=1000",
            # a short transaction timeout so a killed transactional producer's
            # open transaction is aborted quickly and read_committed readers go on
            "transaction.max.timeout.ms=900000",
            *self._single_node_properties(),
            "",
        ])

    def _single_node_properties(self) -> list[str]:
        """A lone broker+controller keeps its broker session through a pause of up to 30 s.
        Its controller fences a broker whose heartbeats stop for ``broker.session.timeout.ms``
        (9 s by default); when the whole process was paused (SIGSTOP, a stalled VM) it wakes
        with its own broker's session expired, and for some milliseconds every partition has
        no leader. A transaction ended in that window, by its producer or by its coordinator
        (one that timed out during the pause), loses its markers ("Couldn't find leader
        endpoint ... can be skipped"), and the producer's next commit marker then commits the
        records of an aborted transaction (seen in the fault matrix: events enriched twice
        under exactly once). One node has no other broker to lead in its place, so fencing it
        gains nothing. The price: after a SIGKILL, the restarted node's controller holds the
        old registration's session open, and the broker registers once it ends (up to 30 s;
        an hour-long session made it give up). A cluster keeps Kafka's default: a paused
        broker's partitions move to the others."""
        if len(self.voters) != 1:
            return []
        return ["broker.session.timeout.ms=30000"]

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
        self.launch(self.prepare())
        self._wait_ready(timeout)
        return self

    def launch(self, argv: list[str]) -> None:
        """Start the JVM ``argv`` (from ``prepare``) as our child, its output appended to
        ``stdout.log``, its PID in ``pid_file``; returns at once.

        Call it from a thread that lives as long as the broker should (the main thread):
        Linux sends the parent-death signal when the *thread* that forked the child ends
        (prctl(2), PR_SET_PDEATHSIG), so a broker started from a worker thread of
        ``asyncio.to_thread`` is SIGTERMed when that worker exits."""
        with open(self.stdout_file, "ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        self.pid_file.write_text(str(self.proc.pid))

    def prepare(self) -> list[str]:
        """Everything before the JVM starts: the jars, a stale broker on this data dir
        stopped, ``server.properties`` and the log config written, the storage formatted
        on first use. Returns the broker's command line (a supervisor may run it).

        Raises ``LocalKafkaError`` as ``start`` does."""
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_stale()
        props = self.data_dir / "server.properties"
        if (self._voters is None and props.is_file()
                and (self.data_dir / "logs" / "meta.properties").is_file()):
            # restarting on existing data: keep the listener ports it was formatted with
            old = dict(
                line.split("=", 1) for line in props.read_text().splitlines() if "=" in line
            )
            self.controller_port = int(old["controller.quorum.voters"].rsplit(":", 1)[1])
            if port_open(self.controller_port):
                self.controller_port = free_port()
        if self.secure is None:
            props.write_text(self._properties())
        else:  # passwords inside
            props.unlink(missing_ok=True)
            fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self._properties())
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
        marker = self.data_dir / "scram-users.sha256"
        formatted = (self.data_dir / "logs" / "meta.properties").is_file()
        if self.secure is not None and formatted:
            from devtools.secure import credentials_digest

            if not marker.is_file() or marker.read_text().strip() != credentials_digest(self.secure):
                raise LocalKafkaError(
                    f"{self.data_dir} was formatted with other SCRAM users or passwords than "
                    f"{self.secure.credentials_file} holds (or without security): remove the data "
                    "dir to start afresh, or restore that credentials file")
        if not formatted:
            cluster_id = self.cluster_id or new_cluster_id()
            # "=" form: a urlsafe id may start with "-", which argparse would take for an option
            tool = ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                    "-c", str(props), "--ignore-formatted"]
            if self.secure is None:
                fmt = subprocess.run([*jvm, *tool], capture_output=True, text=True)
            else:
                # the SCRAM passwords go in a java launcher argument file (0600, removed
                # after), not on the command line, where any user of the machine reads them
                argfile = self.data_dir / "format.args"
                _write_argfile(argfile, [*tool, *self.secure.scram_format_args()])
                try:
                    fmt = subprocess.run([*jvm, f"@{argfile}"], capture_output=True, text=True)
                finally:
                    argfile.unlink(missing_ok=True)
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting the KRaft storage failed:\n{fmt.stderr[-2000:]}")
            if self.secure is not None:
                from devtools.secure import credentials_digest

                marker.write_text(credentials_digest(self.secure) + "\n")
        return [*jvm, "kafka.Kafka", str(props)]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise LocalKafkaError(
                    f"the Kafka broker exited with code {self.proc.returncode}:\n{self.last_lines(30)}"
                )
            if port_open(self.port) and asyncio.run(broker_answers(self.bootstrap, self.client_options())):
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


class LocalCluster:
    """``size`` KRaft nodes on 127.0.0.1, each a broker and a controller, the controllers
    one static quorum (``controller.quorum.voters``), every node formatted with the same
    cluster id; ``start()`` blocks until every broker answers and is registered.

    ``ports`` are the client listeners (``size`` free ones when ``None``); each node's
    controller gets a free port, chosen once and kept in ``cluster.json`` under
    ``data_dir`` with the cluster id and the listeners, so that a restart, of one node or
    all, finds the quorum where it was (a static quorum cannot move). Node ``i`` (from 1)
    keeps its data in ``data_dir/node-<i>``. Without ``data_dir`` a temporary directory is
    used and removed by ``stop()``. ``heap`` is each JVM's.

    Raises ``LocalKafkaError`` when the nodes cannot be prepared or do not come up, and
    ``ValueError`` when ``ports`` does not name ``size`` ports.
    """

    def __init__(
        self,
        size: int = 3,
        ports: list[int] | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        log_level: str = "info",
        secure: SecureMaterial | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a cluster has at least one node, not {size}")
        if ports is not None and len(ports) != size:
            raise ValueError(f"{size} nodes need {size} ports, not {ports}")
        self._tmp = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="cluster-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self.data_dir / "cluster.json"
        if state.is_file():
            saved = json.loads(state.read_text())
            if len(saved["ports"]) != size or (ports is not None and saved["ports"] != ports):
                raise LocalKafkaError(
                    f"{self.data_dir} holds a cluster of {len(saved['ports'])} nodes on "
                    f"{saved['ports']}; remove it (its data too) or use another data dir")
            ports, controllers, cluster_id = saved["ports"], saved["controllers"], saved["cluster_id"]
        else:
            ports = ports or [free_port() for _ in range(size)]
            controllers = [free_port() for _ in range(size)]
            cluster_id = new_cluster_id()
            state.write_text(json.dumps(
                {"ports": ports, "controllers": controllers, "cluster_id": cluster_id}))
        voters = {i + 1: controllers[i] for i in range(size)}
        self.cluster_id = cluster_id
        self.nodes = [
            LocalKafka(port=ports[i], data_dir=self.data_dir / f"node-{i + 1}", heap=heap,
                       log_level=log_level, node_id=i + 1, controller_port=controllers[i],
                       voters=voters, cluster_id=cluster_id, secure=secure)
            for i in range(size)
        ]
        self.secure = secure

    @property
    def bootstrap(self) -> str:
        """Every node's listener, ``127.0.0.1:9092,127.0.0.1:9093,...``: a client reaches
        the cluster while any one of them is up."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def live_bootstrap(self) -> str:
        """The listeners of the nodes whose JVM runs now (a client asked only there gets
        an answer, not a refused connection, while a node is down)."""
        return ",".join(n.bootstrap for n in self.nodes if n.proc is not None and n.proc.poll() is None)

    def client_options(self, principal: str = "anting-admin") -> dict[str, Any]:
        """aiokafka keyword arguments reaching the whole cluster (as ``principal`` when
        it is secured)."""
        if self.secure is None:
            return {"bootstrap_servers": self.bootstrap}
        return self.secure.aiokafka_options(principal, self.bootstrap)

    def node(self, node_id: int) -> LocalKafka:
        """The node with this id (from 1); ``IndexError`` for another."""
        if not 1 <= node_id <= len(self.nodes):
            raise IndexError(f"no node {node_id} in a cluster of {len(self.nodes)}")
        return self.nodes[node_id - 1]

    def prepare(self) -> list[list[str]]:
        """Prepare every node (``LocalKafka.prepare``); returns their command lines, in
        node order, for a supervisor to run. Raises ``LocalKafkaError`` when a controller
        port of the quorum is held by something else (a static quorum cannot move)."""
        argvs = [n.prepare() for n in self.nodes]
        for n in self.nodes:
            for port in (n.port, n.controller_port):
                if port_open(port):
                    raise LocalKafkaError(
                        f"127.0.0.1:{port} (node {n.node_id} of the cluster in {self.data_dir}) "
                        "is in use: is that cluster running already?")
        return argvs

    def start(self, timeout: float = 120.0) -> LocalCluster:
        """Start every node (all at once: none is ready before a majority of the quorum
        runs) and block until ``wait_ready`` holds; returns ``self``. Raises
        ``LocalKafkaError`` when a node exits or the cluster is not ready in ``timeout``
        seconds (the nodes started are stopped then)."""
        try:
            for node, argv in zip(self.nodes, self.prepare(), strict=True):
                node.launch(argv)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every node's listener accepts connections and its broker is
        registered with the controller, as a client sees it (``cluster_brokers``), at
        most ``timeout`` seconds. Raises
        ``LocalKafkaError`` when a node we launched exits or time runs out."""
        deadline = time.monotonic() + timeout
        want = {n.node_id for n in self.nodes}
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None:
                    raise LocalKafkaError(
                        f"Kafka node {n.node_id} exited with code {n.proc.returncode}:\n{n.last_lines(30)}")
            # ask only listeners that accept connections: the client logs every refused one
            if all(port_open(n.port) for n in self.nodes) and want <= asyncio.run(
                    cluster_brokers(self.bootstrap, self.client_options())):
                return
            time.sleep(0.3)
        raise LocalKafkaError(f"the {len(self.nodes)}-node Kafka cluster was not ready within "
                              f"{timeout:.0f}s (logs: {self.data_dir}/node-*/server.log)")

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a hard failure); its data stays for ``restart``."""
        self.node(node_id).kill()

    def terminate(self, node_id: int, timeout: float = 30.0) -> None:
        """SIGTERM one node (a clean stop: it hands its leaderships over first), SIGKILL
        after ``timeout`` seconds; its data stays for ``restart``."""
        node = self.node(node_id)
        node.stop(timeout)

    def restart(self, node_id: int) -> None:
        """Start a stopped node again on its data; returns once its JVM runs (it rejoins
        and catches up on its own). Raises ``LocalKafkaError`` as ``prepare`` does."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            return
        node.launch(node.prepare())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node (SIGTERM to all, so that no broker waits on a quorum that the
        others' stop has broken; SIGKILL after ``timeout`` seconds); a temporary data dir
        is removed. Safe to call twice."""
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for n in running:
            assert n.proc is not None
            n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in running:
            assert n.proc is not None
            try:
                n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait()
        for n in self.nodes:
            n.proc = None
            n.pid_file.unlink(missing_ok=True)
        if self._tmp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def cluster_brokers(bootstrap: str, options: dict[str, Any] | None = None) -> set[int]:
    """The node ids of the brokers the cluster at ``bootstrap`` reports (its metadata:
    registered and not fenced); an empty set when none answers within about 10 s. Never
    raises. ``options``: the client's security options (``LocalCluster.client_options``)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **(options or {})},
                                request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        described = await asyncio.wait_for(admin.describe_cluster(), 5)
        return {int(b["node_id"]) for b in described.get("brokers", [])}
    except Exception:
        return set()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def broker_answers(bootstrap: str, options: dict[str, Any] | None = None) -> bool:
    """True when a Kafka broker at ``bootstrap`` (``host:port[,host:port...]``) serves
    metadata, so its controller is up: one admin client connects and lists the topics,
    within about 10 s (5 s to connect, 5 s to list). Any failure, a refused connection
    or something that is not Kafka on the port, is ``False``; it never raises.
    ``options``: the client's security options (``LocalKafka.client_options``)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **(options or {})},
                                request_timeout_ms=3000)
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


SECURITY_CHOICES = ("none", "sasl_ssl")
"""What ``anting kafka --security`` and ``ANTING_RUN_SECURITY`` take."""


def secure_material(security: str, state_dir: Path = STATE_DIR) -> SecureMaterial | None:
    """``None`` for ``security`` "none"; for "sasl_ssl" the material in
    ``state_dir/secure`` (its passwords made or read; the caller runs ``issue_tls`` once
    it knows the broker will start, so that a start refused for a taken port leaves a
    running broker's CA alone). Raises ``LocalKafkaError`` for another value."""
    if security == "none":
        return None
    if security != "sasl_ssl":
        raise LocalKafkaError(f"security must be one of {', '.join(SECURITY_CHOICES)}, not {security!r}")
    from devtools.secure import SecureMaterial

    return SecureMaterial(state_dir / "secure")


def _secured_ready(material: SecureMaterial, bootstrap: str) -> None:
    """ACLs, topics (under ANTING_TOPIC_PREFIX) and client configs of a secured broker
    that just started, and the lines saying where the configs are (never their contents)."""
    from devtools.secure import provision

    try:
        created = asyncio.run(provision(material, bootstrap, os.environ.get("ANTING_TOPIC_PREFIX", "")))
    except Exception as exc:
        raise LocalKafkaError(f"the secured broker started but could not be provisioned: {exc}") from exc
    for line in secured_lines(material, bootstrap, created):
        print(f"local-kafka: {line}", file=sys.stderr, flush=True)


def secured_lines(material: SecureMaterial, bootstrap: str, created: list[str] | None = None) -> list[str]:
    """What to tell a user of a secured local broker: the listener, where the client
    configs are, an example kcat line. Paths only, never a password."""
    from services.acls import CLIENT_PRINCIPALS

    def rel(p: Path) -> str:
        with contextlib.suppress(ValueError):
            return str(p.relative_to(Path.cwd()))
        return str(p)

    lines = [
        f"SASL_SSL (SCRAM-SHA-512; PLAIN for kcat) on {bootstrap}; ACLs applied (README, 'Kafka ACLs')"
        + (f"; topics created: {len(created)}" if created is not None else ""),
        f"client configs in {rel(material.dir)}/: kcat-<user>.conf, <user>.properties (Java), "
        f"<user>.env (KAFKA_*), CA {rel(material.ca_file)}; users: {', '.join(CLIENT_PRINCIPALS)}",
        f"e.g. kcat -F {rel(material.kcat_config('reader'))} -C -t enriched-events",
    ]
    return lines


def serve_forever(port: int = 9092, data_dir: Path | None = None, security: str = "none") -> None:
    """Run a broker in the foreground until SIGINT/SIGTERM (``anting kafka``), its data in
    ``data_dir`` (``.local/kafka-<port>``; ``.local/kafka-secure-<port>`` when secured).
    With ``security`` "sasl_ssl" its client listener is SASL_SSL (``LocalKafka``), the
    ACL table is applied, the topics are created and the client configs written to
    ``.local/secure/``. Raises ``LocalKafkaError`` when the port is taken or the broker
    cannot start."""
    material = secure_material(security)
    data_dir = data_dir or STATE_DIR / (f"kafka-{port}" if material is None else f"kafka-secure-{port}")
    if port_open(port):
        raise LocalKafkaError(f"127.0.0.1:{port} is already in use: is a broker running there?")
    if material is not None:
        material.issue_tls()
    broker = LocalKafka(port=port, data_dir=data_dir, secure=material)
    t0 = time.monotonic()
    broker.start()
    print(f"local-kafka: broker ready on {broker.bootstrap} in {time.monotonic() - t0:.1f}s "
          f"(data {data_dir}, log {broker.log_file})", file=sys.stderr, flush=True)
    if material is not None:
        try:
            _secured_ready(material, broker.bootstrap)
        except BaseException:
            broker.stop()
            raise
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


def serve_cluster_forever(size: int = 3, port: int = 9092, data_dir: Path | None = None,
                          security: str = "none") -> None:
    """Run a ``size``-node cluster in the foreground until SIGINT/SIGTERM (``anting kafka
    --brokers N``): listeners on ``port``, ``port + 1``, ..., data in ``data_dir``
    (``.local/kafka-cluster-<port>``; ``-secure-`` in the name when secured). A node that
    dies is started again on its data after a second, and the line says so. ``security``
    as ``serve_forever`` (every node presents the same certificate and knows the same
    SCRAM users). Raises ``LocalKafkaError`` when a port is taken or the cluster cannot
    start."""
    material = secure_material(security)
    ports = [port + i for i in range(size)]
    data_dir = data_dir or STATE_DIR / (f"kafka-cluster-{port}" if material is None
                                        else f"kafka-cluster-secure-{port}")
    for p in ports:
        if port_open(p):
            raise LocalKafkaError(f"127.0.0.1:{p} is already in use: is a broker running there?")
    if material is not None:
        material.issue_tls()
    cluster = LocalCluster(size, ports=ports, data_dir=data_dir, secure=material)
    t0 = time.monotonic()
    cluster.start()
    rf, min_isr = cluster_replication(size)
    print(f"local-kafka: {size}-node cluster ready in {time.monotonic() - t0:.1f}s; "
          f"bootstrap {cluster.bootstrap} (replication factor {rf}, min.insync.replicas "
          f"{min_isr}; data {data_dir})", file=sys.stderr, flush=True)
    if material is not None:
        try:
            _secured_ready(material, cluster.bootstrap)
        except BaseException:
            cluster.stop()
            raise
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop:
            for node in cluster.nodes:
                if node.proc is not None and (rc := node.proc.poll()) is not None:
                    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
                    print(f"local-kafka: kafka-{node.node_id} (pid {node.proc.pid}) {how}; "
                          "restarting in 1s", file=sys.stderr, flush=True)
                    time.sleep(1)
                    cluster.restart(node.node_id)
                    assert node.proc is not None
                    print(f"local-kafka: restarted kafka-{node.node_id} (pid {node.proc.pid})",
                          file=sys.stderr, flush=True)
            time.sleep(0.2)
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.localkafka``: resolve the broker's jars and exit (0), or say
    what is missing on stderr (2). The standard library is all it needs, so ``make run``
    resolves the jars while the virtualenv is still being installed."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m devtools.localkafka",
        description="Resolve the local Kafka broker's jars (kafka/libs) with Maven, then exit. "
                    "`anting kafka` runs the broker.")
    parser.parse_args(argv)
    try:
        print(f"Kafka jars ready in {fetch_jars()}", flush=True)
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
