"""The codec of ingest, with no I/O: a body's bytes and media type → validated events, or
a :class:`Rejection` (an RFC 9457 problem) saying what is wrong; events → Kafka records
(topic by type, key, canonical JSON, CloudEvents binding headers, traceparent).

The HTTP entry point (``api.py``) and the file publisher (``files.py``) both come here,
so a line in a file and an item in a request are judged by the same code.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from shared.events import (
    EVENT_ADAPTER,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    AnyEvent,
    Event,
    EventTooLarge,
    dump_event,
    encode_json,
    error_paths,
    paths_of,
    read_json,
)
from shared.http import ErrorItem, Problem, media_type
from shared.settings import AntingSettings
from shared.topics import INPUT_TOPICS_BY_TYPE

__all__ = [
    "BOM",
    "JSON_TYPES",
    "MAX_RECORD_BYTES",
    "NDJSON_TYPES",
    "OutRecord",
    "Problem",
    "RejectedItem",
    "Rejection",
    "Unencodable",
    "decode_data",
    "decode_events",
    "encode",
    "to_record",
    "to_records",
    "traceparent_of",
    "type_label",
]

# what a JSON body may be sent as; anything else is 415
JSON_TYPES = frozenset({
    "application/json", "application/cloudevents+json", "application/cloudevents-batch+json",
})
NDJSON_TYPES = frozenset({
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/jsonlines",
})
STRUCTURED = b"application/cloudevents+json"
# a UTF-8 byte order mark: RFC 8259 §8.1 lets a parser ignore one at the start of a JSON
# text, and editors on Windows write it, so a body or file that starts with it is read
# without it (checked only once the fast path has failed: well-formed bodies pay nothing)
BOM = b"\xef\xbb\xbf"
# one event's canonical JSON: the contract's limit, the same that enrich applies (well
# under the broker's 1 MiB, so one event never fails half-way through a batch)
MAX_RECORD_BYTES = MAX_EVENT_BYTES
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")

BATCH_ADAPTER: TypeAdapter[list[AnyEvent]] = TypeAdapter(list[Event])


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """One rejected item of a batch (an array item, or an NDJSON line counted from 0):
    its ``index``, its ``id`` when it has a string one, and what is wrong with it
    (``errors``, paths relative to the item)."""

    index: int
    id: str | None
    errors: tuple[ErrorItem, ...]

    def to_json(self) -> dict[str, Any]:
        """The entry of the problem's ``rejected`` member: ``{"index", "id", "errors"}``."""
        return {"index": self.index, "id": self.id, "errors": [e.to_json() for e in self.errors]}


