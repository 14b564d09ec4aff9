"""The events Anting carries: CloudEvents 1.0 (JSON structured mode) and their data.

This module is the contract, once: ingest, enrich and notify all check events with
these models (:func:`parse_event`, :func:`parse_enriched`), so an event one stage
accepts is an event every later stage can read and write. Two input types,
``conference.announcement`` and ``agreement.signed``, told apart by the envelope's
``type`` (a discriminated union, so an unknown type is an error at the path
``type``); and their enriched forms, which keep the envelope and add what enrich
resolved. Bytes in and out go through :func:`parse_event` and :func:`dump_event`
so every stage reads and writes the same canonical JSON.

What the contract refuses, each a kind of input that broke a later stage before:

- numbers JSON readers disagree on: not finite (``1e400`` overflows to infinity in
  some parsers, is refused by others, and orjson writes infinity as ``null``), or
  integers beyond ±(2**53 - 1), the range every JSON reader holds exactly (I-JSON,
  RFC 7493 §2.2);
- times that are not RFC 3339 with an offset (``2024-05-01T10:00:00`` names no
  instant); lowercase ``t`` and ``z`` are RFC 3339 and accepted;
- control characters in strings that become protocol fields (``id``, ``source``,
  ``subject``, extension attributes: Kafka header values, SSE ``id:`` lines, e-mail
  headers) and in names; prose fields (``summary``) may hold line breaks;
- more than a press release ever names (:data:`LIMITS`), so that the enriched form
  of any accepted event fits in one Kafka record (see :data:`MAX_EVENT_BYTES`).

Records written in the CloudEvents Kafka binding's *binary* content mode (``ce_*``
headers, the value is the data) are read by :func:`record_event_bytes`, which gives
the structured-mode JSON that the parsers take.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError, SchemaValidator, core_schema

from shared.organizations import Organization

# --- the limits of one event ---------------------------------------------------

#: The largest canonical JSON of one input event (bytes). With :data:`LIMITS` and the
#: catalog's record bound (``shared.organizations.MAX_RECORD_BYTES``), the enriched
#: form of the largest event stays under 1 MiB, Kafka's default ``max.message.bytes``:
#: 256 KiB + 100 mentions x (4 KiB record + match) + the enrichment block ≈ 0.75 MiB.
MAX_EVENT_BYTES = 256 * 1024

#: The most items one event may name. A real press release names tens of
#: organizations ("about 20 companies"), not hundreds.
LIMITS: dict[str, int] = {
    "organizations": 100,
    "people": 200,
    "figures": 100,
    "sectors": 50,
    "name": 256,  # characters of a name, role, place, sector, subject, id
    "headline": 1000,  # characters of a headline or title
    "summary": 20000,  # characters of a summary
    "uri": 2048,  # characters of source and dataschema
    "mentions": 100,  # places one organization is named in the document an event was read from
}

#: Integers every JSON reader holds exactly (I-JSON, RFC 7493 §2.2).
MAX_SAFE_INTEGER = 2**53 - 1

# C0 and C1 control characters and DEL: nothing a name or protocol field carries,
# and CR/LF end a line in SSE, HTTP and e-mail headers.
_LINE = r"^[^\x00-\x1f\x7f-\x9f]*$"
# ...and a name has at least one visible character
_NAME = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# prose may break lines (tab, LF, CR) but holds no other control character
_PROSE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_PATTERN_MESSAGES = {
    _LINE: "must not contain control characters (U+0000-U+001F, U+007F-U+009F)",
    _NAME: "must contain a visible character and no control characters (U+0000-U+001F, U+007F-U+009F)",
    _PROSE: "must not contain control characters other than tab, LF and CR",
}

Line = Annotated[str, StringConstraints(max_length=LIMITS["name"], pattern=_LINE)]
Name = Annotated[str, StringConstraints(max_length=LIMITS["name"], pattern=_NAME)]
# a short field no protocol line carries (a role, a place, a sector): bounded only; the
# writers of line-based formats escape whatever they take from it
Text = Annotated[str, StringConstraints(max_length=LIMITS["name"])]
NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=LIMITS["name"])]
Uri = Annotated[str, StringConstraints(max_length=LIMITS["uri"], pattern=_NAME)]
Headline = Annotated[str, StringConstraints(max_length=LIMITS["headline"], pattern=_NAME)]
Prose = Annotated[str, StringConstraints(max_length=LIMITS["summary"], pattern=_PROSE)]
# a subscription's names and ids (shared.subscriptions), which have no length rule of events
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


def _json_number(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError(
            "finite_number",
            "must be a finite number: JSON has no Infinity or NaN, and a literal such as "
            "1e400 overflows to infinity",
        )
    if isinstance(value, int) and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise PydanticCustomError(
            "safe_integer",
            "integers must lie within ±9007199254740991 (2**53 - 1), the range every JSON "
            "reader holds exactly (RFC 7493)",
        )
    return value


def json_integer(value: object) -> object:
    """``3.0`` as ``3``: JSON has one number type, and JSON Schema's ``integer`` takes any
    number whose fraction is zero, so a sender's serialiser that writes ``21.0`` sends the
    integer 21. Anything else is left to the strict integer check (``"21"`` stays refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Number = Annotated[int | float, AfterValidator(_json_number)]
# the constraints before the conversion, so that they stay in the JSON Schema
Count = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER), BeforeValidator(json_integer)]

