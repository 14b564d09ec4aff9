"""Who may do what on a secured Kafka: Anting's least-privilege ACL table, in one place.

Each row is one Kafka ACL (``kafka-acls --add --allow-principal User:<p> --operation <op>
--<resource> <name> [--resource-pattern-type prefixed]``). The table is derived from what
each service is declared to do in :mod:`shared.topology`, the declarations the services
run (checked on a broker with ``allow.everyone.if.no.acl.found=false``): the topics it
reads and writes under
``ANTING_TOPIC_PREFIX``, its consumer groups, enrich's transactional ids, and the
metadata its start-up reads (``shared.kafka.ensure_topics`` lists and describes every
contract topic and reads their configurations). ``anting-admin`` (topics, catalog,
``anting dlq replay``) and the brokers' own principal are super users and have no rows.

The services never import this module: a secured cluster's operator applies the table
(``anting acls apply`` with a super user's credentials, or Kafka's own ``kafka-acls.sh``
with the commands ``anting acls print --format kafka-acls`` writes), the services only
present their credentials (``KAFKA_SASL_*``). The local broker (devtools.localkafka) and
the tests apply it too. Applying uses confluent-kafka's admin client, the maintained
Python client with an ACL API (aiokafka 0.14 has none).

Sources: Kafka's authorization docs (operations and the APIs that need them,
https://kafka.apache.org/documentation/#operations_resources_and_protocols), KIP-679
(an idempotent producer needs only Write on a topic since Kafka 3.0; IdempotentWrite on
the cluster is no longer required).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shared import topology
from shared.topics import ALL_TOPICS, Topic

if TYPE_CHECKING:
    from confluent_kafka.admin import AclBinding

__all__ = [
    "ADMIN",
    "BROKER",
    "CLIENT_PRINCIPALS",
    "PUBLISHER",
    "READER",
    "READER_GROUP_PREFIX",
    "READINESS_PROBE",
    "SERVICE_PRINCIPALS",
    "SUPER_USERS",
    "Acl",
    "acl_table",
    "apply_acls",
    "binding",
    "kafka_acls_commands",
    "markdown_table",
    "remove_acl",
    "restore_acl",
    "service_groups",
    "without_acl",
]

ADMIN = "anting-admin"
"""Creates the topics and loads the catalog (``anting run``); a super user."""
BROKER = "anting-broker"
"""The brokers' and controllers' own principal (inter-broker and controller links); a
super user, as Kafka needs for its own requests (CLUSTER_ACTION)."""
SERVICE_PRINCIPALS = tuple(s.principal for s in topology.ANTING if s.principal is not None)
PUBLISHER = str(topology.PUBLISHER.principal)
"""An example producer outside Anting: writes the two input topics, nothing else."""
READER = str(topology.READER.principal)
"""An example consumer outside Anting: reads ``enriched-events`` in groups ``reader-*``."""
READER_GROUP_PREFIX = str(topology.READER.group_prefix)
CLIENT_PRINCIPALS = (ADMIN, *SERVICE_PRINCIPALS, PUBLISHER, READER)
"""Every SCRAM user a secured local broker is formatted with (the broker's own login is
PLAIN on the loopback controller listener plus SCRAM for inter-broker traffic)."""
SUPER_USERS = (BROKER, ADMIN)
READINESS_PROBE = "anting-readiness-probe"
"""The group and transactional id whose coordinators ``shared.kafka.ensure_topics`` asks for."""
_STARTUP = "start-up: ensure_topics lists and describes its topics and reads their configurations"
_PROBE = ("start-up: ensure_topics asks for this group's and transactional id's coordinator, "
          "so that the brokers create their internal topics before the first real request")

Resource = Literal["topic", "group", "transactional_id", "cluster"]
Pattern = Literal["LITERAL", "PREFIXED"]
Operation = Literal["READ", "WRITE", "DESCRIBE", "DESCRIBE_CONFIGS", "CREATE", "IDEMPOTENT_WRITE"]


@dataclass(frozen=True)
class Acl:
    """One ALLOW ACL for ``User:<principal>`` from any host: ``operation`` on the
    ``resource`` named ``name`` (``pattern`` LITERAL: that name; PREFIXED: every name
    starting with it). ``why`` is the code path that needs it."""

    principal: str
    resource: Resource
    name: str
    pattern: Pattern
    operation: Operation
    why: str = ""


def service_groups(topic_prefix: str = "") -> dict[str, str]:
    """Service principal → the consumer group (or group prefix) it is granted, from the
    declarations (:mod:`shared.topology`), which the services' group settings
    (``ANTING_<SERVICE>_GROUP``) take their defaults from: enrich's and notify's are not
    under the topic prefix, insights' faust app id and route group are."""
    out: dict[str, str] = {}
    for service in topology.ANTING:
        if service.principal is None:
            continue
        if service.group_prefix is not None:
            out[service.principal] = (topic_prefix if service.groups_prefixed else "") + service.group_prefix
        for part in service.parts:
            group = service.group(part, topic_prefix)
            if group is not None and service.group_prefix is None:
                key = service.principal if part is service.parts[0] else f"{service.principal}-{part.name}"
                out[key] = group
    return out