class Rejection(Problem):
    """A :class:`Problem` about events (of a request, or a line of a file) that also
    names the event types of what it rejected, ``rejected_types`` (``unknown`` for an
    item without a known type), for ``anting_ingest_events_total{outcome="rejected"}``.
    A batch's rejection (:meth:`batch`) lists every rejected item in ``rejected``."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Iterable[ErrorItem] = (),
        *,
        rejected_types: Iterable[str] = (),
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status, detail, errors, extensions=extensions)
        self.rejected_types: tuple[str, ...] = tuple(rejected_types)

    @classmethod
    def batch(cls, items: Sequence[Any], errors_by_index: Mapping[int, Sequence[ErrorItem]],
              status: int = 422) -> Rejection:
        """The rejection of a whole batch for the errors of some of its ``items`` (the
        parsed items, or ``{"id", "type"}`` of each event): 400 (malformed) or 422
        (invalid). ``errors`` holds each item's errors with its index in front of the path
        (``[3].data.headline``, ``[3]`` for the item itself), ``rejected`` one
        :class:`RejectedItem` per bad item, and every item of the batch counts as
        rejected."""
        rejected: list[RejectedItem] = []
        flat: list[ErrorItem] = []
        for i in sorted(errors_by_index):
            errs = tuple(errors_by_index[i])
            item = items[i] if 0 <= i < len(items) else None
            item_id = item.get("id") if isinstance(item, dict) else None
            rejected.append(RejectedItem(i, item_id if isinstance(item_id, str) else None, errs))
            flat.extend(replace(e, path=f"[{i}].{e.path}" if e.path != "$" else f"[{i}]")
                        for e in errs)
        what = "malformed" if status == 400 else "invalid"
        return cls(
            status,
            f"{len(rejected)} of {len(items)} events {what}; the request was rejected and "
            "nothing was published",
            flat,
            rejected_types=[type_label(x) for x in items],
            extensions={"rejected": [r.to_json() for r in rejected]},
        )

    @classmethod
    def not_json(cls, exc: ValueError, event_type: str) -> Rejection:
        """400: the body is not JSON (``exc`` says where), counted as one ``event_type``."""
        return cls(400, f"the body is not valid JSON: {exc}",
                   [ErrorItem("$", str(exc), "json_invalid")], rejected_types=[event_type])


def _unsupported_media_type(mtype: str, accepted: str) -> Problem:
    """415 for a body of media type ``mtype``; ``accepted`` names what may be sent."""
    return Problem(415, f"content type {mtype or '(none)'!r} is not accepted; send {accepted}",
                   [ErrorItem("$", "unsupported media type", "media_type")])


# not frozen: a frozen dataclass pays object.__setattr__ per field, once per event
@dataclass(slots=True)
class OutRecord:
    """One record for the producer."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    event_id: str = ""
    event_type: str = ""


def type_label(obj: object) -> str:
    """The metrics label for an item's type: a known type, else ``unknown``."""
    t = obj.get("type") if isinstance(obj, dict) else None
    return t if isinstance(t, str) and t in EVENT_TYPES else "unknown"


def _item_errors(exc: ValidationError) -> dict[int, list[ErrorItem]]:
    """Errors of a list validation, grouped by item index, paths relative to the item."""
    grouped: dict[int, list[ErrorDetails]] = defaultdict(list)
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        index = loc[0] if loc and isinstance(loc[0], int) else -1
        grouped[index].append({**err, "loc": tuple(loc[1:]) if index >= 0 else loc})
    return {i: ErrorItem.of(paths_of(errs)) for i, errs in grouped.items()}


class Unencodable(ValueError):
    """A valid event the canonical JSON cannot carry (an integer beyond 64 bits)."""


def encode(event: AnyEvent) -> bytes:
    """The canonical JSON value; raises :class:`Unencodable` instead of a TypeError."""
    try:
        return dump_event(event)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise Unencodable(f"cannot be encoded as JSON: {exc} (numbers must fit in 64 bits)") from None


def _encode_all(events: Sequence[AnyEvent], batch: bool) -> list[bytes]:
    values: list[bytes] = []
    bad: dict[int, list[ErrorItem]] = {}
    for i, event in enumerate(events):
        try:
            values.append(encode(event))
        except Unencodable as exc:
            values.append(b"")
            bad[i] = [ErrorItem("$", str(exc), "unencodable")]
    if bad:
        if batch:
            raise Rejection.batch([{"id": e.id, "type": e.type} for e in events], bad)
        raise Rejection(422, f"the event {bad[0][0].message}", bad[0],
                        rejected_types=[events[0].type])
    return values


def _check_sizes(events: Sequence[AnyEvent], values: Sequence[bytes], batch: bool) -> None:
    too_big = {i: [ErrorItem("$", str(EventTooLarge(len(v))), "too_large")]
               for i, v in enumerate(values) if len(v) > MAX_RECORD_BYTES}
    if too_big:
        if batch:
            raise Rejection.batch([{"id": e.id, "type": e.type} for e in events], too_big, 413)
        raise Rejection(413, "the event is larger than the contract allows "
                        f"({MAX_RECORD_BYTES} bytes of canonical JSON)", too_big[0])


