"""Who may do what on a secured Kafka: Anting's least-privilege ACL table, in one place.

Each row is one Kafka ACL (``kafka-acls --add --allow-principal User:<p> --operation <op>
--<resource> <name> [--resource-pattern-type prefixed]``). The table is derived from what
each service does (read in its code, checked on a broker with
``allow.everyone.if.no.acl.found=false``): the topics it reads and writes under
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

from shared.topics import (
    AGREEMENTS,
    ALL_TOPICS,
    ANNOUNCEMENTS,
    DEAD_LETTERS,
    DOCUMENTS,
    ENRICHED_EVENTS,
    INSIGHTS_CHANGELOG,
    INSIGHTS_FACTS,
    NOTIFICATIONS,
    NOTIFY_DIGESTS,
    NOTIFY_RETRIES,
    ORGANIZATIONS,
    SUBSCRIPTIONS,
    Topic,
)

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
SERVICE_PRINCIPALS = ("anting-ingest", "anting-enrich", "anting-notify", "anting-insights")
PUBLISHER = "publisher"
"""An example producer outside Anting: writes the two input topics, nothing else."""
READER = "reader"
"""An example consumer outside Anting: reads ``enriched-events`` in groups ``reader-*``."""
READER_GROUP_PREFIX = "reader-"
CLIENT_PRINCIPALS = (ADMIN, *SERVICE_PRINCIPALS, PUBLISHER, READER)
"""Every SCRAM user a secured local broker is formatted with (the broker's own login is
PLAIN on the loopback controller listener plus SCRAM for inter-broker traffic)."""
SUPER_USERS = (BROKER, ADMIN)
READINESS_PROBE = "anting-readiness-probe"
"""The group and transactional id whose coordinators ``shared.kafka.ensure_topics`` asks for."""

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
    """Service principal → the consumer group (or group prefix) it uses, from the
    services' own setting defaults (``ANTING_<SERVICE>_GROUP``): enrich's and notify's
    are not under the topic prefix, insights' faust app id and route group are."""
    from services.enrich.settings import EnrichSettings
    from services.insights.settings import InsightsSettings
    from services.notify.settings import NotifySettings

    return {
        "anting-enrich": str(EnrichSettings.model_fields["group"].default),
        "anting-enrich-documents": str(EnrichSettings.model_fields["documents_group"].default),
        "anting-notify": str(NotifySettings.model_fields["group"].default),
        "anting-insights": topic_prefix + str(InsightsSettings.model_fields["group"].default),
    }


def _topic_rows(principal: str, prefix: str, topics: Iterable[Topic], ops: Sequence[Operation],
                why: str) -> list[Acl]:
    return [Acl(principal, "topic", t.qualified(prefix), "LITERAL", op, why)
            for t in topics for op in ops]


