"""Helpers the tests and benchmarks share, written once instead of copied into each
test: choosing a real broker, isolating topics per test, reading topics back and
producing to them, running a service process, waiting for a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools import REPO_ROOT
from devtools.localkafka import LocalKafka, LocalKafkaError, free_port
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import AntingSettings, KafkaSettings
from shared.stage import Guarantee, Stage
from shared.topics import ALL_TOPICS, DEAD_LETTERS

__all__ = [
    "NoBrokerError",
    "Record",
    "ServiceProcess",
    "broker_for_tests",
    "concurrent_stage",
    "create_topics",
    "docker_answers",
    "env_for",
    "produce",
    "produce_raw_header",
    "read_topic",
    "set_topic_config",
    "settings_for",
    "wait_until",
]


class NoBrokerError(RuntimeError):
    """No broker could be had: the test run fails and says why (never skips)."""


def docker_answers() -> bool:
    """True when a Docker engine answers (so testcontainers can start Kafka)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


#: the local test broker's JVM heap (see broker_for_tests)
TEST_BROKER_HEAP = "1536m"


@contextlib.contextmanager
def broker_for_tests() -> Iterator[tuple[str, str, Any]]:
    """Yield (bootstrap, how, handle): KAFKA_BOOTSTRAP_SERVERS, else testcontainers
    when Docker answers, else the local broker on a free port."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env, "KAFKA_BOOTSTRAP_SERVERS", None
        return
    if docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server(), "testcontainers", container
        return
    try:
        # every test makes topics of its own (a prefix each): a whole run holds thousands of
        # partitions, which 512 MB of heap does not keep (the broker ran out of memory)
        broker = LocalKafka(heap=TEST_BROKER_HEAP).start()
    except LocalKafkaError as exc:
        raise NoBrokerError(str(exc)) from exc
    try:
        yield broker.bootstrap, "local", broker
    finally:
        # a test run's broker holds thousands of throwaway partitions: its controlled
        # shutdown took most of a minute at the end of each run, for data deleted next
        broker.stop(timeout=2.0)


def settings_for(bootstrap: str, prefix: str | None = None) -> AntingSettings:
    """Settings on ``bootstrap`` with a fresh topic prefix (each test gets its own topics)."""
    prefix = prefix if prefix is not None else f"t{uuid.uuid4().hex[:8]}."
    return AntingSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap), topic_prefix=prefix)


def env_for(settings: AntingSettings, **extra: str) -> dict[str, str]:
    """Environment for a service subprocess using these settings: this process's own,
    with the broker, the topic prefix and a free notify port set, then ``extra``."""
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "ANTING_TOPIC_PREFIX": settings.topic_prefix,
        "PYTHONUNBUFFERED": "1",
        # `anting subscriptions add` asks a running notify first: a test's CLI must not find
        # a stack someone runs on the default port (its topics are not the test's)
        "ANTING_NOTIFY_PORT": str(free_port()),
    })
    env.update(extra)
    return env


async def create_topics(settings: AntingSettings) -> None:
    """Create every registered topic under ``settings``' prefix (those missing)."""
    await ensure_topics(settings, ALL_TOPICS)


