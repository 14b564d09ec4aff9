"""Kafka clients with the safe settings set once, and idempotent topic creation.

aiokafka's defaults are unsafe for Anting (producer ``acks=1`` without
idempotence; consumer auto-commit, ``latest``, ``read_uncommitted``): every
service gets its clients from here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from shared.aiokafka_ext import close_unflushed, install_lenient_records, refresh_metadata
from shared.settings import AntingSettings
from shared.topics import ALL_TOPICS, Topic

log = logging.getLogger(__name__)

# every consumer in a process that imports this module (faust's too) reads a header name
# that is not UTF-8 instead of stopping its partition for good (shared/aiokafka_ext.py)
install_lenient_records()

# What aiokafka logs at warning or error while a cluster starts, a broker restarts, a
# leader or coordinator moves: conditions its clients retry by themselves (Kafka's
# retriable errors). A newcomer reads "error ... GroupCoordinatorNotAvailableError" as
# broken, and a broker's restart otherwise floods every service with one line per
# reconnect attempt (every 50 ms).
_TRANSIENT = re.compile(
    r"GroupCoordinatorNotAvailable|CoordinatorNotAvailable|CoordinatorLoadInProgress|NotCoordinator"
    r"|NotEnoughReplicas|NotLeaderForPartition|NotLeaderOrFollower|LeaderNotAvailable"
    r"|UnknownTopicOrPartition|NodeNotReady|KafkaConnectionError|RequestTimedOut"
    r"|Connect call failed|Connection refused|Unable connect to|Unable to (?:request|update) metadata"
    r"|is either not started or not valid|Marking the coordinator dead|marking coordinator dead"
    # the broker refusing this client or principal (SASL, TLS trust, ACLs): the service says
    # so itself, once per 30 s, naming who may not do what (shared/kafka_access.py); aiokafka
    # would log it on every attempt
    r"|(?i:not authorized)|AuthorizationFailed|AUTHORIZATION_FAILED|SaslAuthenticationFailed"
    r"|Authentication failed|CERTIFICATE_VERIFY_FAILED|certificate verify failed"
)
_AIOKAFKA_LOGGERS = (
    "aiokafka", "aiokafka.client", "aiokafka.conn", "aiokafka.cluster",
    "aiokafka.consumer.consumer", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer", "aiokafka.producer.sender", "aiokafka.admin.client",
)


class TransientKafkaLogs(logging.Filter):
    """Logs a retriable Kafka condition (a coordinator or leader not there yet or moving,
    not enough in-sync replicas yet, a broker unreachable while it restarts), or a refusal
    the service explains in its own line (authentication, TLS trust, ACLs), at info, not
    warning or error, and the same condition (its message with the numbers masked) once
    per ``every`` seconds per logger; every other record passes untouched. Warnings and
    errors then mean something is wrong: a condition that lasts shows up in what the
    service itself logs (readiness, a failed publish, a stalled commit)."""

    def __init__(self, every: float = 30.0) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False to drop a repeat; true otherwise (a transient one lowered to info)."""
        if record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL:
            return True
        msg = record.getMessage()
        if not _TRANSIENT.search(msg):
            return True
        key = (record.name, re.sub(r"\d+", "#", msg)[:120])
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            return False
        self._last[key] = now
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_TRANSIENT_FILTER = TransientKafkaLogs()


def quiet_transient_kafka_logs() -> None:
    """Attach ``TransientKafkaLogs`` to aiokafka's loggers once (a logger's filters see
    only the records logged on it, so each module's logger gets it). Every client made
    here calls it; idempotent."""
    for name in _AIOKAFKA_LOGGERS:
        logger = logging.getLogger(name)
        if _TRANSIENT_FILTER not in logger.filters:
            logger.addFilter(_TRANSIENT_FILTER)

