"""One contract at every stage, as a property: what ingest accepts, enrich enriches and
notify matches; what ingest refuses, enrich refuses for the same fields (written straight
to the topic, it is dead-lettered) and so does notify. No broker: the three stages'
own validators, called as each stage calls them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from services.enrich.catalog import shipped
from services.enrich.enrich import enrich_bytes
from services.enrich.resolve import build_index
from services.ingest.codec import Problem, decode_events, to_records
from services.notify.matching import InvalidEvent, decode, match
from shared.events import (
    EventTooLarge,
    error_paths,
    parse_enriched,
    read_enriched,
    record_event_bytes,
)
from shared.kafka import PRODUCER_MAX_REQUEST_BYTES, record_size
from shared.settings import AntingSettings
from shared.subscriptions import Filter
from tests.contract.strategies import broken_events, valid_events

INDEX = build_index(shipped())
SETTINGS = AntingSettings()
EVERYTHING = Filter()
ENRICHMENT = {"resolved": [], "unresolved": [], "catalog_version": "v1",
              "enriched_at": "2024-05-01T10:00:00Z"}


def ingest(body: bytes) -> list[bytes] | Problem:
    """What ingest would write for a POST /v1/events body, or its problem."""
    try:
        return [r.value for r in to_records(decode_events(body, "application/json"), SETTINGS)]
    except Problem as problem:
        return problem


def enrich_then_notify(value: bytes) -> dict[str, Any]:
    """enrich's output for an input record, read back by notify; fails the test if a
    stage refuses what the previous one accepted."""
    _, enriched = enrich_bytes(record_event_bytes(value, None), INDEX, "v1")
    out = enriched.dump()
    assert record_size(value, out, [("content-type", b"application/cloudevents+json")]) <= PRODUCER_MAX_REQUEST_BYTES
    event = decode(out)
    assert match(event, EVERYTHING) is not None
    return event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events)
def test_what_ingest_accepts_every_later_stage_reads(event: dict[str, Any]) -> None:
    """A valid event is accepted by ingest, enriched without a dead letter, matched by notify."""
    written = ingest(orjson.dumps(event))
    assert not isinstance(written, Problem), (written.status, written.errors)
    notified = enrich_then_notify(written[0])
    assert (notified["source"], notified["id"]) == (event["source"], event["id"])


def _paths(errors: list[dict[str, Any]]) -> set[str]:
    return {e["path"] for e in errors}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_events())
def test_what_ingest_refuses_every_stage_refuses_for_the_same_fields(case: tuple[str, bytes]) -> None:
    """A broken event is refused by ingest; enrich refuses the same bytes with the same field
    paths (and dead-letters them), and notify refuses it as an enriched event too."""
    kind, body = case
    refused = ingest(body)
    assert isinstance(refused, Problem), f"ingest accepted a {kind} event"
    assert refused.status in (413, 422)
    with pytest.raises((ValidationError, EventTooLarge)) as info:
        enrich_bytes(record_event_bytes(body, None), INDEX, "v1")
    if isinstance(info.value, ValidationError):
        assert _paths(error_paths(info.value)) == {e.path for e in refused.errors}
    # notify: the same event carrying an enrichment block is still refused
    doc = orjson.loads(body.replace(b"1e400", b"1").replace(b"1E999", b"1")) if kind != "number" else None
    if doc is not None and isinstance(doc.get("data"), dict):
        doc["data"]["enrichment"] = ENRICHMENT
        with pytest.raises(InvalidEvent):
            decode(orjson.dumps(doc))
    if kind == "number":
        with pytest.raises(InvalidEvent):
            decode(body.replace(b'"data":{', b'"data":{"enrichment":' + orjson.dumps(ENRICHMENT) + b",", 1))


def _with_enrichment(body: bytes) -> bytes:
    return body.replace(b'"data":{', b'"data":{"enrichment":' + orjson.dumps(ENRICHMENT) + b",", 1)


def _verdict(check: Any, raw: bytes) -> tuple[bool, Any]:
    try:
        return True, check(raw)
    except ValidationError as exc:
        return False, exc.errors(include_url=False)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_events.map(lambda e: ("valid", orjson.dumps(e))) | broken_events())
def test_the_document_check_is_the_model_check(case: tuple[str, bytes]) -> None:
    """read_enriched (the models' core schema as typed dicts: notify's fast path) accepts
    exactly the enriched events parse_enriched accepts, refuses the rest with the models'
    own errors, and gives the object as sent (nothing added)."""
    _, body = case
    raw = _with_enrichment(body)
    model_ok, model = _verdict(parse_enriched, raw)
    doc_ok, doc = _verdict(read_enriched, raw)
    assert model_ok == doc_ok
    if not model_ok:
        assert doc == model
        return
    sent = orjson.loads(raw)
    assert set(doc) == set(sent) and set(doc["data"]) == set(sent["data"])
    assert (doc["source"], doc["id"], doc["type"]) == (sent["source"], sent["id"], sent["type"])


@pytest.mark.parametrize("name", ["Bad-Name", "abc\n", "a" * 65, "ünï", "", "id2 "])
def test_extension_names_the_models_refuse_the_document_check_refuses(name: str) -> None:
    """Typed dicts have no rule for extra keys: the document check applies the models' own."""
    body = _with_enrichment(orjson.dumps({"specversion": "1.0", "id": "x", "source": "/s", "type": "agreement.signed",
                                          name: "v", "data": {"title": "t"}}))
    assert _verdict(parse_enriched, body)[0] is False
    assert _verdict(read_enriched, body) == _verdict(parse_enriched, body)
    ok = body.replace(orjson.dumps(name), b'"ext1"')
    assert _verdict(read_enriched, ok)[0] and _verdict(parse_enriched, ok)[0]