def _topic_rows(principal: str, prefix: str, topics: Iterable[Topic], ops: Sequence[Operation],
                why: str) -> list[Acl]:
    return [Acl(principal, "topic", t.qualified(prefix), "LITERAL", op, why)
            for t in topics for op in ops]


def _service_rows(service: topology.Service, p: str) -> list[Acl]:
    """What ``service``'s declared parts read and write, the groups they read in, their
    transactional ids, and what its start-up checks."""
    who = service.principal
    assert who is not None
    rows: list[Acl] = []
    if service.checks:
        rows += _topic_rows(who, p, service.checks, ("DESCRIBE", "DESCRIBE_CONFIGS"), _STARTUP)
        rows += [Acl(who, "group", READINESS_PROBE, "LITERAL", "DESCRIBE", _PROBE),
                 Acl(who, "transactional_id", READINESS_PROBE, "LITERAL", "DESCRIBE", _PROBE)]
    for part in service.parts:
        rows += [Acl(who, "topic", u.topic.qualified(p), "LITERAL", "READ", f"{part.name}: {u.summary}")
                 for u in part.reads]
        rows += [Acl(who, "topic", u.topic.qualified(p), "LITERAL", "WRITE", f"{part.name}: {u.summary}")
                 for u in part.writes]
        group = service.group(part, p)
        if group is not None and service.group_prefix is None:
            rows.append(Acl(who, "group", group, "LITERAL", "READ", f"{part.name}: its consumer group"))
        if group is not None and part.transactional:
            rows.append(Acl(who, "transactional_id", f"{group}-", "PREFIXED", "WRITE",
                            f"{part.name}: transactional ids <group>-<instance> (exactly once)"))
    if service.group_prefix is not None:
        prefix = (p if service.groups_prefixed else "") + service.group_prefix
        if service.own_topics:
            rows += [Acl(who, "topic", f"{prefix}-", "PREFIXED", op,
                         "faust's topics: the table's changelog (<app id>-entities-changelog), "
                         "<app id>-__assignor-__leader")
                     for op in ("CREATE", "READ", "WRITE")]
        rows.append(Acl(who, "group", prefix, "PREFIXED", "READ",
                        "its consumer groups: " + ", ".join(
                            str(service.group(part, p)) for part in service.parts if part.group)))
    return rows


def acl_table(topic_prefix: str = "") -> list[Acl]:
    """Every ACL of a secured Anting cluster whose topics carry ``topic_prefix``, derived
    from the declarations of :mod:`shared.topology` (each service's and each outside
    example client's), in the order printed (principal, then resource). Read implies
    Describe on a topic or group and Write implies Describe (Kafka's implied operations),
    so Describe appears only where nothing else grants it; a topic under a prefix granted
    the same operation has no row of its own."""
    rows: list[Acl] = []
    for service in topology.SERVICES:
        if service.principal is not None:
            rows += _service_rows(service, topic_prefix)
    # one row per grant: a topic two parts read is read once
    first: dict[tuple[str, str, str, str, str], Acl] = {}
    for a in rows:
        first.setdefault((a.principal, a.resource, a.name, a.pattern, a.operation), a)
    unique = list(first.values())
    prefixed = [a for a in unique if a.pattern == "PREFIXED"]
    unique = [a for a in unique if a.pattern == "PREFIXED" or not any(
        (g.principal, g.resource, g.operation) == (a.principal, a.resource, a.operation)
        and a.name.startswith(g.name) for g in prefixed)]
    implying = {(a.principal, a.resource, a.name, a.pattern) for a in unique if a.operation in ("READ", "WRITE")}
    return [a for a in unique
            if not (a.operation == "DESCRIBE" and (a.principal, a.resource, a.name, a.pattern) in implying)]


# --------------------------------------------------------------------------- applying