def decode_events(body: bytes, content_type: str | None) -> list[AnyEvent]:
    """A ``POST /v1/events`` body → events; raises :class:`Problem` 415 for a media
    type other than :data:`JSON_TYPES` and :data:`NDJSON_TYPES`, :class:`Rejection` 400
    (not JSON) or 422 (not valid events).

    A single CloudEvent, a JSON array of them, or NDJSON. All or nothing: one bad item
    rejects the request, and the problem lists every bad item with its index. A UTF-8
    byte order mark at the start of the body is skipped.
    """
    mtype = media_type(content_type)
    if mtype in NDJSON_TYPES:
        events = _fast_ndjson(body)
        if events:
            return events
        if body.startswith(BOM):
            body = body[len(BOM):]
            return _fast_ndjson(body) or _decode_ndjson(body)
        return _decode_ndjson(body)
    if mtype not in JSON_TYPES:
        raise _unsupported_media_type(
            mtype, "application/json, application/cloudevents+json, "
            "application/cloudevents-batch+json or application/x-ndjson")
    fast = _fast_json(body)
    if fast:
        return fast
    if body.startswith(BOM):
        return decode_events(body[len(BOM):], content_type)
    try:
        doc = read_json(body)
    except ValueError as exc:
        raise Rejection.not_json(exc, "unknown") from None
    if isinstance(doc, dict):
        try:
            return [EVENT_ADAPTER.validate_json(body)]
        except ValidationError as exc:
            raise Rejection(422, "the event does not match the CloudEvents schema of its "
                            "type; nothing was published", ErrorItem.of(error_paths(exc)),
                            rejected_types=[type_label(doc)]) from None
    if isinstance(doc, list):
        if not doc:
            raise Rejection(422, "the batch is empty",
                            [ErrorItem("$", "expected at least one event", "too_short")])
        try:
            return BATCH_ADAPTER.validate_json(body)
        except ValidationError as exc:
            raise Rejection.batch(doc, _item_errors(exc)) from None
    raise Rejection(422, "expected a CloudEvent object or a JSON array of them",
                    [ErrorItem("$", f"got a JSON {type(doc).__name__}", "model_type")],
                    rejected_types=["unknown"])


def _plain_json(body: bytes) -> bool:
    """False when the body may hold NaN or Infinity: pydantic's JSON parser reads those
    tokens, orjson (and JSON) does not, and they must stay a 400."""
    return b"NaN" not in body and b"Infinity" not in body


def _fast_json(body: bytes) -> list[AnyEvent] | None:
    """The events of a valid object or non-empty array, validated straight from the bytes
    (no orjson parse first: that parse was a sixth of a batch's CPU); None when anything
    is wrong, and :func:`decode_events` then judges the body again, slowly, for the
    problem."""
    first = body[:64].lstrip()[:1]
    if first not in (b"{", b"[") or not _plain_json(body):
        return None
    try:
        if first == b"{":
            return [EVENT_ADAPTER.validate_json(body)]
        return BATCH_ADAPTER.validate_json(body) or None
    except ValidationError:
        return None


def _fast_ndjson(body: bytes) -> list[AnyEvent] | None:
    """NDJSON whose every non-blank line is a valid event (see :func:`_fast_json`)."""
    if not _plain_json(body):
        return None
    try:
        events = [EVENT_ADAPTER.validate_json(line) for line in body.split(b"\n")
                  if line.strip()]
    except ValidationError:
        return None
    return events or None