@functools.lru_cache(maxsize=1 << 16)
def _murmur2(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


_RANDOM = DefaultPartitioner()


def partition_by_key(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key: the partition the Java client
    and kcat pick too) with each key's hash remembered. aiokafka's murmur2 is pure
    Python and keys repeat (a subject's events, a subscription's records): measured
    12% of ``anting publish``'s CPU and 4% of notify's before the cache."""
    if key is None:
        return int(_RANDOM(key, all_partitions, available))
    return all_partitions[_murmur2(key) % len(all_partitions)]


SAFE_PRODUCER: dict[str, Any] = {
    "partitioner": partition_by_key,
    "enable_idempotence": True,
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 256 * 1024,
    "compression_type": None,
    "request_timeout_ms": 30000,
}

SAFE_CONSUMER: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "isolation_level": "read_committed",
    "max_poll_interval_ms": 300000,
}


def make_producer(settings: AntingSettings, **overrides: object) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer; pass ``transactional_id`` for transactions."""
    quiet_transient_kafka_logs()
    return AIOKafkaProducer(**settings.kafka.client_options(), **{
        **SAFE_PRODUCER, "request_timeout_ms": settings.kafka.request_timeout_ms, **overrides})


class RenewingProducer:
    """An idempotent producer that replaces itself after any write of it failed: every
    method and attribute is the current ``AIOKafkaProducer``'s, made by ``factory``.

    Why: an idempotent producer numbers each partition's batches; when one batch fails (the
    broker refused it, or it timed out) its numbers are spent and every later batch to that
    partition fails ``OutOfOrderSequenceNumber``, for as long as the producer lives (aiokafka
    0.14 neither resets them nor bumps the epoch, as Java's producer does). A new producer
    has a new producer id, so its numbers start again. The failed writes themselves are the
    caller's to write again (a stage's records stay uncommitted until they are).
    ``renewals`` counts the replacements. Sends made while the new producer starts go to
    the old one; the old one is stopped in the background, bounded."""

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self._producer = factory()
        self._renewing: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._started = False
        self.renewals = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self._renewing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._renewing
        await self._producer.stop()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, timestamp_ms: int | None = None,
                   headers: Iterable[tuple[str, bytes | None]] | None = None) -> asyncio.Future[Any]:
        """``AIOKafkaProducer.send``; a failed write renews the producer."""
        producer = self._producer
        fut: asyncio.Future[Any] = await producer.send(topic, value, key, partition, timestamp_ms, headers)
        fut.add_done_callback(lambda f: self._settled(f, producer))
        return fut

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        """``AIOKafkaProducer.send_batch``; a failed write renews the producer."""
        producer = self._producer
        fut: asyncio.Future[Any] = await producer.send_batch(batch, topic, partition=partition)
        fut.add_done_callback(lambda f: self._settled(f, producer))
        return fut

    def _settled(self, fut: asyncio.Future[Any], producer: AIOKafkaProducer) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        if producer is self._producer and self._started and self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._renew(fut.exception()))

    async def _renew(self, cause: BaseException | None) -> None:
        old = self._producer
        try:
            new = self._factory()
            await new.start()
        except Exception:
            # the broker away: the writes are retried by their stages, and the next failure
            # tries the replacement again
            log.info("could not replace the producer after a failed write yet", exc_info=True)
            self._renewing = None
            return
        self._producer = new
        self.renewals += 1
        self._renewing = None
        log.info("producer replaced after a failed write (a new producer id: the old one's "
                 "sequence numbers were spent)", extra={"error": type(cause).__name__})

        async def retire() -> None:
            try:
                await asyncio.wait_for(old.stop(), 10.0)
            except Exception:  # TimeoutError included: no broker takes the flush
                await abandon_producer(old)

        task = asyncio.get_running_loop().create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)


def make_consumer(
    settings: AntingSettings, *topics: str, group_id: str | None, **overrides: object
) -> AIOKafkaConsumer:
    """A manual-commit, ``earliest``, ``read_committed`` consumer."""
    quiet_transient_kafka_logs()
    return AIOKafkaConsumer(
        *topics,
        group_id=group_id,
        **settings.kafka.client_options(),
        **{**SAFE_CONSUMER, **overrides},
    )


