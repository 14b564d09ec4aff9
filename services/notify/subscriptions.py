"""The subscriptions store: the compacted ``subscriptions`` topic is the source of
truth, read into memory (so every instance sees the same set); writes go to the
topic and are applied locally once the broker acknowledged them.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.notify.table import CompactedView
from shared.settings import AntingSettings
from shared.subscriptions import Subscription, SubscriptionRequest
from shared.topics import SUBSCRIPTIONS


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_id() -> str:
    return "sub_" + uuid.uuid4().hex[:20]


def encode(sub: Subscription) -> bytes:
    return orjson.dumps(sub.model_dump(mode="json"))


def decode(raw: bytes) -> Subscription:
    return Subscription.model_validate_json(raw)


def public_view(sub: Subscription) -> dict[str, Any]:
    """What the API shows: everything but the secrets."""
    doc = sub.model_dump(mode="json", exclude={"secrets", "previous_secrets_expire_at"})
    doc["secret_count"] = len(sub.secrets)
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
    def __init__(self, settings: AntingSettings, producer: Any) -> None:
        self.topic = settings.topic(SUBSCRIPTIONS)
        self.producer = producer
        self.view: CompactedView[Subscription] = CompactedView(settings, self.topic, decode)

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()

    def all(self) -> list[Subscription]:
        return sorted(self.view.items.values(), key=lambda s: (s.created_at, s.id))

    def active(self) -> list[Subscription]:
        return [s for s in self.view.items.values() if not s.disabled]

    def get(self, sub_id: str) -> Subscription | None:
        return self.view.items.get(sub_id)

    async def put(self, sub: Subscription) -> Subscription:
        await (await self.producer.send(self.topic, key=sub.id.encode(), value=encode(sub)))
        self.view.items[sub.id] = sub
        return sub

    async def create(self, request: SubscriptionRequest) -> tuple[Subscription, str | None]:
        """Store a new subscription; returns it and, for a webhook, its signing secret."""
        secret = new_secret() if request.channel.type == "webhook" else None
        sub = Subscription(
            **request.model_dump(), id=new_id(), created_at=datetime.now(UTC),
            secrets=[secret] if secret else [],
        )
        return await self.put(sub), secret

    async def delete(self, sub_id: str) -> bool:
        if sub_id not in self.view.items:
            return False
        await (await self.producer.send(self.topic, key=sub_id.encode(), value=None))
        self.view.items.pop(sub_id, None)
        return True

    async def disable(self, sub_id: str, reason: str) -> None:
        sub = self.get(sub_id)
        if sub is None or sub.disabled:
            return
        await self.put(sub.model_copy(update={"disabled": True, "disabled_reason": reason}))

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