def _decode_ndjson(body: bytes) -> list[AnyEvent]:
    lines = body.split(b"\n")
    items: list[Any] = []
    malformed: dict[int, list[ErrorItem]] = {}
    invalid: dict[int, list[ErrorItem]] = {}
    events: list[AnyEvent] = []
    for i, line in enumerate(lines):
        if not line.strip():
            items.append(None)
            continue
        try:
            obj = read_json(line)
        except ValueError as exc:
            items.append(None)
            malformed[i] = [ErrorItem("$", f"line {i + 1}: {exc}", "json_invalid")]
            continue
        items.append(obj)
        try:
            events.append(EVENT_ADAPTER.validate_json(line))
        except ValidationError as exc:
            invalid[i] = ErrorItem.of(error_paths(exc))
    if malformed:
        raise Rejection.batch(items, malformed, 400)
    if invalid:
        raise Rejection.batch(items, invalid)
    if not events:
        raise Rejection(422, "the body holds no events",
                        [ErrorItem("$", "expected at least one line", "too_short")])
    return events


def decode_data(body: bytes, content_type: str | None, event_type: str, *, source: str,
                subject: str | None = None) -> AnyEvent:
    """A bare ``data`` object (``/v1/announcements``, ``/v1/agreements``) → a full event:
    the server fills ``id``, ``time``, ``source`` and ``type``. Error paths are relative
    to the body (``headline``, not ``data.headline``). Raises :class:`Problem` 415 for a
    media type other than ``application/json``, :class:`Rejection` 400 (not JSON) or 422
    (not a valid ``data`` object of ``event_type``)."""
    mtype = media_type(content_type)
    if mtype != "application/json":
        raise _unsupported_media_type(mtype, "application/json")
    try:
        data = read_json(body)
    except ValueError as exc:
        raise Rejection.not_json(exc, event_type) from None
    envelope: dict[str, Any] = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": event_type,
        "time": datetime.now(UTC).isoformat(), "data": data,
    }
    if subject:
        envelope["subject"] = subject
    try:
        return EVENT_ADAPTER.validate_json(encode_json(envelope))
    except ValidationError as exc:
        errors = []
        for e in ErrorItem.of(error_paths(exc)):
            if e.path == "data":
                e = replace(e, path="$")
            elif e.path.startswith("data."):
                e = replace(e, path=e.path[len("data."):])
            errors.append(e)
        raise Rejection(422, f"the body is not a valid {event_type} data object; nothing "
                        "was published", errors, rejected_types=[event_type]) from None


def traceparent_of(event: AnyEvent, fallback: str | None = None) -> str | None:
    """The W3C traceparent: the event's own extension attribute, else the request's."""
    extra = event.model_extra or {}
    for candidate in (extra.get("traceparent"), fallback):
        if isinstance(candidate, str) and TRACEPARENT.match(candidate.strip()):
            return candidate.strip()
    return None


def to_record(event: AnyEvent, settings: AntingSettings, traceparent: str | None = None,
              value: bytes | None = None) -> OutRecord:
    """The Kafka record of an event: its type's topic, key ``subject`` else ``id``,
    the canonical JSON value and the CloudEvents Kafka binding headers."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event.id.encode()),
        ("ce_type", event.type.encode()),
        ("ce_source", event.source.encode()),
        ("content-type", STRUCTURED),
    ]
    if event.subject:
        headers.append(("ce_subject", event.subject.encode()))
    tp = traceparent_of(event, traceparent)
    if tp:
        headers.append(("traceparent", tp.encode()))
    return OutRecord(
        settings.topic(INPUT_TOPICS_BY_TYPE[event.type]), event.key,
        value if value is not None else encode(event), headers, event.id, event.type,
    )


def to_records(events: Iterable[AnyEvent], settings: AntingSettings,
               traceparent: str | None = None, *, batch: bool = True) -> list[OutRecord]:
    """Records for every event (``batch``: of a request that may hold several), each
    checked first: :class:`Rejection` 422 for an event the canonical JSON cannot carry,
    413 for one larger than :data:`MAX_RECORD_BYTES`; with ``batch`` the rejection lists
    the items (:meth:`Rejection.batch`)."""
    events = list(events)
    values = _encode_all(events, batch)
    _check_sizes(events, values, batch)
    return [to_record(e, settings, traceparent, v) for e, v in zip(events, values, strict=True)]