async def cluster_answers(producer: AIOKafkaProducer) -> None:
    """Ask the cluster for its metadata on ``producer``'s connections (readiness: a broker
    answers). Raises ``KafkaError`` or ``OSError`` when none does; the caller bounds the
    wait. aiokafka (0.14) has no public call for this; ``producer.client`` is its client
    (public by name, undocumented), whose ``fetch_all_metadata`` asks for every topic and
    creates none."""
    await producer.client.fetch_all_metadata()


def _leaderless(metadata: Any, topics: Collection[str] | None) -> list[str]:  # Any: aiokafka types no ClusterMetadata
    """The partitions of ``topics`` (all when None) in a metadata answer (aiokafka's
    ``ClusterMetadata``) that have no leader, as ``topic[partition]``; every one when it
    names no broker."""
    if not metadata.brokers():
        return ["(no broker)"]
    out = []
    for topic in metadata.topics(exclude_internal_topics=False):
        if topics is not None and topic not in topics:
            continue
        led = metadata.available_partitions_for_topic(topic) or set()
        out += [f"{topic}[{p}]" for p in sorted((metadata.partitions_for_topic(topic) or set()) - led)]
    return out


async def leaders_settled(producer: AIOKafkaProducer, timeout: float, interval: float = 0.2,
                          topics: Collection[str] | None = None) -> list[str]:
    """Wait until the cluster, asked on ``producer``'s connections, names a leader for every
    partition of ``topics`` (every topic, internal ones included, when None), at most
    ``timeout`` seconds; returns the partitions still without one then (``[]`` once
    settled). Never raises.

    Why: a transaction's end is written by its coordinator as a marker on each partition
    the transaction wrote, and a coordinator that finds no leader for a partition at that
    moment *skips* its marker ("Couldn't find leader endpoint ... likely deleted already and
    hence can be skipped"). Such a window opens when a broker wakes from a pause its
    controller counted as death (fenced; for a lone node, every partition at once), which
    is also when a transaction is most likely to be aborted. A skipped abort marker leaves
    the aborted records open, and the producer's next commit marker on that partition
    commits them. So an abort waits for leaders first (:class:`shared.stage.StageRunner`)."""
    deadline = asyncio.get_running_loop().time() + timeout
    missing: list[str] = ["(not asked)"]
    while True:
        try:
            missing = _leaderless(await asyncio.wait_for(producer.client.fetch_all_metadata(), interval * 5), topics)
        except (KafkaError, OSError, TimeoutError) as exc:
            missing = [f"(no answer: {type(exc).__name__})"]
        if not missing or asyncio.get_running_loop().time() + interval > deadline:
            return missing
        await asyncio.sleep(interval)


async def abandon_producer(producer: AIOKafkaProducer, timeout: float = 2.0) -> None:
    """End a producer whose ``stop()`` timed out because no broker answers: its sender and
    connections are closed without the flush that cannot happen
    (:func:`shared.aiokafka_ext.close_unflushed`). Never raises."""
    await close_unflushed(producer, timeout)


async def wait_for_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 10.0
) -> list[TopicPartition]:
    """The partitions of ``topic``, in order, as the started ``consumer`` sees them; for a
    topic created a moment ago (its metadata not on every listener yet) the metadata is
    fetched again every 0.1 s for up to ``timeout`` seconds. An empty list when the topic
    did not show up in that time: the caller decides whether that is an error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if loop.time() >= deadline:
            return []
        await asyncio.sleep(0.1)
        await refresh_metadata(consumer)


def make_admin(settings: AntingSettings, **overrides: object) -> AIOKafkaAdminClient:
    """An admin client on the settings' cluster (connection and security options)."""
    quiet_transient_kafka_logs()
    return AIOKafkaAdminClient(**settings.kafka.client_options(), **overrides)