# RFC 3339 §5.6 date-time: seconds and an offset required; 't', 'z' are RFC 3339 too
_RFC3339 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
_PATTERN_MESSAGES[_RFC3339] = (
    "must be an RFC 3339 date-time with seconds and an offset, e.g. "
    "2024-05-01T10:00:00+08:00 or 2024-05-01T02:00:00Z")

#: A point in time: RFC 3339 with an offset (CloudEvents ``time`` requires RFC 3339).
#: From JSON, the text must match RFC 3339 before it is parsed (pydantic alone also takes
#: a space or no seconds); from Python, an aware ``datetime``. All of it runs in
#: pydantic-core: this type is on the hot path of every stage.
Timestamp = Annotated[
    datetime,
    GetPydanticSchema(lambda _tp, _handler: core_schema.json_or_python_schema(
        json_schema=core_schema.chain_schema([
            core_schema.str_schema(pattern=_RFC3339),
            core_schema.datetime_schema(strict=False, tz_constraint="aware"),
        ]),
        python_schema=core_schema.datetime_schema(tz_constraint="aware"),
    )),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# Unknown keys are kept (nothing a publisher sent is lost), but they obey the same
# number rules: an unknown field is written by every stage as much as a known one.
def _numbers(value: object) -> Iterator[int | float]:
    """Every number in a JSON value (booleans are not numbers), depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            yield item


def _json_value(value: object) -> object:
    """Any JSON value whose every number is finite and, if an integer, safe."""
    for number in _numbers(value):
        _json_number(number)
    return value


JsonValue = Annotated[Any, AfterValidator(_json_value)]

#: CloudEvents extension attribute values: string, integer or boolean (the spec's
#: types; URI, timestamp and binary travel as strings). They become Kafka headers in
#: the binary content mode, so a string is one line.
ExtensionValue = Annotated[
    bool | Annotated[int, Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(json_integer)] | Annotated[
        str, StringConstraints(max_length=LIMITS["uri"], pattern=_LINE)],
    Field(union_mode="left_to_right"),
]
_EXTENSION_NAME = r"^[a-z0-9]{1,64}$"
_PATTERN_MESSAGES[_EXTENSION_NAME] = (
    "extension attribute names are 1-64 lowercase ASCII letters and digits "
    "(CloudEvents 1.0 §3.1.3)")
ExtensionName = Annotated[str, StringConstraints(pattern=_EXTENSION_NAME)]

ANNOUNCEMENT = "conference.announcement"
AGREEMENT = "agreement.signed"
EVENT_TYPES: tuple[str, ...] = (ANNOUNCEMENT, AGREEMENT)


class Model(BaseModel):
    """Strict types (no "5" for 5), unknown keys kept as JSON values: nothing a
    publisher sent is lost."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)
    __pydantic_extra__: dict[str, JsonValue] = Field(init=False)


class AnnouncementKind(StrEnum):
    conference_opened = "conference_opened"
    conference_closed = "conference_closed"
    forum = "forum"
    alliance_established = "alliance_established"
    whitepaper_released = "whitepaper_released"
    industry_base_unveiled = "industry_base_unveiled"
    exhibition = "exhibition"
    speech = "speech"
    other = "other"


class Location(Model):
    venue: Text | None = None
    town: Text | None = None
    district: Text | None = None
    city: Text | None = None
    country: Text | None = None


class TextSpan(Model):
    """Where a document names something: ``text[start:end] == text`` in the document's
    text, counted in Unicode code points (Python's ``str`` indices, not UTF-8 or UTF-16
    units), ``end`` exclusive."""

    start: Count
    end: Count
    text: Name


class OrganizationMention(Model):
    """An organization as the publisher named it, English or Chinese; ``mentions``, in an
    event read from a document (``documentid``), every place its text names it."""

    name: Name
    role: Text | None = None
    mentions: list[TextSpan] = Field(default_factory=list, max_length=LIMITS["mentions"])


class Person(Model):
    name: NonEmptyText
    role: Text | None = None
    affiliation: Text | None = None


class Money(Model):
    amount: Number
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]  # ISO 4217


