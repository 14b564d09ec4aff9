"""The subscriptions store: the compacted ``subscriptions`` topic is the source of
truth, read into memory (so every instance sees the same set); writes go to the
topic and are applied locally once the broker acknowledged them.

A subscription is disabled by a 410 from its webhook or by failing for days (see
delivery.py), and enabled again by a person (API or CLI); retries of a disabled
subscription wait for that (:meth:`SubscriptionStore.next_change`). What the API and
the CLI show of a subscription (:func:`public_view`) includes its delivery health,
from the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from services.notify.index import SubscriptionIndex
from services.notify.matching import Event, Reason
from shared.access import ADMIN_TENANT
from shared.compacted import CompactedView
from shared.settings import AntingSettings
from shared.subscriptions import LOG_FILE_NAME, Subscription, SubscriptionRequest
from shared.topology import NOTIFY_STORE

if TYPE_CHECKING:
    from services.notify.ledger import Health

log = logging.getLogger(__name__)


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id() -> str:
    return "sub_" + uuid.uuid4().hex[:20]


def encode_subscription(sub: Subscription) -> bytes:
    """A subscription's record value on the topic (JSON)."""
    return orjson.dumps(sub.model_dump(mode="json"))


def decode_subscription(raw: bytes) -> Subscription:
    """A record value back; raises pydantic's ``ValidationError`` when it is not one.

    A ``log`` subscription stored when its ``path`` could be any path (before
    ``ANTING_NOTIFY_LOG_DIR``) is kept, not skipped: it now writes to the file of that
    path's last part in the log directory (stdout when that part is not a file name), and
    a warning says so."""
    try:
        return Subscription.model_validate_json(raw)
    except ValidationError:
        moved = _moved_log_path(raw)
        if moved is None:
            raise
        return moved