class TopicMismatchError(RuntimeError):
    """Topics exist whose partitions or replication differ from the contract and cannot be
    fixed from here; ``problems`` has one line per topic, naming it, what it has, what the
    contract wants and how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("topics differ from the contract (shared/topics.py):\n  " + "\n  ".join(problems))
        self.problems = problems


#: Kafka's internal topics: created by the brokers (offsets.topic.replication.factor,
#: transaction.state.log.*), so checked and reported, never created or changed here.
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs' config_source of a topic's own override


def contract_replication(brokers: int) -> tuple[int, int | None]:
    """(replication factor, min.insync.replicas or ``None`` for the broker's default) the
    contract wants on a cluster of ``brokers``: RF = min(3, brokers), and two in-sync
    replicas when RF is 3, so that an acknowledged write outlives any one broker while
    one broker may be down and writes go on (Kafka's documented production setting)."""
    rf = max(1, min(3, brokers))
    return rf, (2 if rf == 3 else None)


async def cluster_replication(settings: AntingSettings) -> int:
    """The replication factor the contract wants on the settings' cluster right now
    (``contract_replication`` of the brokers it reports), for a client that creates topics
    itself and needs a number (faust's ``topic_replication_factor``)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        return contract_replication(len((await admin.describe_cluster()).get("brokers", [])) or 1)[0]
    finally:
        await admin.close()


async def ensure_topics(
    settings: AntingSettings, topics: Iterable[Topic] = ALL_TOPICS, replication: int | None = None,
    *, ready_timeout: float = 30.0, retry_for: float = 60.0,
) -> list[str]:
    """``ensure_topics_once``, again (a new admin client, after a second) while it fails
    with a retriable error, for up to ``retry_for`` seconds: a broker restarting while a
    service starts (the admin's chosen node not ready, a connection closed) must not make
    the service exit. Raises the last error after that, and ``TopicMismatchError`` at once;
    a connection the broker refuses (authentication, TLS trust: waiting does not help)
    raises :class:`shared.kafka_access.AccessRefused` at once, saying why."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from shared.kafka_access import AccessRefused, diagnose_connection

    topics = list(topics)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    while True:
        try:
            return await ensure_topics_once(settings, topics, replication, ready_timeout=ready_timeout)
        except (KafkaError, OSError) as exc:
            retriable = isinstance(exc, (KafkaConnectionError, OSError)) or getattr(exc, "retriable", False)
            if not retriable or loop.time() >= deadline:
                raise
            line = await diagnose_connection(settings.kafka)
            if line is not None:
                raise AccessRefused(line) from exc
            log.info("the cluster did not answer the topic check; retrying",
                     extra={"error": f"{type(exc).__name__}: {exc}"})
            await asyncio.sleep(1.0)


async def ensure_topics_once(
    settings: AntingSettings, topics: Iterable[Topic] = ALL_TOPICS, replication: int | None = None,
    *, ready_timeout: float = 30.0,
) -> list[str]:
    """Create the registered topics that do not exist yet, check the ones that do, and
    wait until every partition of them has a leader and enough in-sync replicas to take
    an ``acks=all`` write (at most ``ready_timeout`` seconds; then it goes on, logging
    which partitions lack them). Returns the names created.

    The replication factor is ``replication`` when given, else ``contract_replication``
    of the brokers the cluster reports; with RF 3, ``min.insync.replicas`` is 2. An
    existing topic whose ``min.insync.replicas`` is lower is fixed (its other overrides
    kept) and a warning says so; one whose partition count differs from the contract or
    whose replication is below the wanted factor raises ``TopicMismatchError`` naming it
    (moving replicas or repartitioning keys is an operator's decision, not a start-up's).
    The internal offsets and transaction-state topics, when they exist, are reported the
    same way (a warning: the brokers' configuration sets them). Before returning it asks
    for a group and a transaction coordinator until both answer, which makes the brokers
    create those internal topics, and waits for them like the others: a service's first
    ``FindCoordinator`` then finds one instead of logging COORDINATOR_NOT_AVAILABLE.
    """
    topics = list(topics)
    admin = make_admin(settings)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
        rf, min_isr = contract_replication(brokers)
        if replication is not None:
            rf, min_isr = replication, (2 if replication >= 3 else None)
        by_name = {settings.topic(t): t for t in topics}
        existing = set(await admin.list_topics())

        def config_of(t: Topic) -> dict[str, str]:
            return {**t.topic_config(), **({"min.insync.replicas": str(min_isr)} if min_isr else {})}

        wanted = [
            NewTopic(name=name, num_partitions=t.partitions, replication_factor=rf,
                     topic_configs=config_of(t))
            for name, t in by_name.items() if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another instance created it first: checked below like any other
            # topic metadata reaches every listener shortly after creation
            for _ in range(50):
                if {n.name for n in wanted} <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
            log.info("topics created", extra={"topics": [n.name for n in wanted],
                                              "replication_factor": rf, "min_insync_replicas": min_isr})
        created = {n.name for n in wanted}
        checked = [n for n in by_name if n not in created]
        internal = [n for n in INTERNAL_TOPICS if n in existing]
        described = {d["topic"]: d for d in await admin.describe_topics([*checked, *internal])} \
            if checked or internal else {}
        problems: list[str] = []
        for name in internal:
            have = _replication(described.get(name))
            if have is not None and have < rf:
                log.warning("an internal topic has fewer replicas than the cluster's topics: a broker's "
                            "death can lose what it holds; set the brokers' "
                            "offsets.topic.replication.factor / transaction.state.log.replication.factor",
                            extra={"topic": name, "replication_factor": have, "wanted": rf})
        for name in checked:
            t, d = by_name[name], described.get(name)
            if d is None or not d.get("partitions"):
                continue  # not visible yet; the next start checks it
            have_parts, have_rf = len(d["partitions"]), _replication(d) or 0
            if have_parts != t.partitions:
                problems.append(f"{name}: {have_parts} partitions, the contract has {t.partitions} "
                                "(keys would land elsewhere; recreate it, or change the contract)")
            if have_rf < rf:
                problems.append(f"{name}: replication factor {have_rf}, wanted {rf} on {brokers} "
                                "broker(s) (add replicas with kafka-reassign-partitions, or recreate it)")
        if problems:
            raise TopicMismatchError(problems)
        if checked:
            await _fix_min_insync(admin, [n for n in checked if (_replication(described.get(n)) or 0) >= 3])
        await _until_coordinators(admin, ready_timeout)
        # named only once they exist: asking a broker with auto.create.topics.enable for
        # a missing topic's metadata creates it
        now = set(await admin.list_topics())
        await _until_writable(admin, [*by_name, *(n for n in INTERNAL_TOPICS if n in now)], ready_timeout)
        return sorted(created, key=list(by_name).index)
    finally:
        await admin.close()


def _replication(described: dict[str, Any] | None) -> int | None:
    """The smallest replica count over a described topic's partitions (``None``: unknown)."""
    if not described or not described.get("partitions"):
        return None
    return min(len(p["replicas"]) for p in described["partitions"])


async def _fix_min_insync(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """Raise ``min.insync.replicas`` to 2 on the topics (RF 3 or more) that require fewer,
    keeping each topic's other overrides (AlterConfigs replaces the whole set)."""
    if not names:
        return
    for name, entries in await _topic_configs(admin, names):
        values = {e[0]: e[1] for e in entries}
        if int(values.get("min.insync.replicas") or 1) >= 2:
            continue
        overrides = {e[0]: e[1] for e in entries if e[3] == _DYNAMIC_TOPIC_CONFIG and e[1] is not None}
        overrides["min.insync.replicas"] = "2"
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, overrides)])
        log.warning("topic fixed: min.insync.replicas raised to 2 (an acks=all write could be "
                    "acknowledged by one replica alone)",
                    extra={"topic": name, "was": values.get("min.insync.replicas")})


_UNDESCRIBED: set[tuple[str, int]] = set()  # (topic, error code) said already


async def _topic_configs(admin: AIOKafkaAdminClient, names: list[str],
                         keys: list[str] | None = None) -> list[tuple[str, list[Any]]]:
    """DescribeConfigs of ``names`` (only ``keys`` when given): ``(topic, entries)`` per
    topic the broker described, each entry ``(name, value, read_only, source, ...)`` as
    the protocol has it; a topic it could not describe is logged and left out."""
    out: list[tuple[str, list[Any]]] = []
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n, dict.fromkeys(keys) if keys else None)
         for n in names])
    for response in responses:
        for res in response.resources:
            error_code, _, _, name, entries = res[:5]
            if error_code:
                if (name, error_code) not in _UNDESCRIBED:  # once per process: a session retried
                    _UNDESCRIBED.add((name, error_code))  # with backoff asks again and again
                    log.warning("cannot read the topic's configuration",
                                extra={"topic": name, "error_code": error_code})
                continue
            out.append((name, list(entries)))
    return out


