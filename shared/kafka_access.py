"""When the broker refuses a service: authentication (SASL), TLS trust, authorization
(ACLs). Each refusal becomes one line naming who, what and where, the reason readiness
gives, and a retry with backoff; never a traceback per attempt, never an exit.

Kafka's own errors say little: a failed SASL exchange or an untrusted certificate reaches
an aiokafka caller as ``KafkaConnectionError("Unable to bootstrap from ...")`` (the cause is
only in a log line), and an authorization error names the topics or the group but not the
operation refused. So:

- :func:`diagnose_connection` opens one connection the way every client does
  (``aiokafka.conn.create_conn``) and says why it fails: ``kafka: authentication failed
  for SASL user anting-enrich (SCRAM-SHA-512) at 127.0.0.1:9093: <broker's message>``, or
  ``kafka: TLS certificate of 127.0.0.1:9093 not trusted by KAFKA_SSL_CAFILE=...: <why>``;
- :func:`denial` names the ACL an authorization error lacks, from what the client was
  doing (:class:`Doing`): ``kafka: User:anting-enrich may not Write
  Topic:enriched-events (TOPIC_AUTHORIZATION_FAILED)`` — producing is Write on the topic,
  fetching and committing Read on the topic and the group, ``InitProducerId`` and
  ``AddPartitionsToTxn`` Write on the transactional id (Kafka's table of operations per
  request: docs "Authorization and ACLs", KIP-11);
- :class:`AccessStatus` holds the current refusal for ``/readyz``, logs each distinct
  line once per 30 s (with how often it repeated meanwhile, as
  :class:`shared.stage.FailureLog` does for records) and says when access is back;
  :class:`Backoff` spaces the retries (1 s doubling to 5 s: an ACL restored is noticed
  within seconds);
- :func:`topic_operations` asks the broker which operations the principal may perform on
  topics (``Metadata`` v8's ``topic_authorized_operations``, KIP-430), so a service sees a
  missing Write before a record fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias, TypeVar, cast

import aiokafka.errors as Errors
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.conn import create_conn
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int16, Int32, Schema, String

from shared.aiokafka_ext import unauthorized_topics
from shared.settings import KafkaSettings

__all__ = [
    "ACCESS_ERRORS",
    "AccessRefused",
    "AccessStatus",
    "Backoff",
    "Doing",
    "MetadataRequest_v8",
    "TopicOperationsRequest",
    "check_subscription",
    "denial",
    "diagnose_connection",
    "is_access_error",
    "principal",
    "refusal",
    "topic_operations",
    "until_allowed",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the errors that are the broker refusing this principal (authorization) or this client
#: (authentication); retrying helps only once someone changes an ACL or a secret
ACCESS_ERRORS: tuple[type[KafkaError], ...] = (
    Errors.TopicAuthorizationFailedError,
    Errors.GroupAuthorizationFailedError,
    Errors.TransactionalIdAuthorizationFailed,
    Errors.ClusterAuthorizationFailedError,
    Errors.SaslAuthenticationFailed,
    Errors.AuthenticationFailedError,
    Errors.UnsupportedSaslMechanismError,
)


_AUTHORIZATION = ACCESS_ERRORS[:4]

# aiokafka (0.14) passes some errors of a response on as ``KafkaError(repr(error))``: an
# OffsetFetch that a topic ACL refuses reaches poll as "KafkaError: TopicAuthorizationFailedError()"
_WRAPPED = re.compile(r"(\w+)\(.*\)")


def _unwrapped(exc: BaseException) -> BaseException:
    """``exc``, or the access error a plain ``KafkaError`` carries as the repr of one."""
    if type(exc) is KafkaError and exc.args and isinstance(exc.args[0], str):
        match = _WRAPPED.fullmatch(exc.args[0])
        kind = getattr(Errors, match.group(1), None) if match else None
        if isinstance(kind, type) and issubclass(kind, ACCESS_ERRORS):
            return cast(BaseException, kind())  # aiokafka is untyped: its errors are Any
    return exc


def is_access_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the broker refusing access."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        if isinstance(_unwrapped(current), (*ACCESS_ERRORS, AccessRefused)):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def principal(settings: KafkaSettings) -> str:
    """The principal the broker sees: ``User:<KAFKA_SASL_USERNAME>`` with SASL, else
    ``User:ANONYMOUS`` (Kafka's name for an unauthenticated client; Anting sends no
    client certificate)."""
    return f"User:{settings.sasl_username}" if settings.sasl else "User:ANONYMOUS"


@dataclass(frozen=True, slots=True)
class Doing:
    """What a client does, to name the operation Kafka's error leaves out: a refused topic
    in ``reads`` was refused Read (fetching, committing offsets), one in ``writes`` Write
    (producing); another is refused ``topic_operation`` (e.g. ``Create`` while creating
    topics). ``group`` and ``transactional_id`` are the client's when it has one (its
    group is refused Read, its transactional id Write); ``cluster_operation`` is what a
    refused ``Cluster`` resource was asked for (an idempotent producer's
    ``InitProducerId`` needs ``IdempotentWrite`` on brokers before Kafka 3.0, KIP-679)."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    group: str | None = None
    transactional_id: str | None = None
    topic_operation: str = "Describe"
    cluster_operation: str = "IdempotentWrite"

    def operation_on(self, topic: str) -> str:
        """The operation refused on ``topic``."""
        if topic in self.writes:
            return "Write"
        if topic in self.reads:
            return "Read"
        return self.topic_operation


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")  # Kafka's legal topic (and group) names


