"""Who reads and writes what, declared once: every stage, consumer and producer of every
service as data.

Each service is a :class:`Service` of :class:`Part`\\ s; a part reads and writes
topics of :mod:`shared.topics` (each use with a summary for people), in a consumer group
or none. Everything else is derived from these declarations, never written again by
hand: what the services run (a :class:`shared.stage.Stage`'s topics come from
:meth:`Part.inputs` and :meth:`Part.outputs`, a single reader's from :meth:`Part.input`,
and the :class:`shared.kafka_access.Doing` a refusal names from :meth:`Part.reading`,
:meth:`Part.writing` or the stage), the AsyncAPI document's operations
(:mod:`shared.asyncapi`), the ACL table (``services/acls.py``, ``anting acls
print|apply``) and the README's topic table (:func:`markdown_table`; ``anting topics
flows`` prints it, a test keeps the README's copy equal). Changing a topic or a group
here changes it everywhere.

The groups are the defaults of the services' settings (``ANTING_<SERVICE>_GROUP``,
``ANTING_ENRICH_DOCUMENTS_GROUP``), which take them from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shared.kafka_access import Doing
from shared.topics import (
    AGREEMENTS,
    ALL_TOPICS,
    ANNOUNCEMENTS,
    DAY_MS,
    DEAD_LETTERS,
    DEAD_LETTERS_REPLAYED,
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

__all__ = [
    "ANTING",
    "CLI",
    "ENRICH",
    "ENRICH_CATALOG",
    "ENRICH_DOCUMENTS",
    "ENRICH_EVENTS",
    "INGEST",
    "INGEST_DOCUMENTS",
    "INGEST_EVENTS",
    "INSIGHTS",
    "INSIGHTS_RESTORE",
    "INSIGHTS_ROUTE",
    "INSIGHTS_TABLE",
    "NOTIFY",
    "NOTIFY_DIGEST_WINDOWS",
    "NOTIFY_DLQ_MONITOR",
    "NOTIFY_EVENTS",
    "NOTIFY_LEDGER",
    "NOTIFY_RETRY_SCHEDULE",
    "NOTIFY_STORE",
    "NOTIFY_STREAM",
    "OUTSIDE",
    "PUBLISHER",
    "READER",
    "SERVICES",
    "Part",
    "Service",
    "Use",
    "markdown_table",
    "parts",
]


@dataclass(frozen=True, slots=True)
class Use:
    """One read or write of ``topic`` by a part, with ``summary`` (what it is for) for
    people: the AsyncAPI operation's summary and the ACL's reason."""

    topic: Topic
    summary: str


@dataclass(frozen=True, slots=True)
class Part:
    """One stage, consumer or producer of a service: the topics it ``reads`` and
    ``writes``, the consumer ``group`` it reads them in (its default name, the setting's
    default; None: it reads whole with no group, a compacted view or a log folded on
    start), whether it writes in transactions whose ids are ``<group>-<instance>``
    (``transactional``), and ``title``, how the README names it."""

    name: str
    title: str
    reads: tuple[Use, ...] = ()
    writes: tuple[Use, ...] = ()
    group: str | None = None
    transactional: bool = False

    def topics(self, uses: Iterable[Use], prefix: str = "") -> tuple[str, ...]:
        """The full names (under ``prefix``) of the topics of ``uses``."""
        return tuple(u.topic.qualified(prefix) for u in uses)

    def inputs(self, prefix: str = "") -> tuple[str, ...]:
        """The topics it reads, under ``prefix``."""
        return self.topics(self.reads, prefix)

    @property
    def output_topics(self) -> tuple[Topic, ...]:
        """The topics it writes other than ``dead-letters`` (a stage's outputs; its dead
        letters are every stage's)."""
        return tuple(u.topic for u in self.writes if u.topic != DEAD_LETTERS)

    def outputs(self, prefix: str = "") -> tuple[str, ...]:
        """The full names of :attr:`output_topics` under ``prefix``."""
        return tuple(t.qualified(prefix) for t in self.output_topics)

    def input(self, prefix: str = "") -> str:
        """The one topic it reads (a stage or reader of one topic); ``ValueError`` when not one."""
        (topic,) = self.inputs(prefix)
        return topic

    def reading(self, prefix: str = "", group: str | None = None) -> Doing:
        """What it does while it reads (in ``group``, its setting's value), for a refusal
        to name the operation Kafka's error leaves out: a refused topic was refused Read."""
        return Doing(reads=self.inputs(prefix), group=group)

    def writing(self, prefix: str = "") -> Doing:
        """What it does while it writes: a refused topic was refused Write."""
        return Doing(writes=self.topics(self.writes, prefix))


@dataclass(frozen=True, slots=True)
class Service:
    """A service (or an outside client) and its parts. ``principal`` is the user it signs
    in as on a secured cluster (None: a super user, no ACL of its own); ``group_prefix``
    when every group of it starts with one setting's value (``<group>-retries``...) and is
    granted as that prefix, else each part's group is granted alone; ``groups_prefixed``
    when its groups carry ``ANTING_TOPIC_PREFIX`` (a faust app id does); ``own_topics``
    when it creates topics named ``<its group>-...`` (faust's changelogs); ``checks`` the
    topics its start-up lists, describes and reads the configurations of
    (``ensure_topics``); ``outside`` for a client that is not Anting's (an example)."""

    name: str
    principal: str | None
    parts: tuple[Part, ...]
    group_prefix: str | None = None
    groups_prefixed: bool = False
    own_topics: bool = False
    checks: tuple[Topic, ...] = ()
    outside: bool = False

    def group(self, part: Part, prefix: str = "") -> str | None:
        """``part``'s default group on a cluster whose names carry ``prefix``."""
        if part.group is None:
            return None
        return prefix + part.group if self.groups_prefixed else part.group

    def writes(self, prefix: str = "") -> tuple[str, ...]:
        """Every topic its parts write, under ``prefix``, once each."""
        return tuple(dict.fromkeys(n for p in self.parts for n in p.topics(p.writes, prefix)))

    def group_under(self, part: Part, base: str) -> str:
        """``part``'s group when the service's group setting is ``base`` (its groups all
        start with it: ``<base>-retries``...); ``ValueError`` for a part with no group."""
        if part.group is None or self.group_prefix is None or not part.group.startswith(self.group_prefix):
            raise ValueError(f"{self.name}'s {part.name} has no group under its group setting")
        return base + part.group[len(self.group_prefix):]


# --------------------------------------------------------------------------- the services

INGEST_EVENTS = Part(
    "events", "ingest",
    writes=(Use(ANNOUNCEMENTS, "publishes the announcements posted to it"),
            Use(AGREEMENTS, "publishes the agreement signings posted to it"),
            Use(DEAD_LETTERS, "writes the lines of a file it cannot parse")))
# documents have a producer of their own (compressed, large requests)
INGEST_DOCUMENTS = Part(
    "documents", "ingest",
    writes=(Use(DOCUMENTS, "publishes the documents posted to it, HTML reduced to text"),))
INGEST = Service("ingest", "anting-ingest", (INGEST_EVENTS, INGEST_DOCUMENTS))

#: every stage's dead letters, one use however many parts write them
_DEAD = Use(DEAD_LETTERS, "writes the records it cannot process")
_ENRICH_GROUP = "anting-enrich"
ENRICH_EVENTS = Part(
    "enrich", "enrich",
    reads=(Use(ANNOUNCEMENTS, "enriches each announcement"),
           Use(AGREEMENTS, "enriches each agreement signing")),
    writes=(Use(ENRICHED_EVENTS, "writes every event with its organizations resolved"),
            _DEAD),
    group=_ENRICH_GROUP, transactional=True)
ENRICH_CATALOG = Part(
    "catalog", "enrich",
    reads=(Use(ORGANIZATIONS, "keeps the organization catalog in memory"),))
ENRICH_DOCUMENTS = Part(
    "documents", "enrich's documents stage",
    reads=(Use(DOCUMENTS, "reads the events each document reports"),),
    writes=(Use(ANNOUNCEMENTS, "writes the announcements a document reports"),
            Use(AGREEMENTS, "writes the agreement signings a document reports"),
            _DEAD),
    group=f"{_ENRICH_GROUP}-documents")
ENRICH = Service("enrich", "anting-enrich", (ENRICH_EVENTS, ENRICH_CATALOG, ENRICH_DOCUMENTS),
                 checks=ALL_TOPICS)

_NOTIFY_GROUP = "anting-notify"
NOTIFY_EVENTS = Part(
    "events", "notify",
    reads=(Use(ENRICHED_EVENTS, "matches each event against the subscriptions"),),
    writes=(Use(NOTIFICATIONS, "logs each delivery attempt's outcome"),
            Use(NOTIFY_RETRIES, "schedules the next attempt of a failed delivery"),
            Use(NOTIFY_DIGESTS, "collects an event into an open digest window"), _DEAD),
    group=_NOTIFY_GROUP)
NOTIFY_RETRY_SCHEDULE = Part(
    "retries", "notify",
    reads=(Use(NOTIFY_RETRIES, "attempts the deliveries that are due"),),
    writes=NOTIFY_EVENTS.writes, group=f"{_NOTIFY_GROUP}-retries")
NOTIFY_DIGEST_WINDOWS = Part(
    "digests", "notify",
    reads=(Use(NOTIFY_DIGESTS, "sends a digest once its window closes"),),
    writes=NOTIFY_EVENTS.writes, group=f"{_NOTIFY_GROUP}-digests")
NOTIFY_STORE = Part(
    "subscriptions", "notify",
    reads=(Use(SUBSCRIPTIONS, "keeps every subscription in memory"),),
    writes=(Use(SUBSCRIPTIONS, "stores the subscriptions its API is given"),))
NOTIFY_LEDGER = Part(
    "ledger", "notify (its delivered-ledger)",
    reads=(Use(NOTIFICATIONS, "folds its delivered-ledger from the delivery log"),))
NOTIFY_STREAM = Part(
    "stream", "notify's SSE stream",
    reads=(Use(ENRICHED_EVENTS, "streams the events to its SSE clients"),))
NOTIFY_DLQ_MONITOR = Part(
    "dead-letter monitor", "notify (counts them for Prometheus)",
    reads=(Use(DEAD_LETTERS, "counts every dead letter for Prometheus"),))
NOTIFY = Service(
    "notify", "anting-notify",
    (NOTIFY_EVENTS, NOTIFY_STORE, NOTIFY_LEDGER, NOTIFY_RETRY_SCHEDULE, NOTIFY_DIGEST_WINDOWS,
     NOTIFY_STREAM, NOTIFY_DLQ_MONITOR),
    group_prefix=_NOTIFY_GROUP, checks=ALL_TOPICS)

_INSIGHTS_GROUP = "anting-insights"
INSIGHTS_ROUTE = Part(
    "route", "insights",
    reads=(Use(ENRICHED_EVENTS, "routes each event's facts to its entities"),),
    writes=(Use(INSIGHTS_FACTS, "repartitions each event's facts by entity"),
            Use(DEAD_LETTERS, "writes the enriched events it cannot read")),
    group=f"{_INSIGHTS_GROUP}-route")
INSIGHTS_TABLE = Part(
    "table", "insights (faust)",
    reads=(Use(INSIGHTS_FACTS, "folds the facts into its table"),),
    writes=(Use(INSIGHTS_CHANGELOG, "writes its table's changes"),),
    group=_INSIGHTS_GROUP)
# faust restores a table by assigning itself the changelog's partitions, in no group
INSIGHTS_RESTORE = Part(
    "restore", "insights, on start",
    reads=(Use(INSIGHTS_CHANGELOG, "restores its table on start"),))
INSIGHTS = Service("insights", "anting-insights", (INSIGHTS_ROUTE, INSIGHTS_TABLE, INSIGHTS_RESTORE),
                   group_prefix=_INSIGHTS_GROUP, groups_prefixed=True, own_topics=True,
                   checks=(ENRICHED_EVENTS, INSIGHTS_FACTS, INSIGHTS_CHANGELOG))

CLI = Service("cli", None, (
    Part("orgs", "`anting orgs load`",
         writes=(Use(ORGANIZATIONS, "anting loads and edits the organization catalog"),)),
    Part("dlq", "`anting dlq`",
         reads=(Use(DEAD_LETTERS, "anting dlq lists and replays dead letters"),
                Use(DEAD_LETTERS_REPLAYED, "anting dlq replay skips what it sent back")),
         writes=(Use(DEAD_LETTERS_REPLAYED, "anting dlq replay remembers what it sent back"),)),
))

#: Anting's own services and command line
ANTING: tuple[Service, ...] = (INGEST, ENRICH, NOTIFY, INSIGHTS, CLI)

PUBLISHER = Service("publisher", "publisher", (
    Part("publisher", "any producer", writes=(
        Use(ANNOUNCEMENTS, "an outside producer of input events and documents"),
        Use(AGREEMENTS, "an outside producer of input events and documents"),
        Use(DOCUMENTS, "an outside producer of input events and documents"))),
), outside=True)
READER = Service("reader", "reader", (
    Part("reader", "users' consumers",
         reads=(Use(ENRICHED_EVENTS, "an outside consumer of the output"),), group="reader-"),
), group_prefix="reader-", outside=True)
#: example clients outside Anting, with their own users on a secured cluster
OUTSIDE: tuple[Service, ...] = (PUBLISHER, READER)

SERVICES: tuple[Service, ...] = (*ANTING, *OUTSIDE)


def parts(services: Iterable[Service] = SERVICES) -> Iterator[tuple[Service, Part]]:
    """Every part of ``services``, with its service, in declaration order."""
    for service in services:
        for part in service.parts:
            yield service, part


# --------------------------------------------------------------------------- the README


def _cleanup(topic: Topic) -> str:
    """The cleanup policy, how long a deleting topic keeps records, and what else bounds
    a record (compression, a limit above the broker's default)."""
    text = topic.cleanup.replace(",", ", ")
    retention = topic.config.get("retention.ms")
    if retention is not None and "delete" in topic.cleanup:
        text += f" ({int(retention) // DAY_MS} days)"
    if "compression.type" in topic.config:
        text += f"; {topic.config['compression.type']}"
    if "max.message.bytes" in topic.config:
        text += f"; a record ≤ {int(topic.config['max.message.bytes']) // 1024:,} KiB"
    return text


def _names(titles: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(titles)) or "—"


def markdown_table(services: Iterable[Service] = SERVICES) -> str:
    """The README's topic table: each topic of :data:`shared.topics.ALL_TOPICS` with who
    writes and who reads it (the parts' titles), its key and cleanup policy."""
    declared = list(parts(services))
    lines = ["| topic | writers | readers | key | cleanup |", "|---|---|---|---|---|"]
    for topic in ALL_TOPICS:
        writers = _names(p.title for _, p in declared if any(u.topic == topic for u in p.writes))
        readers = _names(p.title for _, p in declared if any(u.topic == topic for u in p.reads))
        key = topic.key.replace("<", "&lt;")  # <id> is text, not an HTML tag
        lines.append(f"| `{topic.name}` | {writers} | {readers} | {key} | {_cleanup(topic)} |")
    return "\n".join(lines) + "\n"
