"""The organization record: one entry of the catalog kept on the compacted ``organizations`` topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: The largest organization record (bytes of its JSON). enrich copies the record into
#: every mention it resolves, so this bounds what one mention adds to an enriched event
#: (see ``shared.events.MAX_EVENT_BYTES``). The shipped records are under 1 KiB.
MAX_RECORD_BYTES = 4096

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*[a-z0-9]$", max_length=120)]


class OrganizationKind(StrEnum):
    government = "government"
    academic = "academic"
    association = "association"
    alliance = "alliance"
    enterprise = "enterprise"
    venue = "venue"
    media = "media"


class Organization(BaseModel):
    """Keyed on the topic by ``id``; a null value (tombstone) deletes it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    id: Slug
    name: Annotated[str, StringConstraints(min_length=1)]
    names: dict[str, str] = Field(default_factory=dict, description='official names by language, e.g. {"en": ..., "zh": ...}')
    aliases: list[str] = Field(default_factory=list, description="other names and abbreviations")
    kind: OrganizationKind
    sectors: list[str] = Field(default_factory=list)
    country: str | None = None
    region: str | None = None
    city: str | None = None
    website: str | None = None
    parent: Slug | None = None


class RecordTooLarge(ValueError):
    """An organization record over :data:`MAX_RECORD_BYTES`."""


def parse_organization(raw: bytes | str) -> Organization:
    """A catalog record from JSON, within :data:`MAX_RECORD_BYTES`: what enters the catalog
    (``anting orgs load``, a record on the ``organizations`` topic) goes through here.

    Raises ``pydantic.ValidationError`` or :class:`RecordTooLarge`. The bound is checked
    here and not in the model because every enriched event embeds the model: checking
    the size of each embedded record again would double enrich's validation cost.
    """
    org = Organization.model_validate_json(raw)
    size = len(raw) if len(raw) <= MAX_RECORD_BYTES else len(orjson.dumps(org.model_dump(mode="json")))
    if size > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"organization {org.id!r} is {size} bytes as JSON; the limit is {MAX_RECORD_BYTES} "
            "(enrich copies the record into every mention it resolves)")
    return org


__all__ = ["MAX_RECORD_BYTES", "Organization", "OrganizationKind", "RecordTooLarge", "Slug",
           "parse_organization"]