def binding(acl: Acl, *, as_filter: bool = False) -> AclBinding:  # a filter is an AclBinding too
    """The confluent-kafka ``AclBinding`` of ``acl`` (ALLOW, any host); with
    ``as_filter`` the ``AclBindingFilter`` matching exactly it (what DeleteAcls takes)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    cls = AclBindingFilter if as_filter else AclBinding
    rtype = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
             "transactional_id": ResourceType.TRANSACTIONAL_ID, "cluster": ResourceType.BROKER}[acl.resource]
    name = "kafka-cluster" if acl.resource == "cluster" else acl.name
    return cls(rtype, name, ResourcePatternType[acl.pattern], f"User:{acl.principal}", "*",
                      AclOperation[acl.operation], AclPermissionType.ALLOW)


def apply_acls(admin_config: Mapping[str, str | int | float | bool], acls: Iterable[Acl], timeout: float = 30.0) -> int:
    """Create every ACL of ``acls`` on the cluster that ``admin_config`` (librdkafka
    properties of a super user, e.g. ``SecureMaterial.librdkafka_config``) reaches;
    creating one that exists is a no-op. Returns how many were sent. Raises
    ``confluent_kafka.KafkaException`` when the cluster refuses one or does not answer in
    ``timeout`` seconds."""
    from confluent_kafka.admin import AdminClient

    bindings = [binding(a) for a in acls]
    if not bindings:
        return 0
    admin = AdminClient(dict(admin_config))
    for future in admin.create_acls(bindings, request_timeout=timeout).values():
        future.result(timeout)
    return len(bindings)


def remove_acl(admin_config: Mapping[str, str | int | float | bool], acl: Acl, timeout: float = 30.0) -> None:
    """Delete exactly this ACL (its binding as a filter). Raises ``KafkaException`` as
    ``apply_acls`` does."""
    from confluent_kafka.admin import AclBindingFilter, AdminClient

    admin = AdminClient(dict(admin_config))
    found = binding(acl, as_filter=True)
    assert isinstance(found, AclBindingFilter)
    for future in admin.delete_acls([found], request_timeout=timeout).values():
        future.result(timeout)


def restore_acl(admin_config: Mapping[str, str | int | float | bool], acl: Acl, timeout: float = 30.0) -> None:
    """Create this ACL again (after ``remove_acl``)."""
    apply_acls(admin_config, [acl], timeout)


@contextlib.contextmanager
def without_acl(admin_config: Mapping[str, str | int | float | bool], acl: Acl) -> Iterator[None]:
    """The ``with`` block runs without ``acl``; it is restored afterwards, also when the
    block raises. (The brokers apply an ACL change within a moment of the controller's
    commit; a caller asserting a refusal should retry briefly.)"""
    remove_acl(admin_config, acl)
    try:
        yield
    finally:
        restore_acl(admin_config, acl)


# --------------------------------------------------------------------------- printing

_OP = {"READ": "Read", "WRITE": "Write", "DESCRIBE": "Describe", "DESCRIBE_CONFIGS": "DescribeConfigs",
       "CREATE": "Create", "IDEMPOTENT_WRITE": "IdempotentWrite"}
_RES = {"topic": "Topic", "group": "Group", "transactional_id": "TransactionalId", "cluster": "Cluster"}


def markdown_table(acls: Iterable[Acl] | None = None, topic_prefix: str = "") -> str:
    """The table as Markdown (``acls``, else ``acl_table(topic_prefix)``), one line per
    (principal, resource, pattern) with its operations, for the README (``anting acls
    print`` prints it). A principal's Describe and DescribeConfigs on every
    contract topic (under ``topic_prefix``) is one line."""
    rows = list(acl_table(topic_prefix) if acls is None else acls)
    lines = ["| principal | resource | name | pattern | operations |",
             "|---|---|---|---|---|",
             *(f"| `{u}` | (super user) | | | all |" for u in SUPER_USERS)]
    grouped: dict[tuple[str, str, str, str], list[str]] = {}
    # a principal that may describe every contract topic and its configurations gets one line for it
    described: dict[str, set[str]] = {}
    for a in rows:
        if a.resource == "topic" and a.operation == "DESCRIBE_CONFIGS" and a.pattern == "LITERAL":
            described.setdefault(a.principal, set()).add(a.name)
    contract = {t.qualified(topic_prefix) for t in ALL_TOPICS}
    startup = {who for who, names in described.items() if names >= contract}
    for a in rows:
        if a.principal in startup and a.resource == "topic" and a.name in contract \
                and a.operation in ("DESCRIBE", "DESCRIBE_CONFIGS") and a.pattern == "LITERAL":
            continue
        key = (a.principal, a.resource, a.name, a.pattern)
        grouped.setdefault(key, [])
        if _OP[a.operation] not in grouped[key]:
            grouped[key].append(_OP[a.operation])
    for principal in (*SERVICE_PRINCIPALS, PUBLISHER, READER):
        if principal in startup:
            lines.append(f"| `{principal}` | Topic | every contract topic | LITERAL | Describe, DescribeConfigs |")
        for (who, res, name, pattern), ops in grouped.items():
            if who == principal:
                lines.append(f"| `{who}` | {_RES[res]} | `{name}` | {pattern} | {', '.join(sorted(ops))} |")
    return "\n".join(lines) + "\n"


def kafka_acls_commands(acls: Iterable[Acl] | None = None, topic_prefix: str = "",
                        bootstrap: str = "<broker:port>", config: str = "<admin.properties>") -> str:
    """The table as ``kafka-acls.sh`` commands (one per ACL, Kafka's own tool), for an
    operator who applies ACLs with Kafka's tools rather than ``anting acls apply``."""
    rows = list(acl_table(topic_prefix) if acls is None else acls)
    out = []
    for a in rows:
        resource = ("--cluster" if a.resource == "cluster" else
                    f"--{a.resource.replace('_', '-')} '{a.name}'")
        pattern = " --resource-pattern-type prefixed" if a.pattern == "PREFIXED" else ""
        out.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {config} --add "
                   f"--allow-principal 'User:{a.principal}' --operation {_OP[a.operation]} "
                   f"{resource}{pattern}")
    return "\n".join(out)