class AnnouncementData(Model):
    headline: Headline
    kind: AnnouncementKind = AnnouncementKind.other
    conference: Text | None = None
    summary: Prose | None = None
    location: Location | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    organizations: list[OrganizationMention] = Field(
        default_factory=list, max_length=LIMITS["organizations"])
    people: list[Person] = Field(default_factory=list, max_length=LIMITS["people"])
    figures: dict[NonEmptyText, Number] = Field(default_factory=dict, max_length=LIMITS["figures"])
    language: Text | None = None


class AgreementData(Model):
    title: Headline
    organizations: list[OrganizationMention] = Field(
        default_factory=list, max_length=LIMITS["organizations"])
    party_count: Count | None = None
    signed_at: Timestamp | None = None
    location: Location | None = None
    value: Money | None = None
    sectors: list[NonEmptyText] = Field(default_factory=list, max_length=LIMITS["sectors"])
    summary: Prose | None = None
    language: Text | None = None


class CloudEventBase(Model):
    """The CloudEvents 1.0 context attributes; extension attributes are kept as extras.

    Identity is the pair (``source``, ``id``) (CloudEvents 1.0 §3.1.1): two publishers
    may use one id. Extension attribute names are lowercase ASCII letters and digits
    and their values strings, integers or booleans, as the spec says (§3.1.3): in the
    Kafka binding's binary mode each becomes a ``ce_<name>`` header.
    """

    __pydantic_extra__: dict[ExtensionName, ExtensionValue] = Field(init=False)

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(max_length=LIMITS["name"], pattern=_NAME)]
    source: Uri
    time: Timestamp | None = None
    subject: Annotated[str, StringConstraints(max_length=LIMITS["name"], pattern=_NAME)] | None = None
    datacontenttype: Line | None = None
    dataschema: Uri | None = None
    # an extension attribute (CloudEvents 1.0 §3.1.3), declared so that it is documented:
    # the document (shared.documents) the event was read from, with the same source
    documentid: Annotated[str, StringConstraints(max_length=LIMITS["name"], pattern=_NAME)] | None = Field(
        None, description="extension: the id of the document (same source) this event was read from; "
        "data.organizations[].mentions count code points of its text")

    @property
    def key(self) -> bytes:
        """The Kafka key: ``subject``, else ``id`` (so one subject's events stay in order)."""
        return (self.subject or self.id).encode()


