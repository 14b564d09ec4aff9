"""The organization record: one entry of the catalog kept on the compacted ``organizations`` topic."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

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
