"""Every topic, named once, beside its value model, partitions and cleanup policy.

Import the constants (``ANNOUNCEMENTS``, ...) everywhere else; ``settings.topic(T)``
gives the full name under ``ANTING_TOPIC_PREFIX``. ``shared.kafka.ensure_topics`` creates
them idempotently at start-up, replicated min(3, brokers) ways with two in-sync replicas
when three (the cluster's size is part of the contract only through that rule), and
refuses, naming it, a topic whose partitions or replication differ from what is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter

from shared.documents import MAX_DOCUMENT_TEXT_BYTES, Document
from shared.events import ENRICHED_ADAPTER, EVENT_ADAPTER
from shared.organizations import Organization
from shared.subscriptions import DeliveryRecord, Subscription

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    value: TypeAdapter[Any] | None
    partitions: int
    cleanup: Literal["delete", "compact", "compact,delete"]
    key: str
    config: dict[str, str] = field(default_factory=dict)
    doc: str = ""

    def qualified(self, prefix: str = "") -> str:
        return f"{prefix}{self.name}"

    def topic_config(self) -> dict[str, str]:
        return {"cleanup.policy": self.cleanup, **self.config}


ANNOUNCEMENTS = Topic(
    "announcements", EVENT_ADAPTER, 3, "delete", "CloudEvent subject, else id",
    doc="conference.announcement CloudEvents from ingest, enrich's documents stage or any producer",
)
AGREEMENTS = Topic(
    "agreements", EVENT_ADAPTER, 3, "delete", "CloudEvent subject, else id",
    doc="agreement.signed CloudEvents from ingest, enrich's documents stage or any producer",
)
# Articles whole, before events are read out of them (services/enrich/documents.py). A
# document's record is far larger than an event's, so it is compressed (text compresses
# well: about a third) and bounded: the broker refuses more than a document may be
# (shared.documents.MAX_DOCUMENT_TEXT_BYTES, JSON-escaped, with room for the envelope).
DOCUMENT_MAX_MESSAGE_BYTES = 2 * MAX_DOCUMENT_TEXT_BYTES + 64 * 1024
DOCUMENTS = Topic(
    "documents", TypeAdapter(Document), 3, "delete", "document id",
    config={"compression.type": "gzip", "max.message.bytes": str(DOCUMENT_MAX_MESSAGE_BYTES)},
    doc="articles (text, Markdown, HTML reduced to text) from ingest, whole; enrich reads events out of them",
)
ORGANIZATIONS = Topic(
    "organizations", TypeAdapter(Organization), 1, "compact", "organization id",
    config={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
    doc="the organization catalog; a null value deletes",
)
ENRICHED_EVENTS = Topic(
    "enriched-events", ENRICHED_ADAPTER, 3, "delete", "same key as the input event",
    doc="input events with every named organization resolved",
)
SUBSCRIPTIONS = Topic(
    "subscriptions", TypeAdapter(Subscription), 1, "compact", "subscription id",
    config={"min.cleanable.dirty.ratio": "0.1"},
    doc="who wants which events, and how; a null value deletes",
)
# A delivery is remembered for as long as a retry record lives. notify's delivered-ledger
# is folded from the delivery log (services/notify/ledger.py): Kafka deletes lines older
# than this, and notify drops older entries from memory, so neither grows with every
# delivery ever made.
LEDGER_RETENTION_MS = 7 * DAY_MS
NOTIFICATIONS = Topic(
    "notifications", TypeAdapter(DeliveryRecord), 3, "delete", "subscription id",
    config={"retention.ms": str(LEDGER_RETENTION_MS), "segment.ms": str(DAY_MS)},
    doc="the delivery log: one record per attempt outcome; notify's delivered-ledger is read from it",
)
DEAD_LETTERS = Topic(
    "dead-letters", None, 1, "delete", "original key",
    config={"retention.ms": str(90 * DAY_MS)},
    doc="records a stage could not process: original bytes plus dlq.* headers",
)
# What `anting dlq replay` has sent back, one record per dead letter, so that a second
# replay skips it. Compacted on the letter's coordinates: replaying a letter again
# replaces its record instead of adding one, and reading the whole topic costs one
# record per letter ever replayed. Kept as long as dead letters are: a record is
# written after its letter, so it outlives it. (A plain log of replays would grow
# with every replay; a header on the letter is impossible, records are immutable.)
DEAD_LETTERS_REPLAYED = Topic(
    "dead-letters-replayed", None, 1, "compact,delete", "dead letter's partition@offset",
    config={"retention.ms": str(90 * DAY_MS), "min.cleanable.dirty.ratio": "0.1"},
    doc="dead letters anting dlq replay sent back: JSON {partition, offset, timestamp, topic, replayed_at, by}",
)
# notify's own state, kept in Kafka so that any instance can pick it up
NOTIFY_RETRIES = Topic(
    "notify-retries", None, 3, "delete", "idempotency key",
    config={"retention.ms": str(7 * DAY_MS)},
    doc="deliveries waiting for their next attempt (durable retry schedule)",
)
# An event collected into a digest is written here, keyed by its subscription, and the
# event's own offset is committed at once: open digest windows live in this topic, not in
# held offsets. notify's digests group reads it and commits a record once its digest is
# out; a restart re-reads the open windows. Kept longer than the longest window (a day)
# plus the digest's retries.
NOTIFY_DIGESTS = Topic(
    "notify-digests", None, 3, "delete", "subscription id",
    config={"retention.ms": str(7 * DAY_MS)},
    doc="events collected into open digest windows: one-event deliveries (JSON), keyed by subscription",
)

# insights' state (services/insights): the facts each enriched event teaches an entity
# (organization, unresolved name, sector, city), keyed by the entity so that one instance
# folds all of an entity's facts, and the faust table's changelog (one compacted record per
# entity: its counts, windows, partners, latest events and replay guard). The changelog's
# name is faust's, <app id>-<table>-changelog, with the default ANTING_INSIGHTS_GROUP; both
# have the same partitions (faust co-partitions a table with the stream that writes it).
INSIGHTS_FACTS = Topic(
    "insights-facts", None, 3, "delete", "entity key (org:<id>, sector:<name>...)",
    config={"retention.ms": str(7 * DAY_MS)},
    doc="what each enriched event teaches each entity it names (insights' repartition)",
)
INSIGHTS_CHANGELOG = Topic(
    "anting-insights-entities-changelog", None, 3, "compact", "entity key",
    config={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
    doc="insights' faust table: one record per entity, restored on start",
)

ALL_TOPICS: tuple[Topic, ...] = (
    ANNOUNCEMENTS, AGREEMENTS, DOCUMENTS, ORGANIZATIONS, ENRICHED_EVENTS,
    SUBSCRIPTIONS, NOTIFICATIONS, DEAD_LETTERS, DEAD_LETTERS_REPLAYED, NOTIFY_RETRIES, NOTIFY_DIGESTS,
    INSIGHTS_FACTS, INSIGHTS_CHANGELOG,
)
INPUT_TOPICS_BY_TYPE = {"conference.announcement": ANNOUNCEMENTS, "agreement.signed": AGREEMENTS}


def by_name(name: str, prefix: str = "") -> Topic:
    for t in ALL_TOPICS:
        if t.qualified(prefix) == name:
            return t
    raise KeyError(name)


__all__ = ["AGREEMENTS", "ALL_TOPICS", "ANNOUNCEMENTS", "DAY_MS", "DEAD_LETTERS",
           "DEAD_LETTERS_REPLAYED", "DOCUMENTS", "DOCUMENT_MAX_MESSAGE_BYTES", "ENRICHED_EVENTS", "INPUT_TOPICS_BY_TYPE",
           "INSIGHTS_CHANGELOG", "INSIGHTS_FACTS", "LEDGER_RETENTION_MS", "NOTIFICATIONS",
           "NOTIFY_DIGESTS", "NOTIFY_RETRIES", "ORGANIZATIONS", "SUBSCRIPTIONS", "Topic", "by_name"]