async def _until_coordinators(admin: AIOKafkaAdminClient, timeout: float) -> None:
    """Ask for a group coordinator and a transaction coordinator, every 0.2 s while the
    answer is a retriable error (COORDINATOR_NOT_AVAILABLE while the brokers create
    ``__consumer_offsets`` / ``__transaction_state`` on the first request, as the Java
    clients retry it), at most ``timeout`` seconds; then it logs which is missing and
    returns. A cluster without transactions (no permission) is not waited for."""
    from aiokafka.errors import KafkaError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for kind, name in ((0, "anting-readiness-probe"), (1, "anting-readiness-probe")):
        while True:
            try:
                await admin.find_coordinator(name, kind)
                break
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or loop.time() >= deadline:
                    log.info("no coordinator yet", extra={"kind": ("group", "transaction")[kind],
                                                           "error": type(exc).__name__})
                    break
            await asyncio.sleep(0.2)


async def _until_writable(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    """Wait until every partition of the topics has a leader and as many in-sync
    replicas as the contract's ``min.insync.replicas`` (2 with three replicas, else 1): right after creation (or a broker's restart)
    the first ``acks=all`` writes fail with NOT_ENOUGH_REPLICAS or NOT_LEADER otherwise,
    which the clients retry but log as warnings. After ``timeout`` seconds it logs the
    partitions still short and returns (the clients' own retries take over)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    short: list[str] = []
    while True:
        short = []
        for d in await admin.describe_topics(names):
            for p in d.get("partitions") or []:
                need = 2 if len(p["replicas"]) >= 3 else 1  # min.insync.replicas as created
                if p["leader"] < 0 or len(p["isr"]) < need:
                    short.append(f"{d['topic']}/{p['partition']}")
            if not d.get("partitions"):
                short.append(str(d.get("topic")))
        if not short or loop.time() >= deadline:
            break
        await asyncio.sleep(0.2)
    if short:
        log.warning("partitions without a leader or enough in-sync replicas yet",
                    extra={"partitions": short[:20], "count": len(short)})


class RecordBatches:
    """Records written through aiokafka's batch API: appended to one open batch per
    (topic, partition), sent with ``send_batch`` when the batch is full or ``linger``
    seconds after its first record. ``append`` returns the batch's acknowledgement, so
    a caller still knows when each record is durable.

    Why: ``producer.send`` costs ~10 µs of CPU per record (metadata check, partitioner,
    a future per record), an append ~2 µs; notify writes two records per delivery, which
    made ``send`` the largest single cost of recording one. Records land exactly where
    ``send`` would put them: the caller names the partition (``partition_for`` gives
    Kafka's default for a key)."""

    def __init__(self, producer: AIOKafkaProducer, linger: float = 0.02) -> None:
        self.producer = producer
        self.linger = linger
        self._open: dict[tuple[str, int], tuple[Any, asyncio.Future[Any]]] = {}
        self._shipping: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, list[int]] = {}

    async def partition_for(self, topic: str, key: bytes) -> int:
        """The partition Kafka's default partitioner (and ``send``) picks for ``key``."""
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        return partition_by_key(key, parts, parts)

    def append(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> asyncio.Future[Any]:
        """Add the record to its partition's open batch; the future resolves when the broker
        has acknowledged that batch (or fails with the reason it could not)."""
        slot = self._open.get((topic, partition))
        if slot is None:
            slot = self._start(topic, partition)
        if slot[0].append(key=key, value=value, timestamp=None) is None:
            self._ship(topic, partition)  # full: off it goes, and a new one takes the record
            slot = self._start(topic, partition)
            if slot[0].append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit a batch")
        return slot[1]

    def _start(self, topic: str, partition: int) -> tuple[Any, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        slot = (self.producer.create_batch(), loop.create_future())
        self._open[(topic, partition)] = slot
        loop.call_later(self.linger, self._ship, topic, partition, slot)
        return slot

    def _ship(self, topic: str, partition: int, only: object = None) -> None:
        slot = self._open.get((topic, partition))
        if slot is None or (only is not None and slot is not only):
            return  # the timer of a batch that has gone already
        del self._open[(topic, partition)]
        batch, done = slot
        batch.close()
        task = asyncio.get_running_loop().create_task(self._send(batch, topic, partition, done))
        self._shipping.add(task)
        task.add_done_callback(self._shipping.discard)

    async def _send(self, batch: BatchBuilder, topic: str, partition: int, done: asyncio.Future[Any]) -> None:
        try:
            ack = await self.producer.send_batch(batch, topic, partition=partition)
            result = await ack
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(result)

    async def flush(self) -> None:
        """Send every open batch now and wait until all are acknowledged or failed."""
        for topic, partition in list(self._open):
            self._ship(topic, partition)
        if self._shipping:
            await asyncio.gather(*self._shipping, return_exceptions=True)


#: aiokafka's producer refuses a record over ``max_request_size`` (its default, 1 MiB).
PRODUCER_MAX_REQUEST_BYTES = 1024 * 1024
# what a record adds to its key, value and headers in a batch of its own (v2 record
# batch header 61 bytes, the record's varints; generous: the check must never pass a
# record the broker refuses)
RECORD_OVERHEAD_BYTES = 512


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] = ()) -> int:
    """An upper bound of the bytes a record takes in a batch of its own (uncompressed)."""
    size = RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    for name, hval in headers:
        size += len(name) + len(hval or b"") + 10
    return size


async def max_message_bytes(settings: AntingSettings, topics: Iterable[str]) -> dict[str, int]:
    """The largest record each topic takes: its ``max.message.bytes`` as the broker reports
    it (a topic override, else the broker's ``message.max.bytes``), capped by what the
    producer sends (:data:`PRODUCER_MAX_REQUEST_BYTES`).

    A topic the broker does not describe (not created yet, not allowed) gets the producer's
    cap and a warning: Kafka's default topic limit is about the same (1 MiB + 12 bytes).
    """
    names = list(topics)
    limits = dict.fromkeys(names, PRODUCER_MAX_REQUEST_BYTES)
    admin = make_admin(settings)
    await admin.start()
    try:
        for name, entries in await _topic_configs(admin, names, ["max.message.bytes"]):
            for entry in entries:
                if entry[0] == "max.message.bytes" and entry[1] is not None:
                    limits[name] = min(int(entry[1]), PRODUCER_MAX_REQUEST_BYTES)
    finally:
        await admin.close()
    return limits


__all__ = ["INTERNAL_TOPICS", "PRODUCER_MAX_REQUEST_BYTES", "RECORD_OVERHEAD_BYTES", "SAFE_CONSUMER", "SAFE_PRODUCER",
           "RecordBatches", "RenewingProducer", "TopicMismatchError", "TransientKafkaLogs", "abandon_producer", "cluster_answers", "cluster_replication", "contract_replication", "ensure_topics", "ensure_topics_once", "leaders_settled", "make_admin",
           "make_consumer", "make_producer", "max_message_bytes", "partition_by_key", "quiet_transient_kafka_logs",
           "record_size", "wait_for_partitions"]
