"""The events Anting carries: CloudEvents 1.0 (JSON structured mode) and their data.

Two input types, ``conference.announcement`` and ``agreement.signed``, told apart
by the envelope's ``type`` (a discriminated union, so an unknown type is an error
at the path ``type``); and their enriched forms, which keep the envelope and add
what enrich resolved. Bytes in and out go through :func:`parse_event` and
:func:`dump_event` so every stage reads and writes the same canonical JSON.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from shared.organizations import Organization

NonEmpty = Annotated[str, StringConstraints(min_length=1)]

ANNOUNCEMENT = "conference.announcement"
AGREEMENT = "agreement.signed"
EVENT_TYPES: tuple[str, ...] = (ANNOUNCEMENT, AGREEMENT)


class Model(BaseModel):
    """Strict types (no "5" for 5), unknown keys kept: nothing a publisher sent is lost."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


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
    venue: str | None = None
    town: str | None = None
    district: str | None = None
    city: str | None = None
    country: str | None = None


class OrganizationMention(Model):
    """An organization as the publisher named it, English or Chinese."""

    name: NonEmpty
    role: str | None = None


class Person(Model):
    name: NonEmpty
    role: str | None = None
    affiliation: str | None = None


class Money(Model):
    amount: int | float
    currency: Annotated[str, StringConstraints(min_length=3, max_length=3)]


class AnnouncementData(Model):
    headline: NonEmpty
    kind: AnnouncementKind = AnnouncementKind.other
    conference: str | None = None
    summary: str | None = None
    location: Location | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    organizations: list[OrganizationMention] = Field(default_factory=list)
    people: list[Person] = Field(default_factory=list)
    figures: dict[str, int | float] = Field(default_factory=dict)
    language: str | None = None


class AgreementData(Model):
    title: NonEmpty
    organizations: list[OrganizationMention] = Field(default_factory=list)
    party_count: Annotated[int, Field(ge=0)] | None = None
    signed_at: datetime | None = None
    location: Location | None = None
    value: Money | None = None
    sectors: list[str] = Field(default_factory=list)
    summary: str | None = None
    language: str | None = None


class CloudEventBase(Model):
    """The CloudEvents 1.0 context attributes; extension attributes are kept as extras."""

    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    time: datetime | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None

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
    enriched_at: datetime


class EnrichedAnnouncementData(AnnouncementData):
    organizations: list[ResolvedMention] = Field(default_factory=list)  # type: ignore[assignment]
    enrichment: Enrichment


class EnrichedAgreementData(AgreementData):
    organizations: list[ResolvedMention] = Field(default_factory=list)  # type: ignore[assignment]
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


def parse_event(raw: bytes | str) -> AnyEvent:
    """Bytes → event; raises ``pydantic.ValidationError`` with field paths."""
    return EVENT_ADAPTER.validate_json(raw)


def parse_event_obj(obj: Any) -> AnyEvent:
    """An already-decoded JSON value → event (strict JSON semantics, e.g. ISO times)."""
    return EVENT_ADAPTER.validate_json(orjson.dumps(obj))


def parse_enriched(raw: bytes | str) -> AnyEnrichedEvent:
    return ENRICHED_ADAPTER.validate_json(raw)


def dump_event(event: BaseModel) -> bytes:
    """Event → canonical compact JSON; unset optional fields are left out."""
    return orjson.dumps(event.model_dump(mode="json", exclude_unset=True, by_alias=True))


def error_paths(exc: Any) -> list[dict[str, str]]:
    """A ``pydantic.ValidationError`` as ``[{"path": "data.headline", "message": ...}]``."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        # a discriminated union adds the tag as a path element: drop it
        if len(loc) > 1 and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        # a missing or unknown tag is reported at the union itself: it is about `type`
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = [*loc, "type"]
        out.append({"path": ".".join(loc) or "$", "message": err["msg"], "type": err["type"]})
    return out
