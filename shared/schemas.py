"""JSON Schema of every event model, written to ``docs/schemas/`` by ``anting schema``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from shared.documents import Document
from shared.events import ENRICHED_ADAPTER, EVENT_ADAPTER
from shared.organizations import Organization
from shared.subscriptions import DeliveryRecord, Subscription, SubscriptionRequest

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"

MODELS: dict[str, TypeAdapter[Any]] = {
    "event": EVENT_ADAPTER,
    "enriched-event": ENRICHED_ADAPTER,
    "organization": TypeAdapter(Organization),
    "subscription-request": TypeAdapter(SubscriptionRequest),
    "subscription": TypeAdapter(Subscription),
    "delivery-record": TypeAdapter(DeliveryRecord),
    "document": TypeAdapter(Document),
}


def render_all() -> dict[str, bytes]:
    """File name → schema bytes (stable: sorted keys, trailing newline)."""
    return {
        f"{name}.schema.json": orjson.dumps(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name,
             **adapter.json_schema()},
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
        ) + b"\n"
        for name, adapter in MODELS.items()
    }


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in render_all().items():
        path = directory / name
        path.write_bytes(body)
        written.append(path)
    return written


__all__ = ["MODELS", "SCHEMA_DIR", "render_all", "write_all"]
