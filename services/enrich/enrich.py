"""The enrichment step, pure: an input event and the catalog in, the enriched event out.

The enriched event keeps the envelope and the original ``data`` as published
(unset optional fields stay unset), adds ``resolved`` and ``match`` to every
``data.organizations[i]`` and ``data.enrichment`` (DESIGN.md "Events"). An
event naming an unknown organization is still enriched (left join).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.enrich.resolve import CatalogIndex
from shared.events import AnyEvent, parse_event


@dataclass(frozen=True)
class Enriched:
    """An enriched event as JSON-ready data, with what the metrics need."""

    value: dict[str, Any]
    resolved: int
    unresolved: int

    def dump(self) -> bytes:
        return orjson.dumps(self.value)


def enrich(
    event: AnyEvent, index: CatalogIndex, catalog_version: str, now: datetime | None = None
) -> Enriched:
    """Resolve every organization the event names against the catalog."""
    out = event.model_dump(mode="json", exclude_unset=True, by_alias=True)
    data = out["data"]
    resolved_ids: list[str] = []
    unresolved: list[str] = []
    mentions = data.get("organizations") or []
    for mention in mentions:
        res = index.resolve(mention["name"])
        if res.organization is None:
            mention["resolved"] = None
            mention["match"] = None
            unresolved.append(mention["name"])
            continue
        oid = res.organization.id
        mention["resolved"] = index.records[oid]
        mention["match"] = {"method": str(res.method), "score": res.score}
        if oid not in resolved_ids:
            resolved_ids.append(oid)
    data["organizations"] = mentions
    data["enrichment"] = {
        "resolved": resolved_ids,
        "unresolved": unresolved,
        "catalog_version": catalog_version,
        "enriched_at": (now or datetime.now(UTC)).isoformat(),
    }
    return Enriched(out, len(mentions) - len(unresolved), len(unresolved))


def enrich_bytes(
    raw: bytes, index: CatalogIndex, catalog_version: str, now: datetime | None = None
) -> tuple[str, Enriched]:
    """Bytes of an input event → (its type, enriched); raises on poison (not JSON,
    not a CloudEvent, invalid data) with a ``pydantic.ValidationError``."""
    event = parse_event(raw)
    return event.type, enrich(event, index, catalog_version, now)


__all__ = ["Enriched", "enrich", "enrich_bytes"]