def _names(exc: BaseException) -> list[str]:
    """The resource names an aiokafka authorization error carries (a name or a set of
    them); an argument that is a sentence, not a name, is left out."""
    out: list[str] = []
    for arg in exc.args:
        items = sorted(str(a) for a in arg) if isinstance(arg, set | frozenset | list | tuple) else [arg]
        out += [a for a in items if isinstance(a, str) and _TOPIC_NAME.fullmatch(a)]
    return out


def _authorization_error(exc: BaseException) -> KafkaError | None:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        found = _unwrapped(current)
        if isinstance(found, _AUTHORIZATION):
            return found
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def denial(exc: BaseException, settings: KafkaSettings, doing: Doing) -> str | None:
    """One line naming the principal, the operation and the resource an authorization
    error refused (``None`` when ``exc`` is not one), e.g. ``kafka: User:anting-enrich may
    not Write Topic:enriched-events (TOPIC_AUTHORIZATION_FAILED)``; an
    :class:`AccessRefused` gives its own line."""
    if isinstance(exc, AccessRefused):
        return exc.line
    error = _authorization_error(exc)
    if error is None:
        return None
    who = principal(settings)
    if isinstance(error, Errors.TopicAuthorizationFailedError):
        topics = _names(error) or [*doing.writes, *doing.reads]
        by_operation: dict[str, list[str]] = {}
        for t in topics:
            by_operation.setdefault(doing.operation_on(t), []).append(f"Topic:{t}")
        what = " or ".join(f"{op} {', '.join(ts)}" for op, ts in by_operation.items()) \
            or f"{doing.topic_operation} a topic"
    elif isinstance(error, Errors.GroupAuthorizationFailedError):
        names = _names(error)
        what = f"Read Group:{doing.group or (names[0] if names else '?')}"
    elif isinstance(error, Errors.TransactionalIdAuthorizationFailed):
        names = _names(error)
        what = f"Write TransactionalId:{doing.transactional_id or (names[0] if names else '?')}"
    else:  # ClusterAuthorizationFailedError
        what = f"{doing.cluster_operation} Cluster:kafka-cluster"
    return f"kafka: {who} may not {what} ({error.message})"


def check_subscription(consumer: AIOKafkaConsumer) -> None:
    """Raise ``TopicAuthorizationFailedError`` naming the topics ``consumer`` subscribes to
    that its cluster metadata marks unauthorized; call it after each poll.

    aiokafka (0.14) raises nothing when the broker refuses a subscribed topic in the
    metadata (no Describe, so no Read either): the topic has no partitions for this
    member, the group assigns it none, and every poll returns empty, as if there were
    nothing to read. Raised here, that refusal takes the path a refused fetch takes: one
    line, readiness 503, retries until allowed."""
    refused = consumer.subscription() & unauthorized_topics(consumer)
    if refused:
        raise Errors.TopicAuthorizationFailedError(sorted(refused))


class AccessRefused(KafkaError):  # type: ignore[misc]
    """The broker refuses this client (authentication, TLS trust) or principal; ``line``
    says who, what and where (from :func:`diagnose_connection` or :func:`denial`)."""

    retriable = False

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


async def refusal(exc: BaseException, settings: KafkaSettings, doing: Doing) -> str | None:
    """The line explaining ``exc`` when it is the broker refusing access, else ``None``:
    an authorization error named by :func:`denial`, or — a connection that failed without
    saying why (``KafkaConnectionError``, an ``OSError``) — what
    :func:`diagnose_connection` finds (one more connection, on this failure path only)."""
    line = denial(exc, settings, doing)
    if line is not None:
        return line
    if isinstance(exc, Errors.KafkaConnectionError | OSError | Errors.NodeNotReadyError):
        return await diagnose_connection(settings)
    return None