@dataclass
class Record:
    """One record read back: where it sits, its bytes, headers and timestamp (ms since epoch)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int


async def read_topic(
    settings: AntingSettings,
    topic: str,
    *,
    expect: int | None = None,
    timeout: float = 30.0,
    idle: float = 2.0,
) -> list[Record]:
    """Read a topic from the start with ``read_committed`` until ``expect`` records
    arrived (or, without ``expect``, until nothing new came for ``idle`` seconds)."""
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    out.append(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                      list(r.headers or ()), r.timestamp))
            if batch:
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                # keep reading briefly: more than expected is a finding too
                if time.monotonic() - last_new > 0.5:
                    break
            elif expect is None and time.monotonic() - last_new > idle:
                break
    finally:
        await consumer.stop()
    return out


async def produce(
    settings: AntingSettings,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
) -> None:
    """Send ``values`` to ``topic`` in order (``keys[i]`` with ``values[i]`` when given)
    and wait until every one is acknowledged."""
    producer = make_producer(settings)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send(topic, value=value, key=keys[i] if keys else None)
        await producer.flush()
    finally:
        await producer.stop()


async def set_topic_config(settings: AntingSettings, topic: str, config: dict[str, str],
                           timeout: float = 30.0) -> None:
    """Change ``topic``'s configuration (``IncrementalAlterConfigs``-like: the given keys
    only, via AlterConfigs with the topic's other overrides kept) and wait until the broker
    reports the new values: a broker applies a change from the metadata log a moment
    later, and a write made before then is judged by the old value."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from shared.kafka import make_admin

    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
        deadline = time.monotonic() + timeout
        while True:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, dict.fromkeys(config))])
            entries = {e[0]: e[1] for res in response.resources for e in res[4]}
            if all(entries.get(k) == v for k, v in config.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: {config} not applied in {timeout}s (have {entries})")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


class _WireName(str):
    """A header name whose bytes on the wire are ``raw``, not the UTF-8 of the text: aiokafka's
    Python batch builder asks the name for its bytes with ``encode``."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _WireName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


async def produce_raw_header(
    settings: AntingSettings, topic: str, value: bytes, *, key: bytes | None = None,
    header_name: bytes = b"x-\xff\xfe", header_value: bytes = b"v", partition: int | None = None,
) -> int:
    """Write one record whose header *name* is ``header_name`` as bytes, not UTF-8 (what
    ``kcat -H $'x-\\xff\\xfe=v'`` writes; no client library writes one); returns the
    partition it went to. Built with aiokafka's Python batch builder (the C one takes only
    text) on a plain producer (not idempotent: the batch carries no producer id)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    from shared.kafka import partition_by_key

    producer = AIOKafkaProducer(**settings.kafka.client_options(), acks="all")
    await producer.start()
    try:
        parts = sorted(await producer.partitions_for(topic))
        if partition is None:
            partition = partition_by_key(key, parts, parts) if key is not None else parts[0]
        batch = producer.create_batch()
        batch._builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, 1 << 20)
        batch.append(key=key, value=value, timestamp=None, headers=[(_WireName(header_name), header_value)])
        batch.close()
        await (await producer.send_batch(batch, topic, partition=partition))
        return partition
    finally:
        await producer.stop()


class ServiceProcess:
    """``anting serve NAME`` as a child process (for kill and restart tests)."""

    def __init__(self, name: str, settings: AntingSettings, log_path: Path, **env: str) -> None:
        self.name = name
        self.env = env_for(settings, **env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start it, its output appended to ``log_path``; returns ``self``."""
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "anting"), "serve", self.name],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )
        return self

    def kill(self) -> None:
        """SIGKILL it and reap it (nothing when not running)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM it, SIGKILL after ``timeout`` seconds; its exit code (``None`` when
        never started)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def log(self) -> str:
        """What it has written so far ("" before it wrote anything)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 50 ms until it holds; ``AssertionError`` naming ``what`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def concurrent_stage(settings: AntingSettings, topic: str, group: str, *, name: str = "consumer",
                     outputs: tuple[str, ...] = (), max_in_flight: int = 10,
                     commit_interval_ms: int = 100, stop_grace_ms: int = 1000) -> Stage:
    """A concurrent stage (:attr:`Guarantee.AT_LEAST_ONCE_CONCURRENT`) reading ``topic`` in
    ``group`` (under the settings' prefix) and writing ``outputs``, tuned for tests:
    commits every 100 ms, one second's grace on stopping."""
    return Stage(name=name, inputs=(topic,), outputs=outputs,
                 dead_letters=settings.topic(DEAD_LETTERS), group=f"{settings.topic_prefix}{group}",
                 guarantee=Guarantee.AT_LEAST_ONCE_CONCURRENT, max_in_flight=max_in_flight,
                 commit_interval_ms=commit_interval_ms, stop_grace_ms=stop_grace_ms)