def acl_table(topic_prefix: str = "") -> list[Acl]:
    """Every ACL of a secured Anting cluster whose topics carry ``topic_prefix``, in the
    order printed (principal, then resource). Read implies Describe on a topic or group
    and Write implies Describe (Kafka's implied operations), so Describe appears only
    where nothing else grants it."""
    p = topic_prefix
    groups = service_groups(p)
    rows: list[Acl] = []
    startup = "start-up: ensure_topics lists and describes its topics and reads their configurations"
    probe = "start-up: ensure_topics asks for this group's and transactional id's coordinator, " \
        "so that the brokers create their internal topics before the first real request"
    # ingest checks no topic at start (it only writes); enrich and notify check every
    # contract topic, insights the three it uses (services/*/main.py, notify/bootstrap.py)
    checked: dict[str, Sequence[Topic]] = {
        "anting-enrich": ALL_TOPICS, "anting-notify": ALL_TOPICS,
        "anting-insights": (ENRICHED_EVENTS, INSIGHTS_FACTS, INSIGHTS_CHANGELOG),
    }
    for svc, topics in checked.items():
        rows += _topic_rows(svc, p, topics, ("DESCRIBE", "DESCRIBE_CONFIGS"), startup)
        rows += [Acl(svc, "group", READINESS_PROBE, "LITERAL", "DESCRIBE", probe),
                 Acl(svc, "transactional_id", READINESS_PROBE, "LITERAL", "DESCRIBE", probe)]

    ingest = "anting-ingest"
    rows += _topic_rows(ingest, p, (ANNOUNCEMENTS, AGREEMENTS), ("WRITE",), "publishes the events it accepts")
    rows += _topic_rows(ingest, p, (DEAD_LETTERS,), ("WRITE",), "lines of a file it cannot parse")
    rows += _topic_rows(ingest, p, (DOCUMENTS,), ("WRITE",), "publishes the documents it accepts")

    enrich, g = "anting-enrich", groups["anting-enrich"]
    rows += _topic_rows(enrich, p, (ANNOUNCEMENTS, AGREEMENTS), ("READ",), "its input")
    rows += _topic_rows(enrich, p, (ORGANIZATIONS,), ("READ",), "the catalog (a compacted view, no group)")
    rows += _topic_rows(enrich, p, (ENRICHED_EVENTS, DEAD_LETTERS), ("WRITE",),
                        "its output, in transactions with its offsets")
    rows += [
        Acl(enrich, "group", g, "LITERAL", "READ", "its consumer group; offsets committed in its transactions"),
        Acl(enrich, "transactional_id", f"{g}-", "PREFIXED", "WRITE",
            "transactional ids <group>-<instance> (exactly once)"),
    ]
    docs_group = groups["anting-enrich-documents"]
    rows += _topic_rows(enrich, p, (DOCUMENTS,), ("READ",), "the documents stage's input")
    rows += _topic_rows(enrich, p, (ANNOUNCEMENTS, AGREEMENTS), ("WRITE",),
                        "the documents stage writes the events a document reports")
    rows.append(Acl(enrich, "group", docs_group, "LITERAL", "READ",
                    "the documents stage's consumer group; offsets committed after its writes"))

    notify, g = "anting-notify", groups["anting-notify"]
    rows += _topic_rows(notify, p, (ENRICHED_EVENTS,), ("READ",), "its input, and the SSE stream")
    rows += _topic_rows(notify, p, (SUBSCRIPTIONS, NOTIFICATIONS, NOTIFY_RETRIES, NOTIFY_DIGESTS),
                        ("READ", "WRITE"), "its own state: subscriptions, delivery log, retries, digests")
    rows += _topic_rows(notify, p, (DEAD_LETTERS,), ("READ", "WRITE"),
                        "deliveries that gave up; the dead-letter monitor reads them back")
    rows.append(Acl(notify, "group", g, "PREFIXED", "READ",
                    "groups <group>, <group>-retries, <group>-digests"))

    insights, g = "anting-insights", groups["anting-insights"]
    rows += _topic_rows(insights, p, (ENRICHED_EVENTS,), ("READ",), "its input")
    rows += _topic_rows(insights, p, (INSIGHTS_FACTS,), ("READ", "WRITE"), "the facts repartition")
    rows += _topic_rows(insights, p, (DEAD_LETTERS,), ("WRITE",), "events it cannot fold")
    rows += [
        Acl(insights, "topic", f"{g}-", "PREFIXED", op,
            "faust's topics: the table's changelog (<app id>-entities-changelog), <app id>-__assignor-__leader")
        for op in ("CREATE", "READ", "WRITE")
    ]
    rows.append(Acl(insights, "group", g, "PREFIXED", "READ", "the faust app's group and <app id>-route"))

    rows += _topic_rows(PUBLISHER, p, (ANNOUNCEMENTS, AGREEMENTS, DOCUMENTS), ("WRITE",),
                        "an outside producer of input events and documents")
    rows += _topic_rows(READER, p, (ENRICHED_EVENTS,), ("READ",), "an outside consumer of the output")
    rows.append(Acl(READER, "group", READER_GROUP_PREFIX, "PREFIXED", "READ", "its consumer groups"))
    # Describe where Read or Write on the same resource grants it already is left out
    implying = {(a.principal, a.resource, a.name, a.pattern) for a in rows if a.operation in ("READ", "WRITE")}
    return [a for a in rows
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
                lines.append(f"| `{who}` | {_RES[res]} | `{name}` | {pattern} | {', '.join(ops)} |")
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
