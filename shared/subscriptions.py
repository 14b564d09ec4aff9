"""Subscriptions (compacted ``subscriptions`` topic) and delivery records (``notifications``).

A subscription says which enriched events someone wants (a filter: every given
field must match) and how they hear of them (a channel). The record on the topic
holds the signing secrets; the HTTP API shows a secret once, at creation.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.events import EVENT_TYPES, AnnouncementKind

NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Filter(Strict):
    """All given fields must match; an empty filter matches every event."""

    types: list[Literal["conference.announcement", "agreement.signed"]] = Field(default_factory=list)
    kinds: list[AnnouncementKind] = Field(default_factory=list)
    organizations: list[NonEmpty] = Field(default_factory=list, description="organization ids, names or aliases")
    sectors: list[NonEmpty] = Field(default_factory=list)
    cities: list[NonEmpty] = Field(default_factory=list)


class WebhookChannel(Strict):
    type: Literal["webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2048)]


class EmailChannel(Strict):
    type: Literal["email"]
    to: list[Annotated[str, StringConstraints(pattern=r"^[^@\s<>,;\r\n]+@[^@\s<>,;\r\n]+$")]] = Field(min_length=1)


class AppriseChannel(Strict):
    type: Literal["apprise"]
    url: NonEmpty


class LogChannel(Strict):
    type: Literal["log"]
    path: str | None = Field(default=None, description="a file to append JSON lines to; stdout when unset")


Channel = Annotated[
    WebhookChannel | EmailChannel | AppriseChannel | LogChannel, Field(discriminator="type")
]


class Digest(Strict):
    """Collect matching events for ``window_seconds`` and send them as one message."""

    window_seconds: Annotated[int, Field(ge=1, le=86400)]


class SubscriptionRequest(Strict):
    """What a client sends to create a subscription."""

    name: NonEmpty
    filter: Filter = Field(default_factory=Filter)
    channel: Channel
    digest: Digest | None = None


class Subscription(SubscriptionRequest):
    """The record on the ``subscriptions`` topic, keyed by ``id``; a tombstone deletes it."""

    id: NonEmpty
    created_at: datetime
    secrets: list[str] = Field(default_factory=list, description="whsec_ signing secrets, newest first")
    previous_secrets_expire_at: datetime | None = Field(
        default=None, description="after a rotation: when the secrets other than the newest stop being used"
    )
    disabled: bool = False
    disabled_reason: str | None = None


class DeliveryOutcome(StrEnum):
    delivered = "delivered"
    retried = "retried"
    failed = "failed"
    dead = "dead"
    suppressed = "suppressed"


class DeliveryRecord(Strict):
    """One line of the delivery log on ``notifications``, keyed by subscription id.

    An event is identified by its CloudEvents ``source`` and ``id`` together (two
    publishers may use the same id), so a line names both: ``event_source`` and
    ``event_id`` for the CloudEvent delivered (a digest's are notify's source and the
    digest's key), and ``event_sources`` beside ``event_ids`` for the events in it.
    Lines written before the sources were recorded have neither and stay readable."""

    model_config = ConfigDict(strict=True, extra="allow")

    subscription_id: NonEmpty
    event_id: NonEmpty
    event_source: NonEmpty | None = Field(
        default=None, description="the CloudEvents source of the event delivered; with event_id, its identity")
    idempotency_key: NonEmpty
    channel: Literal["webhook", "email", "apprise", "log"]
    outcome: DeliveryOutcome
    attempt: Annotated[int, Field(ge=1)]
    at: datetime
    status_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    reason: list[dict[str, Any]] = Field(default_factory=list, description="which filter matched what")
    event_ids: list[str] = Field(default_factory=list, description="the ids of the events delivered, in order")
    event_sources: list[str] | None = Field(
        default=None, description="the sources of the events delivered, in the order of event_ids")
    digest: bool = Field(default=False, description="a digest of the events in event_ids")


__all__ = ["EVENT_TYPES", "Channel", "DeliveryOutcome", "DeliveryRecord", "Filter", "Subscription", "SubscriptionRequest"]
