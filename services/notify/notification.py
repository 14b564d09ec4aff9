"""A delivery (one or a digest of matching events for one subscription) and what it
renders to: the stable idempotency key, the webhook body, the email text.

The webhook body is a CloudEvent in JSON structured mode, so any CloudEvents
parser reads it: for one event, the enriched event itself plus the extension
attributes ``subscription`` (the subscription id) and ``reason`` (why it was
sent, readable); for a digest, an ``anting.digest`` CloudEvent whose ``data``
holds the events and the reason for each.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from services.notify.matching import Reason, describe

DIGEST_TYPE = "anting.digest"
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


_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """``text`` with every control character and line separator (CR, LF, NEL, U+2028, ...:
    everything ``str.splitlines`` breaks at) turned into one space: an event's value put
    into a line of a message (a subject, a title, a line of the email text) stays one line."""
    return _LINE_BREAKS.sub(" ", text)


@dataclass
class Delivery:
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
        return [r for rs in self.reasons for r in rs]

    def to_json(self) -> bytes:
        self.decoded()
        fields = asdict(self)
        del fields["source"], fields["ids"], fields["srcs"]
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, raw: bytes) -> Delivery:
        return cls(**orjson.loads(raw))

    # --- rendering ---------------------------------------------------------------

    def cloudevent(self) -> dict[str, Any]:
        if not self.digest:
            return {**self.decoded()[0], "subscription": self.subscription_id, "reason": describe(self.reasons[0])}
        return {
            "specversion": "1.0",
            "id": self.key,
            "source": SOURCE,
            "type": DIGEST_TYPE,
            "time": self.created_at or datetime.now(UTC).isoformat(),
            "subject": self.subscription_id,
            "datacontenttype": "application/json",
            "subscription": self.subscription_id,
            "reason": f"digest of {len(self.decoded())} events",
            "data": {
                "count": len(self.decoded()),
                "events": [{**e, "reason": describe(r)} for e, r in zip(self.decoded(), self.reasons, strict=True)],
            },
        }

    def body(self) -> bytes:
        if self.source is not None and not self.digest:
            spliced = with_attributes(self.source, {"subscription": self.subscription_id,
                                                    "reason": describe(self.reasons[0])})
            if spliced is not None:
                return spliced
        return orjson.dumps(self.cloudevent())

    def title(self) -> str:
        """One line (an email subject, a chat title): the headline, or what a digest holds."""
        if self.digest:
            return f"Anting digest: {len(self.decoded())} events"
        return headline(self.decoded()[0])

    def text(self) -> str:
        lines = []
        for event, reasons in zip(self.decoded(), self.reasons, strict=True):
            data = event.get("data") or {}
            # every value from the event is made one line: a line break in it cannot
            # make a line of its own (a forged "why:")
            lines.append(f"* {headline(event)}")
            lines.append(one_line(f"  {event.get('type')} {event.get('id')} from {event.get('source')}"
                                  f" at {event.get('time') or '-'}"))
            if data.get("summary"):
                lines.append(f"  {one_line(str(data['summary']))}")
            orgs = [o.get("name") for o in data.get("organizations") or []]
            if orgs:
                lines.append(one_line(f"  organizations: {', '.join(str(o) for o in orgs)}"))
            lines.append(one_line(f"  why: {describe(reasons)}"))
            lines.append("")
        return "\n".join(lines)

    def html(self) -> str:
        items = []
        for event, reasons in zip(self.decoded(), self.reasons, strict=True):
            data = event.get("data") or {}
            items.append(
                f"<li><strong>{html.escape(headline(event))}</strong><br>"
                f"{html.escape(str(event.get('type')))} · {html.escape(str(event.get('time') or '-'))}"
                + (f"<br>{html.escape(str(data['summary']))}" if data.get("summary") else "")
                + f"<br><small>why: {html.escape(describe(reasons))}</small></li>"
            )
        return f"<html><body><h3>{html.escape(self.title())}</h3><ul>{''.join(items)}</ul></body></html>"


def with_attributes(obj: bytes, attributes: dict[str, Any]) -> bytes | None:
    """The JSON object ``obj`` (bytes) with ``attributes`` added as its last members, by
    splicing bytes; ``None`` when ``obj`` does not end as a non-empty object does. The
    caller makes sure ``obj`` has none of those names already (no duplicate members)."""
    end = obj.rstrip()
    if not end.endswith(b"}") or end[:-1].rstrip().endswith(b"{"):
        return None
    return b"%s,%s}" % (end[:-1], orjson.dumps(attributes)[1:-1])


def headline(event: dict[str, Any]) -> str:
    """The event's headline (or title, or type) as one line."""
    data = event.get("data") or {}
    return one_line(str(data.get("headline") or data.get("title") or event.get("type") or "event"))
