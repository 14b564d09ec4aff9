"""A delivery: one event, or a digest of matching events, for one subscription — its
stable idempotency key and its JSON form (what a retry record and a dead letter hold).
What a delivery looks like to a receiver is :mod:`services.notify.rendering`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from services.notify.matching import Reason

#: The CloudEvents ``source`` of what notify makes itself (a digest).
SOURCE = "/anting/notify"


def idempotency_key(source: str, event_id: str, subscription_id: str) -> str:
    """``msg_`` + 32 hex digits, stable per (event, subscription): the same for every retry
    and every resend. An event is its CloudEvents ``source`` and ``id`` together (two
    publishers may use the same id; CloudEvents 1.0, "id"), so both are hashed: as the
    JSON array ``[source, id, subscription id]``, which no other triple encodes to, whatever
    characters the values hold."""
    return "msg_" + hashlib.sha256(orjson.dumps((source, event_id, subscription_id))).hexdigest()[:32]


def digest_key(subscription_id: str, events: list[tuple[str, str]]) -> str:
    """A digest's key (``msg_`` + 32 hex digits) from its subscription and its events'
    (source, id) pairs, in any order: the same set of events gives the same key."""
    return "msg_" + hashlib.sha256(orjson.dumps([subscription_id, sorted(events)])).hexdigest()[:32]


@dataclass
class Delivery:
    """What one attempt sends to one subscription: one event, or a digest of several.

    ``key`` is the idempotency key (``msg_`` + 32 hex digits, the ``webhook-id``), the same
    for every attempt; ``attempt`` counts from 1. Events are held as the record's bytes
    (:meth:`of_record`) or as decoded JSON objects (a digest, a retry record read back).
    """

    key: str
    subscription_id: str
    # enriched CloudEvents as JSON objects, unchanged (read them with decoded(): a delivery
    # made from a record keeps its bytes and decodes them only when they are needed)
    events: list[dict[str, Any]]
    reasons: list[list[Reason]]  # per event
    attempt: int = 1
    ingested_ms: int | None = None  # the earliest input event's Kafka timestamp
    digest: bool = False
    created_at: str | None = None  # a digest's time (set when it is made); not needed for one event
    # the subscription's channel type, written into every retry record: a line about a
    # retry of a subscription deleted meanwhile still names its real channel
    channel: str | None = None
    # The event's record value as read (one-event deliveries): the webhook body is that JSON
    # object with two attributes added at its end, instead of the decoded event encoded
    # again. By the time a delivery is sent, its decoded event has usually left the CPU's
    # caches (hundreds of deliveries wait their turn): walking it again cost ~5 µs of the
    # send, copying the bytes ~1. Not part of the retry record (a retry encodes again).
    source: bytes | None = field(default=None, repr=False, compare=False)
    # the events' ids and CloudEvents sources, when known without decoding
    ids: list[str] | None = field(default=None, repr=False, compare=False)
    srcs: list[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_record(cls, key: str, subscription_id: str, raw: bytes, event_source: str, event_id: str,
                  reasons: list[Reason], ingested_ms: int | None) -> Delivery:
        """A one-event delivery holding the record's bytes (``raw``) and the event's source
        and id, not the decoded event: the caller drops that right after matching, while it
        is still in the CPU's caches, instead of hundreds of decoded events waiting for a
        delivery slot (~5 KB of objects each) and being freed long after, cold. A webhook
        never decodes it again; email, chat, log and a retry record decode it when they
        need it."""
        return cls(key, subscription_id, [], [reasons], 1, ingested_ms,
                   source=raw, ids=[event_id], srcs=[event_source])

    def decoded(self) -> list[dict[str, Any]]:
        """The events (decoded from ``source`` on first use, for a delivery made from a record)."""
        if not self.events and self.source is not None:
            self.events = [orjson.loads(self.source)]
        return self.events

    @property
    def event_ids(self) -> list[str]:
        """The events' ids, in order (parallel to :attr:`event_sources`)."""
        if self.ids is not None:
            return self.ids
        return [str(e.get("id")) for e in self.events]

    @property
    def event_sources(self) -> list[str]:
        """The events' CloudEvents ``source``, in order: with :attr:`event_ids`, their identity."""
        if self.srcs is not None:
            return self.srcs
        return [str(e.get("source")) for e in self.events]

    @property
    def event_id(self) -> str:
        """The id of the CloudEvent delivered: the event's, or a digest's (its key)."""
        return self.key if self.digest else self.event_ids[0]

    @property
    def event_source(self) -> str:
        """The source of the CloudEvent delivered: the event's, or notify's for a digest."""
        return SOURCE if self.digest else self.event_sources[0]

    def all_reasons(self) -> list[Reason]:
        """Every event's reasons, in one list (a digest's in event order)."""
        return [r for rs in self.reasons for r in rs]

    def to_json(self) -> bytes:
        """The delivery as JSON (a retry record's value, a dead letter's): the events decoded,
        the record's bytes and the cached ids left out."""
        self.decoded()
        fields = asdict(self)
        del fields["source"], fields["ids"], fields["srcs"]
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, raw: bytes) -> Delivery:
        """The delivery :meth:`to_json` wrote; raises ``orjson.JSONDecodeError`` or
        ``TypeError`` (a member that is not a field) on anything else."""
        return cls(**orjson.loads(raw))


__all__ = ["SOURCE", "Delivery", "digest_key", "idempotency_key"]