class AnnouncementEvent(CloudEventBase):
    type: Literal["conference.announcement"]
    data: AnnouncementData


class AgreementEvent(CloudEventBase):
    type: Literal["agreement.signed"]
    data: AgreementData


Event = Annotated[AnnouncementEvent | AgreementEvent, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[AnnouncementEvent | AgreementEvent] = TypeAdapter(Event)


# --- enriched events -------------------------------------------------------------


class MatchMethod(StrEnum):
    exact = "exact"
    alias = "alias"
    fuzzy = "fuzzy"


class Match(Model):
    method: MatchMethod
    score: Annotated[float, Field(ge=0, le=100)]


class ResolvedMention(OrganizationMention):
    resolved: Organization | None = None
    match: Match | None = None


class Enrichment(Model):
    resolved: list[str] = Field(default_factory=list, description="ids of the resolved organizations")
    unresolved: list[str] = Field(default_factory=list, description="names no catalog record matched")
    catalog_version: str
    enriched_at: Timestamp


class EnrichedAnnouncementData(AnnouncementData):
    organizations: list[ResolvedMention] = Field(  # type: ignore[assignment]
        default_factory=list, max_length=LIMITS["organizations"])
    enrichment: Enrichment


class EnrichedAgreementData(AgreementData):
    organizations: list[ResolvedMention] = Field(  # type: ignore[assignment]
        default_factory=list, max_length=LIMITS["organizations"])
    enrichment: Enrichment


class EnrichedAnnouncementEvent(CloudEventBase):
    type: Literal["conference.announcement"]
    data: EnrichedAnnouncementData


class EnrichedAgreementEvent(CloudEventBase):
    type: Literal["agreement.signed"]
    data: EnrichedAgreementData


EnrichedEvent = Annotated[
    EnrichedAnnouncementEvent | EnrichedAgreementEvent, Field(discriminator="type")
]
ENRICHED_ADAPTER: TypeAdapter[EnrichedAnnouncementEvent | EnrichedAgreementEvent] = TypeAdapter(
    EnrichedEvent
)

AnyEvent = AnnouncementEvent | AgreementEvent
AnyEnrichedEvent = EnrichedAnnouncementEvent | EnrichedAgreementEvent


# --- bytes in, bytes out ---------------------------------------------------------


class EventTooLarge(ValueError):
    """The event's canonical JSON is over :data:`MAX_EVENT_BYTES`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the event is {size} bytes as canonical JSON; the limit is {MAX_EVENT_BYTES}")
        self.size = size


class NotACloudEvent(ValueError):
    """A Kafka record that is not a CloudEvent in either content mode of the binding."""


def check_size(value: bytes) -> bytes:
    """``value`` (an event's canonical JSON) if it is within :data:`MAX_EVENT_BYTES`;
    raises :class:`EventTooLarge` otherwise."""
    if len(value) > MAX_EVENT_BYTES:
        raise EventTooLarge(len(value))
    return value


def parse_event(raw: bytes | str) -> AnyEvent:
    """Bytes of a structured-mode CloudEvent → event, checked against the contract.

    Raises ``pydantic.ValidationError`` with field paths (:func:`error_paths`), or
    :class:`EventTooLarge`. The size is that of the canonical JSON, which is what ingest
    writes; canonical JSON is never more than twice the bytes it was read from (only a
    float such as ``1E2`` grows, to ``100.0``), so it is computed only for large input.
    """
    event = EVENT_ADAPTER.validate_json(raw)
    if len(raw) > MAX_EVENT_BYTES // 2:
        check_size(dump_event(event))
    return event


def parse_event_obj(obj: object) -> AnyEvent:
    """An already-decoded JSON value → event (strict JSON semantics, e.g. ISO times)."""
    return parse_event(encode_json(obj))


def read_json(raw: bytes | str) -> Any:
    """JSON as the contract reads it, for code that looks at a document before the models
    do (to split a batch, to wrap bare data in an envelope).

    RFC 8259 syntax: ``NaN`` and ``Infinity`` are not JSON and raise ``ValueError``
    (orjson's message). Numbers orjson cannot hold (``1e400``, integers past 64 bits) are
    read anyway, as infinity or a Python int, so that the models refuse them at their
    field path with the reason every stage gives, instead of a stage calling the whole
    document "not JSON".
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            # the standard library reads integers exactly and 1e400 as infinity, as the
            # models' own parser does; NaN and Infinity it would read, so refuse them
            return json.loads(raw, parse_constant=_not_json)
        except ValueError:
            raise exc from None
    if _LONG_DIGITS.search(raw.encode() if isinstance(raw, str) else raw):
        # orjson reads an integer past 64 bits (20 digits or more) as a float, which would
        # pass where the models refuse the integer: read such documents exactly
        return json.loads(raw, parse_constant=_not_json)
    return doc


_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def encode_json(obj: object) -> bytes:
    """A value read by :func:`read_json` as bytes again, losing nothing: orjson, or the
    standard library where orjson cannot write a number (orjson writes infinity as
    ``null``, which would turn a refused value into an accepted one; ``json`` writes
    ``Infinity``, which the models read and refuse)."""
    if _finite(obj):
        try:
            return orjson.dumps(obj)
        except TypeError:  # an integer past 64 bits
            pass
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.encode()


def _finite(obj: object) -> bool:
    return all(math.isfinite(n) for n in _numbers(obj) if isinstance(n, float))


def parse_enriched(raw: bytes | str) -> AnyEnrichedEvent:
    """Bytes of an enriched event → model; raises ``pydantic.ValidationError``."""
    return ENRICHED_ADAPTER.validate_json(raw)


# --- the same check, giving the JSON object ------------------------------------------
#
# A reader that looks at a handful of fields (notify matches on them) needs the verdict
# of the models and the JSON object, not model instances: building ~10 of them per event
# was most of the check's cost, and parsing the bytes again for the object added a third.
# The validator below is derived from the models' own core schema — every model becomes
# a typed dict with the same fields, field validators, patterns, bounds and extras rules —
# so there is still one definition. Two things a typed dict does not do are handled here:
# it has no key rule for extras (CloudEvents extension names are checked against the
# model's own key schema), and its errors may be ordered differently, so a refused event
# is checked again by the models, whose errors every stage reports.


def _documents(schema: object) -> Any:  # Any: a core schema is nested dicts of any shape
    """``schema`` (a core schema) with every model replaced by a typed dict of the same
    fields, without their defaults (the object keeps only what was sent)."""
    if isinstance(schema, list):
        return [_documents(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") != "model":
        return {k: _documents(v) for k, v in schema.items()}
    fields_schema = schema["schema"]
    fields = {}
    for name, f in fields_schema["fields"].items():
        inner = f["schema"]
        required = inner.get("type") != "default"
        fields[name] = core_schema.typed_dict_field(
            _documents(inner if required else inner["schema"]), required=required,
            validation_alias=f.get("validation_alias"))
    config = schema.get("config") or {}
    extras = fields_schema.get("extras_schema")
    return core_schema.typed_dict_schema(
        fields, strict=bool(config.get("strict")), ref=schema.get("ref"),
        extra_behavior=config.get("extra_fields_behavior"),
        extras_schema=_documents(extras) if extras is not None else None)


_ENRICHED_DOCUMENT = SchemaValidator(_documents(ENRICHED_ADAPTER.core_schema))
_ATTRIBUTES = frozenset(CloudEventBase.model_fields) | {"type", "data"}
_EXTENSION_KEY = SchemaValidator(core_schema.str_schema(pattern=_EXTENSION_NAME))  # the models' key rule


def _extension_name(key: str) -> bool:
    try:
        _EXTENSION_KEY.validate_python(key)
    except ValidationError:
        return False
    return True


def read_enriched(raw: bytes | str) -> dict[str, Any]:
    """Bytes of an enriched event → the JSON object, checked by the contract's models
    (accepts and refuses exactly what :func:`parse_enriched` does; a property test holds
    them equal). In the object, times are ``datetime`` and ``data.kind`` an
    :class:`AnnouncementKind` (a ``str``), and what was left out stays out (no defaults):
    it is for reading fields, not for writing the event again (keep the bytes for that).

    Raises ``pydantic.ValidationError`` with the models' own errors."""
    try:
        doc: dict[str, Any] = _ENRICHED_DOCUMENT.validate_json(raw)
    except ValidationError:
        doc = {}
    else:
        if all(k in _ATTRIBUTES or _extension_name(k) for k in doc):
            return doc
    parse_enriched(raw)  # raises the models' errors
    raise AssertionError("the enriched-event document and model checks disagree")  # pragma: no cover


def dump_event(event: BaseModel) -> bytes:
    """Event → canonical compact JSON; unset optional fields are left out."""
    return orjson.dumps(event.model_dump(mode="json", exclude_unset=True, by_alias=True))


# --- the CloudEvents Kafka protocol binding ------------------------------------------

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` value, lower-case and without parameters
    (``"Application/JSON; charset=utf-8"`` → ``"application/json"``); ``""`` for None
    or an empty value. Nothing is validated: a caller compares the result with the
    types it accepts."""
    return (content_type or "").split(";", 1)[0].strip().lower()
_JSON_MEDIA = re.compile(r"^(application|text)/([a-z0-9.+-]*\+)?json$")


def _header_text(name: str, value: bytes | None) -> str:
    if value is None:
        raise NotACloudEvent(f"header {name!r} has no value")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise NotACloudEvent(f"header {name!r} is not UTF-8") from None


#: how a consumer decodes a header name that is not UTF-8 (:mod:`shared.aiokafka_ext`):
#: each such byte becomes a lone surrogate, so the bytes can be had again
UNDECODABLE = "surrogateescape"


def has_undecodable_header(headers: Iterable[tuple[str, object]] | None) -> bool:
    """Whether any header name of a consumed record held bytes that are not UTF-8 (decoded
    as lone surrogates by :mod:`shared.aiokafka_ext`). ``headers``: the record's ``[(name, value), ...]`` or None."""
    for name, _ in headers or ():
        if not name.isascii() and any("\udc80" <= ch <= "\udcff" for ch in name):
            return True
    return False


def raw_header_name(name: str) -> bytes:
    """The header name's bytes as they were on the wire."""
    return name.encode("utf-8", UNDECODABLE)


def readable_header_name(name: str) -> str:
    """The name as Java's client reads it: each byte that is not UTF-8 becomes U+FFFD, so a
    producer can write it again (a lone surrogate cannot be encoded)."""
    return raw_header_name(name).decode("utf-8", "replace") if has_undecodable_header([(name, None)]) else name


def record_event_bytes(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None) -> bytes:
    """A Kafka record of a CloudEvent → the event's structured-mode JSON bytes.

    The CloudEvents Kafka protocol binding 1.0 has two content modes: *structured*
    (the value is the whole event; ``content-type: application/cloudevents+json``)
    and *binary* (the value is the ``data``; each attribute is a ``ce_<name>`` header
    and ``datacontenttype`` is the ``content-type`` header). A record with a
    ``ce_specversion`` header and no structured content type is binary (what the
    CloudEvents SDKs' ``to_binary`` writes); any other record is taken as structured
    (kcat writes no headers). Returns ``value`` itself for structured records, so the
    common case costs one header scan.

    Raises :class:`NotACloudEvent` for a null value, a header (name or value) that is
    not UTF-8, or binary-mode data that is not JSON.
    """
    if has_undecodable_header(headers):
        names = [raw_header_name(n) for n, _ in headers or () if has_undecodable_header([(n, None)])]
        raise NotACloudEvent(f"a header name is not UTF-8: {names[0]!r}"
                             + (f" (and {len(names) - 1} more)" if len(names) > 1 else ""))
    content_type: str | None = None
    binary = False
    for name, hval in headers or ():
        if name == "content-type" and hval is not None:
            content_type = hval.decode(errors="replace").strip().lower()
        elif name == "ce_specversion":
            binary = True
    if not binary or (content_type or "").startswith("application/cloudevents"):
        if value is None:
            raise NotACloudEvent("empty record (null value)")
        return value
    event: dict[str, Any] = {}
    for name, hval in headers or ():
        if name.startswith("ce_"):
            event[name[3:]] = _header_text(name, hval)
    if content_type is not None:
        event["datacontenttype"] = content_type
    media = media_type(content_type) or "application/json"
    if not _JSON_MEDIA.match(media):
        raise NotACloudEvent(f"binary-mode data of content type {media!r}: Anting's events carry JSON data")
    if value is not None:
        try:
            event["data"] = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise NotACloudEvent(f"binary-mode data is not JSON: {exc}") from None
    return orjson.dumps(event)


def error_paths(exc: ValidationError) -> list[dict[str, str]]:
    """A ``pydantic.ValidationError`` as ``[{"path": "data.headline", "message": ...}]``."""
    return paths_of(exc.errors(include_url=False))


def paths_of(errors: Iterable[ErrorDetails]) -> list[dict[str, str]]:
    """pydantic's error details as :func:`error_paths` gives them (for errors regrouped by
    the caller, e.g. a batch's per item)."""
    out = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        # a discriminated union adds the tag as a path element: drop it
        if len(loc) > 1 and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        # a missing or unknown tag is reported at the union itself: it is about `type`
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = [*loc, "type"]
        message = err["msg"]
        if err["type"] == "string_pattern_mismatch":
            message = _PATTERN_MESSAGES.get((err.get("ctx") or {}).get("pattern", ""), message)
        out.append({"path": ".".join(loc) or "$", "message": message, "type": err["type"]})
    return out


__all__ = ["AGREEMENT", "ANNOUNCEMENT", "ENRICHED_ADAPTER", "EVENT_ADAPTER", "EVENT_TYPES",
           "LIMITS", "MAX_EVENT_BYTES", "MAX_SAFE_INTEGER", "STRUCTURED_CONTENT_TYPE", "UNDECODABLE",
           "AgreementData", "AgreementEvent", "AnnouncementData", "AnnouncementEvent",
           "AnnouncementKind", "AnyEnrichedEvent", "AnyEvent", "CloudEventBase", "Count",
           "EnrichedAgreementData", "EnrichedAgreementEvent", "EnrichedAnnouncementData",
           "EnrichedAnnouncementEvent", "EnrichedEvent", "Enrichment", "Event", "EventTooLarge",
           "ExtensionName", "ExtensionValue", "Headline", "JsonValue", "Line", "Location", "Match",
           "MatchMethod", "Model", "Money", "Name", "NonEmpty", "NonEmptyText", "NotACloudEvent",
           "Number", "OrganizationMention", "Person", "Prose", "ResolvedMention", "Text",
           "TextSpan", "Timestamp", "Uri", "check_size", "dump_event", "encode_json", "error_paths", "has_undecodable_header", "json_integer",
           "media_type", "parse_enriched", "parse_event", "parse_event_obj", "paths_of",
           "raw_header_name", "read_json", "readable_header_name", "record_event_bytes"]