async def diagnose_connection(settings: KafkaSettings, timeout: float = 3.0) -> str | None:
    """Connect to each bootstrap broker as the clients do (TLS, then the SASL exchange) and
    return the line saying why the broker refuses this client — authentication failed, the
    certificate is not trusted or not for that host name, the mechanism is not enabled —
    or ``None`` when one connection succeeds or every failure is the network's (a broker
    down is not an access problem: the clients' own retries cover it)."""
    found: str | None = None
    opts = settings.client_options()
    for hostport in settings.bootstrap_servers.split(","):
        host, _, port = hostport.strip().rpartition(":")
        where = f"{host}:{port}"
        try:
            conn = await asyncio.wait_for(create_conn(
                host, int(port), request_timeout_ms=int(timeout * 1000),
                ssl_context=opts.get("ssl_context"), security_protocol=settings.security_protocol,
                sasl_mechanism=opts.get("sasl_mechanism"),
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=settings.sasl_password), timeout)
        except (Errors.SaslAuthenticationFailed, Errors.AuthenticationFailedError,
                Errors.IllegalSaslStateError) as exc:
            message = str(exc.args[0]) if exc.args else exc.message
            found = found or (f"kafka: authentication failed for SASL user {settings.sasl_username} "
                              f"({settings.mechanism}) at {where}: {message}")
        except Errors.UnsupportedSaslMechanismError as exc:
            found = found or (f"kafka: the broker at {where} does not take KAFKA_SASL_MECHANISM="
                              f"{settings.mechanism}: {exc.args[0] if exc.args else exc}")
        except ssl.SSLCertVerificationError as exc:
            trust = (f"KAFKA_SSL_CAFILE={settings.ssl_cafile}" if settings.ssl_cafile
                     else "the system's CAs (KAFKA_SSL_CAFILE unset)")
            why = exc.verify_message or str(exc)
            if "hostname" in why.lower() or "ip address mismatch" in why.lower():
                found = found or (f"kafka: TLS certificate of {where} is not for that host name "
                                  f"(as KAFKA_BOOTSTRAP_SERVERS names it): {why}")
            else:
                found = found or (f"kafka: TLS certificate of {where} not trusted by {trust}: "
                                  f"certificate verify failed: {why}")
        except ssl.SSLError as exc:
            found = found or (f"kafka: TLS handshake with {where} failed: {exc.reason or exc} "
                              "(is it a TLS listener? KAFKA_SECURITY_PROTOCOL="
                              f"{settings.security_protocol})")
        except (OSError, TimeoutError, KafkaError):
            continue  # the network's, or the broker's while it starts: not access
        else:
            conn.close()
            return None
    return found


class Backoff:
    """Delays between retries: ``first`` seconds, doubling up to ``cap``; :meth:`reset`
    after a success."""

    def __init__(self, first: float = 1.0, cap: float = 5.0) -> None:
        self.first = first
        self.cap = cap
        self.next = first

    def delay(self) -> float:
        """The delay to wait now (and double the next one, up to the cap)."""
        current, self.next = self.next, min(self.cap, self.next * 2)
        return current

    def reset(self) -> None:
        self.next = self.first

    async def wait(self, stop: asyncio.Event | None = None) -> None:
        """Sleep the next delay, or less when ``stop`` is set meanwhile."""
        delay = self.delay()
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


@dataclass
class AccessStatus:
    """The broker's current refusals of this service, one per part that was refused
    (``key``: a stage's fetch or commit, the producer, the start...), and their log: each
    distinct line at error once per ``window`` seconds, the next one counting the repeats
    left out; :meth:`restored` logs once that a part's access is back and forgets it.
    :attr:`reason` (the oldest refusal still current, or ``None``) is what ``/readyz``
    answers with."""

    window: float = 30.0
    cap: float = 5.0  # how often the service tries again at most
    #: what the service does meanwhile, said after the line
    then: str = "retrying with backoff up to 5 s"
    current: dict[str, str] = field(default_factory=dict)
    _reported: dict[str, float] = field(default_factory=dict)
    _since: dict[str, int] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        """The oldest refusal still current (``None``: nothing is refused)."""
        return next(iter(self.current.values()), None)

    def refused(self, line: str, key: str = "") -> None:
        """The broker refused ``key``'s access: ``line`` (from :func:`refusal`) is current
        and logged, unless the same line was logged less than ``window`` seconds ago."""
        self.current[key] = line
        now = time.monotonic()
        last = self._reported.get(line)
        if last is not None and now - last < self.window:
            self._since[line] = self._since.get(line, 0) + 1
            return
        more = self._since.pop(line, 0)
        self._reported[line] = now
        tail = f" ({more} more times since the last such line)" if more else ""
        log.error("%s; %s%s", line, self.then, tail)

    def restored(self, key: str = "") -> None:
        """What ``key`` was refused works now: log it once and forget the refusal."""
        line = self.current.pop(key, None)
        if line is None:
            return
        log.warning("kafka: access restored (was: %s)", line.removeprefix("kafka: "))
        self._reported.pop(line, None)
        self._since.pop(line, None)


