"""Enrichment as a pure function: event + catalog → enriched event (no Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from services.enrich.catalog import shipped
from services.enrich.enrich import enrich, enrich_bytes
from services.enrich.resolve import CatalogIndex, build_index
from shared.events import parse_enriched, parse_event_obj
from tests.enrich.seed import SEED_NAMES, seed_events

NOW = datetime(2023, 8, 23, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return build_index(shipped())


def test_seed_events_enrich_to_valid_enriched_events(index: CatalogIndex) -> None:
    """Every seed event enriches to a valid enriched event; each mention gets its record."""
    for raw in seed_events():
        out = enrich(parse_event_obj(raw), index, "0:136", NOW)
        event = parse_enriched(out.dump())
        assert event.id == raw["id"] and event.type == raw["type"]
        for mention in event.data.organizations:
            if mention.name in SEED_NAMES:
                assert mention.resolved is not None
                assert mention.resolved.id == SEED_NAMES[mention.name]
                assert mention.match is not None and mention.match.score == 100.0
        assert event.data.enrichment.catalog_version == "0:136"
        assert event.data.enrichment.enriched_at == NOW


def test_unknown_organization_is_kept_and_listed(index: CatalogIndex) -> None:
    """A left join: an unknown name stays, resolved null, listed in enrichment.unresolved."""
    raw = next(e for e in seed_events() if e["id"] == "seed-signing")
    out = enrich(parse_event_obj(raw), index, "v", NOW)
    data = out.value["data"]
    assert data["enrichment"]["resolved"] == ["anting-town-government"]
    assert data["enrichment"]["unresolved"] == ["Some Unknown Metaverse Startup Co., Ltd."]
    unknown = data["organizations"][1]
    assert unknown["resolved"] is None and unknown["match"] is None
    assert (out.resolved, out.unresolved) == (1, 1)


def test_original_data_is_kept(index: CatalogIndex) -> None:
    """The envelope and the published data are unchanged apart from the additions."""
    raw = seed_events()[0]
    out = enrich(parse_event_obj(raw), index, "v", NOW).value
    assert out["subject"] == raw["subject"] and out["source"] == raw["source"]
    assert out["data"]["figures"] == raw["data"]["figures"]
    assert out["data"]["people"] == raw["data"]["people"]
    assert "starts_at" not in out["data"]  # unset stays unset
    for before, after in zip(raw["data"]["organizations"], out["data"]["organizations"], strict=True):
        assert after["name"] == before["name"] and after["role"] == before["role"]


def test_resolved_ids_are_unique(index: CatalogIndex) -> None:
    """Two names of one organization list its id once in enrichment.resolved."""
    raw = next(e for e in seed_events() if e["id"] == "seed-alliance")
    out = enrich(parse_event_obj(raw), index, "v", NOW).value
    assert out["data"]["enrichment"]["resolved"] == ["shanghai-metaverse-industry-innovation-alliance"]


@pytest.mark.parametrize("poison", [
    b"not json at all",
    b'{"hello": "world"}',
    b'{"specversion": "1.0", "id": "x", "source": "s", "type": "conference.announcement", "data": {}}',
    b'{"specversion": "1.0", "id": "x", "source": "s", "type": "no.such.type", "data": {"headline": "h"}}',
])
def test_poison_raises(index: CatalogIndex, poison: bytes) -> None:
    """Not JSON, not a CloudEvent, or invalid data: a validation error (→ dead letter)."""
    with pytest.raises(ValidationError):
        enrich_bytes(poison, index, "v", NOW)


def test_enrich_bytes_roundtrip(index: CatalogIndex) -> None:
    """Bytes in, type and enriched bytes out."""
    etype, out = enrich_bytes(orjson.dumps(seed_events()[1]), index, "v", NOW)
    assert etype == "conference.announcement"
    assert parse_enriched(out.dump()).data.enrichment.unresolved == []