def _moved_log_path(raw: bytes) -> Subscription | None:
    """The subscription of ``raw`` with its log path made a file name, or None when that
    does not make it valid (another fault)."""
    try:
        doc = orjson.loads(raw)
        channel = doc["channel"]
        path = channel["path"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    if channel.get("type") != "log" or not isinstance(path, str):
        return None
    name = PurePosixPath(path).name
    channel["path"] = name if LOG_FILE_NAME.fullmatch(name) else None
    try:
        sub = Subscription.model_validate_json(orjson.dumps(doc))
    except ValidationError:
        return None
    log.warning("subscription %s: its log path is not a file name; it now writes to %s",
                sub.id, f"{name!r} in the log directory" if channel["path"] else "stdout")
    return sub


def _iso(ms: float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def public_view(sub: Subscription, health: Health | None = None) -> dict[str, Any]:
    """What the API shows: everything but the secrets, and, given its ``health`` (from the
    ledger), ``delivery``: ``failing_since`` (the first failure after the last success;
    null when not failing), ``last_failure_at``, ``last_error``, ``waiting`` (deliveries
    waiting for a retry) and ``next_attempt_at`` (the earliest of them; null while the
    subscription is disabled: they wait for it to be enabled). Times are RFC 3339, UTC."""
    doc = sub.model_dump(mode="json", exclude={"secrets", "previous_secrets_expire_at"})
    doc["secret_count"] = len(sub.secrets)
    if health is not None:
        doc["delivery"] = {
            "failing_since": _iso(health.failing_since_ms),
            "last_failure_at": _iso(health.last_failure_ms),
            "last_error": health.last_error,
            "waiting": health.waiting,
            "next_attempt_at": None if sub.disabled else _iso(health.next_attempt_ms),
        }
    return doc


def signing_secrets(sub: Subscription, now: datetime | None = None) -> list[str]:
    """The secrets to sign with: the newest, plus the previous ones during their grace period."""
    if not sub.secrets:
        return []
    now = now or datetime.now(UTC)
    if sub.previous_secrets_expire_at is not None and now >= sub.previous_secrets_expire_at:
        return sub.secrets[:1]
    return list(sub.secrets)


class SubscriptionStore:
    """The subscriptions, read from the topic into ``view`` (a record that is not a valid
    subscription is skipped with a warning, and its key keeps what it had), written to the
    topic and applied here once acknowledged; whoever waits for a subscription to change
    is woken (:meth:`next_change`). ``index`` files the active ones by what their filters
    name (:mod:`services.notify.index`) and follows every change, so an event is matched
    only against the subscriptions that can want it (:meth:`matching`)."""

    def __init__(self, settings: AntingSettings, producer: AIOKafkaProducer) -> None:
        self.topic = NOTIFY_STORE.input(settings.topic_prefix)
        self.producer = producer
        self.view: CompactedView[Subscription] = CompactedView(
            settings, self.topic, decode_subscription, on_change=self._changed)
        self.index = SubscriptionIndex()
        self._waiters: dict[str, asyncio.Event] = {}
        # each subscription's delivery health: the ledger's, when a notifier runs here
        self.health: Callable[[Iterable[str]], dict[str, Health]] | None = None

    def view_of(self, sub: Subscription) -> dict[str, Any]:
        """:func:`public_view` with the subscription's health, when known here."""
        return public_view(sub, self.health([sub.id])[sub.id] if self.health else None)

    def views(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every subscription's :meth:`view_of` (only ``tenant``'s when given), oldest first,
        the health read in one pass."""
        subs = self.all() if tenant is None else [s for s in self.all() if s.tenant == tenant]
        health = self.health([s.id for s in subs]) if self.health else {}
        return [public_view(s, health.get(s.id)) for s in subs]

    def next_change(self, sub_id: str) -> asyncio.Event:
        """An event set when the subscription next changes (or is deleted), or at
        :meth:`wake_all`."""
        event = self._waiters.get(sub_id)
        if event is None:
            event = self._waiters[sub_id] = asyncio.Event()
        return event

    def wake_all(self) -> None:
        """Set every :meth:`next_change` event (shutting down: nobody waits any longer)."""
        self._wake(list(self._waiters))

    def _changed(self, sub_ids: Sequence[str]) -> None:
        """These subscriptions were written or deleted (read from the topic, or written
        here): the index follows, then whoever waits for them is woken."""
        for sub_id in sub_ids:
            sub = self.view.items.get(sub_id)
            if sub is None:
                self.index.remove(sub_id)
            else:
                self.index.put(sub)
        self._wake(sub_ids)

    def _wake(self, sub_ids: Sequence[str]) -> None:
        for sub_id in sub_ids:
            event = self._waiters.pop(sub_id, None)
            if event is not None:
                event.set()

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()

    def all(self) -> list[Subscription]:
        return sorted(self.view.items.values(), key=lambda s: (s.created_at, s.id))

    def active(self) -> list[Subscription]:
        """The subscriptions not disabled, in the order they were last written."""
        return [s for s in self.view.items.values() if not s.disabled]

    def matching(self, event: Event) -> list[tuple[Subscription, list[Reason]]]:
        """The active subscriptions that match ``event``, each with its reasons: the same
        set as :func:`~services.notify.matching.match` over :meth:`active`, from the index
        (cost: the event's keys and the few candidates, not every subscription)."""
        return self.index.matches(event)

    def get(self, sub_id: str) -> Subscription | None:
        return self.view.items.get(sub_id)

    def owned(self, sub_id: str, tenant: str | None) -> Subscription | None:
        """The subscription ``sub_id`` if it belongs to ``tenant`` (``None``: any tenant, an
        admin's view); ``None`` for another tenant's exactly as for an unknown id, so that
        the API answers both alike."""
        sub = self.view.items.get(sub_id)
        if sub is None or (tenant is not None and sub.tenant != tenant):
            return None
        return sub

    async def put(self, sub: Subscription) -> Subscription:
        await (await self.producer.send(self.topic, key=sub.id.encode(), value=encode_subscription(sub)))
        self.view.items[sub.id] = sub
        self._changed([sub.id])
        return sub

    async def create(self, request: SubscriptionRequest,
                     tenant: str = ADMIN_TENANT) -> tuple[Subscription, str | None]:
        """Store a new subscription of ``tenant``; returns it and, for a webhook, its
        signing secret."""
        secret = new_secret() if request.channel.type == "webhook" else None
        sub = Subscription(
            **request.model_dump(), id=new_id(), tenant=tenant, created_at=datetime.now(UTC),
            secrets=[secret] if secret else [],
        )
        return await self.put(sub), secret

    async def delete(self, sub_id: str) -> bool:
        if sub_id not in self.view.items:
            return False
        await (await self.producer.send(self.topic, key=sub_id.encode(), value=None))
        self.view.items.pop(sub_id, None)
        self._changed([sub_id])
        return True

    async def disable(self, sub_id: str, reason: str) -> bool:
        """Disable the subscription, saying why; ``False`` when it is gone or disabled already."""
        sub = self.get(sub_id)
        if sub is None or sub.disabled:
            return False
        await self.put(sub.model_copy(update={
            "disabled": True, "disabled_reason": reason, "disabled_at": datetime.now(UTC)}))
        return True

    async def enable(self, sub_id: str) -> tuple[Subscription, str | None] | None:
        """Enable a disabled subscription again: its retries waiting resume, new events match
        it again, and its failures so far no longer count towards disabling it. Returns it and
        why it had been disabled (``None``: it was not); ``None`` when there is no such
        subscription."""
        sub = self.get(sub_id)
        if sub is None:
            return None
        if not sub.disabled:
            return sub, None
        enabled = await self.put(sub.model_copy(update={
            "disabled": False, "disabled_reason": None, "disabled_at": None,
            "enabled_at": datetime.now(UTC)}))
        log.info("subscription %s enabled again (it was disabled: %s)", sub_id, sub.disabled_reason,
                 extra={"subscription": sub_id})
        return enabled, sub.disabled_reason or "disabled"

    async def rotate_secret(self, sub_id: str, grace_seconds: int) -> tuple[Subscription, str] | None:
        """A new newest secret; the previous one keeps signing for ``grace_seconds``."""
        sub = self.get(sub_id)
        if sub is None or sub.channel.type != "webhook":
            return None
        secret = new_secret()
        rotated = sub.model_copy(update={
            "secrets": [secret, *signing_secrets(sub)[:1]],
            "previous_secrets_expire_at": datetime.now(UTC) + timedelta(seconds=grace_seconds),
        })
        return await self.put(rotated), secret


__all__ = ["SubscriptionStore", "decode_subscription", "encode_subscription", "new_id",
           "new_secret", "public_view", "signing_secrets"]