async def until_allowed(step: Callable[[], Awaitable[T]], status: AccessStatus,
                        settings: KafkaSettings, doing: Doing, stop: asyncio.Event,
                        key: str = "start") -> T | None:
    """Await ``step()`` until it succeeds and return its result; while the broker refuses
    access (see :func:`refusal`) the refusal is ``status``'s (readiness, one line per 30 s)
    and ``step`` is tried again after a backoff (1 s doubling to ``status.cap``). Any
    other error is raised as it is. ``None`` when ``stop`` is set first."""
    backoff = Backoff(cap=status.cap)
    while not stop.is_set():
        try:
            result = await step()
        except (KafkaError, OSError) as exc:
            line = await refusal(exc, settings, doing)
            if line is None:
                raise
            status.refused(line, key)
            await backoff.wait(stop)
            continue
        status.restored(key)
        return result
    return None


# --- Metadata v8: the operations a principal may perform on a topic (KIP-430) ---------

#: Kafka's AclOperation codes (org.apache.kafka.common.acl.AclOperation): bit ``code`` of
#: ``topic_authorized_operations`` is set when the operation is allowed
ACL_OPERATIONS = {3: "Read", 4: "Write", 5: "Create", 6: "Delete", 7: "Alter", 8: "Describe",
                  10: "DescribeConfigs", 11: "AlterConfigs"}
#: what Kafka sends for ``topic_authorized_operations`` when it was not asked (or cannot say)
_NOT_ASKED = -(2**31)


class MetadataResponse_v8(Response):  # type: ignore[misc]
    """``MetadataResponse`` v8 (Kafka 2.3, KIP-430): v7 plus the authorized operations."""

    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(("node_id", Int32), ("host", String("utf-8")), ("port", Int32),
                          ("rack", String("utf-8")))),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        ("topics", Array(
            ("error_code", Int16),
            ("name", String("utf-8")),
            ("is_internal", Boolean),
            ("partitions", Array(
                ("error_code", Int16),
                ("partition_index", Int32),
                ("leader_id", Int32),
                ("leader_epoch", Int32),
                ("replica_nodes", Array(Int32)),
                ("isr_nodes", Array(Int32)),
                ("offline_replicas", Array(Int32)),
            )),
            ("topic_authorized_operations", Int32),
        )),
        ("cluster_authorized_operations", Int32),
    )


class MetadataRequest_v8(RequestStruct):  # type: ignore[misc]
    """``MetadataRequest`` v8: v4's topics and auto-creation flag, and whether to include
    the cluster's and each topic's authorized operations."""

    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = MetadataResponse_v8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class TopicOperationsRequest(Request[MetadataRequest_v8]):  # type: ignore[misc]
    """Builds :class:`MetadataRequest_v8` for ``topics``, never creating one; a broker
    without v8 (before 2.3) raises ``IncompatibleBrokerVersion`` when it is prepared."""

    API_KEY: ClassVar[int] = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, request_struct_class: type[MetadataRequest_v8]) -> MetadataRequest_v8:
        return request_struct_class(self.topics, False, False, True)

    def prepare(self, versions: dict[int, tuple[int, int]]) -> MetadataRequest_v8:
        low, high = versions.get(self.API_KEY, (0, -1))
        if not low <= 8 <= high:
            raise IncompatibleBrokerVersion(
                f"the broker takes Metadata v{low}..v{high}; authorized operations need v8")
        return self.build(MetadataRequest_v8)


#: per topic: the set of operations allowed, or the error the broker answered for it
TopicOperations: TypeAlias = dict[str, set[str] | KafkaError]


async def topic_operations(client: AIOKafkaClient, topics: list[str]) -> TopicOperations:
    """Which operations (``Read``, ``Write``, ``Describe``, ...) the principal may perform on
    each of ``topics``, asked of any broker with one ``Metadata`` v8 request on ``client``
    (an aiokafka client: ``producer.client``). A topic the principal may not even describe
    comes back as ``TopicAuthorizationFailedError``, a missing one as
    ``UnknownTopicOrPartitionError``. Raises ``KafkaError``/``OSError`` when no broker
    answers."""
    node = client.get_random_node()
    if node is None:
        raise Errors.KafkaConnectionError("no broker known")
    response = await client.send(node, TopicOperationsRequest(topics))
    out: TopicOperations = {}
    for error_code, name, _internal, _parts, allowed in response.topics:
        if error_code:
            out[name] = Errors.for_code(error_code)(name)
        elif allowed == _NOT_ASKED:
            out[name] = set(ACL_OPERATIONS.values())  # the broker cannot say: assume allowed
        else:
            out[name] = {op for code, op in ACL_OPERATIONS.items() if allowed & (1 << code)}
    return out
