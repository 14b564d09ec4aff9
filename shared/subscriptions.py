"""Subscriptions (compacted ``subscriptions`` topic) and delivery records (``notifications``).

A subscription says which enriched events someone wants (a filter: every given
field must match), how they hear of them (a channel) and, optionally, how long a
failing delivery is retried (a retry schedule). The record on the topic holds the
signing secrets; the HTTP API shows a secret once, at creation.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from shared.events import EVENT_TYPES, AnnouncementKind, NonEmpty, json_integer

#: The tenant of the plain ``ANTING_API_KEYS``, of every request when no key is set, and
#: of subscriptions stored before subscriptions had a tenant (shared/access.py).
ADMIN_TENANT = "admin"

# a tenant names a customer in URLs, logs and Kafka headers: short, lower-case, no spaces
TENANT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


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
    # a host after the scheme ("http://" alone names none); which hosts deliveries may reach
    # is the address policy's, checked apart (services/notify/ssrf.py)
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#\x00-\x1f\x7f-\x9f\ufeff]",
                                          max_length=2048)]


class EmailChannel(Strict):
    type: Literal["email"]
    # controls and U+FEFF named apart from \s: Python's \s and JSON Schema's (ECMA-262)
    # differ on them, and the document must accept exactly what the model does
    to: list[Annotated[str, StringConstraints(
        pattern=r"^[^@\s<>,;\x00-\x1f\x7f-\x9f\ufeff]+@[^@\s<>,;\x00-\x1f\x7f-\x9f\ufeff]+$")]] = Field(
            min_length=1)


class AppriseChannel(Strict):
    type: Literal["apprise"]
    url: NonEmpty


# A file name in notify's log directory (ANTING_NOTIFY_LOG_DIR), never a path: no
# directory separator, no leading dot (so neither ".." nor a hidden file), ASCII letters,
# digits and ``._-`` only. Subscribers choose where notify writes, so they choose a name;
# the operator chooses the directory. Symlinks pointing out of it are refused apart
# (services/notify/channels/log.py), since no pattern can see the file system.
LOG_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
LogFileName = Annotated[str, StringConstraints(pattern=LOG_FILE_NAME.pattern)]


class LogChannel(Strict):
    type: Literal["log"]
    path: LogFileName | None = Field(
        default=None,
        description="a file name (no directory) in notify's log directory to append JSON lines "
                    "to; stdout when unset")


Channel = Annotated[
    WebhookChannel | EmailChannel | AppriseChannel | LogChannel, Field(discriminator="type")
]


class Digest(Strict):
    """Collect matching events for ``window_seconds`` and send them as one message."""

    window_seconds: Annotated[int, Field(ge=1, le=86400), BeforeValidator(json_integer)]


# Retry schedules: the delays, in seconds, before the second, third, ... attempt, each
# counted from the failure of the attempt before it (the first attempt is immediate).
RETRY_PRESETS: dict[str, tuple[int, ...]] = {
    # Standard Webhooks' example schedule ("Deliverability and reliability"): 10 attempts
    # over about 3 days 3½ hours
    "standard-webhooks": (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600),
    # Svix's documented schedule: 8 attempts over about 27½ hours
    "svix": (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600),
}
RetryPreset = Literal["standard-webhooks", "svix"]
MAX_RETRIES = 20
MAX_RETRY_DELAY_SECONDS = 24 * 3600
# A delivery's whole schedule stays well inside the week that notify-retries keeps a
# retry record and the ledger remembers a delivery (LEDGER_RETENTION_MS in topics.py).
MAX_RETRY_SPAN_SECONDS = 4 * 24 * 3600
RetryDelay = Annotated[int, Field(ge=1, le=MAX_RETRY_DELAY_SECONDS), BeforeValidator(json_integer)]


class RetryPolicy(Strict):
    """How long a failing delivery is retried: a named ``preset`` or the ``delays_seconds``
    themselves (exactly one). ``delays_seconds[n]`` is the wait, in seconds, before attempt
    n + 2 after attempt n + 1 failed; an empty list means a single attempt. Bounds: at most
    20 retries, each 1 s to 24 h, all together at most 4 days. notify adds jitter to every
    delay; a receiver's ``Retry-After`` may postpone that one step (capped), never hasten it."""

    preset: RetryPreset | None = Field(
        default=None, description="standard-webhooks (10 attempts, ~3 days) or svix (8 attempts, ~27 h)")
    delays_seconds: list[RetryDelay] | None = Field(
        default=None, max_length=MAX_RETRIES,
        description="seconds to wait before each retry, counted from the failure before it")

    @model_validator(mode="after")
    def _one_of(self) -> RetryPolicy:
        if (self.preset is None) == (self.delays_seconds is None):
            raise ValueError("give exactly one of preset, delays_seconds")
        if sum(self.delays()) > MAX_RETRY_SPAN_SECONDS:
            raise ValueError(f"the delays add up to {sum(self.delays())} s; at most "
                             f"{MAX_RETRY_SPAN_SECONDS} s (4 days)")
        return self

    def delays(self) -> tuple[int, ...]:
        """The delays in seconds, before the second attempt onwards."""
        if self.preset is not None:
            return RETRY_PRESETS[self.preset]
        return tuple(self.delays_seconds or ())


class SubscriptionRequest(Strict):
    """What a client sends to create a subscription."""

    name: NonEmpty
    filter: Filter = Field(default_factory=Filter)
    channel: Channel
    digest: Digest | None = None
    retry: RetryPolicy | None = Field(
        default=None, description="this subscription's retry schedule; notify's default when unset")


class Subscription(SubscriptionRequest):
    """The record on the ``subscriptions`` topic, keyed by ``id``; a tombstone deletes it.

    ``tenant`` is the tenant of the API key that created it (``shared/access.py``): only
    that tenant's keys (and admin keys) see and change it. A record written before
    subscriptions had a tenant has none and belongs to the ``admin`` tenant."""

    id: NonEmpty
    tenant: Annotated[str, StringConstraints(pattern=TENANT_PATTERN)] = Field(
        default=ADMIN_TENANT, description="the tenant of the key that created it")
    created_at: datetime
    secrets: list[str] = Field(default_factory=list, description="whsec_ signing secrets, newest first")
    previous_secrets_expire_at: datetime | None = Field(
        default=None, description="after a rotation: when the secrets other than the newest stop being used"
    )
    disabled: bool = False
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    enabled_at: datetime | None = Field(
        default=None,
        description="when it was last enabled again: failures before it do not count towards disabling it")


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
    tenant: str | None = Field(
        default=None, description="the subscription's tenant (absent on lines written before tenants)")
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
    subscription_disabled: str | None = Field(
        default=None,
        description="present on the line of the attempt whose failure disabled the subscription: why")


__all__ = [
    "EVENT_TYPES",
    "LOG_FILE_NAME",
    "RETRY_PRESETS",
    "Channel",
    "DeliveryOutcome",
    "DeliveryRecord",
    "Filter",
    "LogChannel",
    "LogFileName",
    "RetryPolicy",
    "Subscription",
    "SubscriptionRequest",
]
