"""Property tests of the event contract: round trips, and rejections with field paths."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import dump_event, error_paths, parse_event
from tests.contract.strategies import valid_events

# the contract's own strategy of valid events (one definition for every property test)
events = valid_events


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_valid_event_round_trips_bytes_model_bytes(event: dict[str, Any]) -> None:
    """bytes → model → bytes is a fixed point, and the model survives its own bytes."""
    raw = orjson.dumps(event)
    model = parse_event(raw)
    out = dump_event(model)
    assert parse_event(out) == model
    assert dump_event(parse_event(out)) == out
    # nothing the publisher sent is lost: same JSON value, modulo time formatting
    assert set(orjson.loads(out)) == set(event)
    assert orjson.loads(out)["data"].keys() == event["data"].keys()


REQUIRED = {
    "conference.announcement": [("id",), ("source",), ("type",), ("specversion",), ("data",), ("data", "headline")],
    "agreement.signed": [("id",), ("source",), ("type",), ("specversion",), ("data",), ("data", "title")],
}

# a value of the wrong JSON type for each kind of field
WRONG_TYPES = st.sampled_from([123, 4.5, True, None, [], {}])


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def _del(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    for p in path[:-1]:
        doc = doc[p]
    del doc[path[-1]]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_missing_required_field_is_rejected_with_its_path(event: dict[str, Any], data: st.DataObject) -> None:
    """Deleting any required field gives an error whose path names that field."""
    path = data.draw(st.sampled_from(REQUIRED[event["type"]]))
    doc = copy.deepcopy(event)
    _del(doc, path)
    with pytest.raises(ValidationError) as info:
        parse_event(orjson.dumps(doc))
    paths = [e["path"] for e in error_paths(info.value)]
    expected = ".".join(path)
    assert expected in paths, paths


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.data())
def test_wrong_type_of_required_field_is_rejected_with_its_path(event: dict[str, Any], data: st.DataObject) -> None:
    """Replacing a required string field with another JSON type is an error at that path."""
    path = data.draw(st.sampled_from([p for p in REQUIRED[event["type"]] if p not in (("data",),)]))
    value = data.draw(WRONG_TYPES)
    doc = copy.deepcopy(event)
    _set(doc, path, value)
    with pytest.raises(ValidationError) as info:
        parse_event(orjson.dumps(doc))
    paths = [e["path"] for e in error_paths(info.value)]
    expected = ".".join(path)
    assert any(p == expected or p.startswith(expected + ".") for p in paths), paths


def test_unknown_type_is_an_error_at_type() -> None:
    """An unknown event type is rejected at the path `type`, naming the known types."""
    doc = {"specversion": "1.0", "id": "1", "source": "s", "type": "conference.cancelled", "data": {}}
    with pytest.raises(ValidationError) as info:
        parse_event(orjson.dumps(doc))
    errors = error_paths(info.value)
    assert [e["path"] for e in errors] == ["type"]
    assert "conference.announcement" in errors[0]["message"]


def test_nested_field_path_and_strict_numbers() -> None:
    """A string where a number belongs is rejected (strict), with the nested path."""
    doc = {"specversion": "1.0", "id": "1", "source": "s", "type": "agreement.signed",
           "data": {"title": "t", "party_count": "20", "organizations": [{"name": ""}]}}
    with pytest.raises(ValidationError) as info:
        parse_event(orjson.dumps(doc))
    assert sorted(e["path"] for e in error_paths(info.value)) == [
        "data.organizations.0.name", "data.party_count",
    ]


def test_times_round_trip_with_offsets() -> None:
    """A time with a +08:00 offset keeps its instant through the round trip."""
    doc = {"specversion": "1.0", "id": "1", "source": "s", "type": "agreement.signed",
           "time": "2023-07-05T09:00:00+08:00", "data": {"title": "t"}}
    model = parse_event(orjson.dumps(doc))
    assert model.time is not None
    assert model.time.utcoffset() == timedelta(hours=8)
    assert orjson.loads(dump_event(model))["time"] == "2023-07-05T09:00:00+08:00"


@pytest.mark.parametrize(("sent", "kept"), [(21.0, 21), (21, 21), (0.0, 0), (-7.0, None), (21.5, None),
                                            ("21", None), (True, None), (1e300, None)])
def test_an_integral_json_number_is_an_integer(sent: object, kept: int | None) -> None:
    """JSON Schema's "integer" takes 21.0, and so does the contract (as 21); a fraction, a
    string, a boolean, a negative count or one beyond 2**53 is still refused."""
    event = {"specversion": "1.0", "id": "n", "source": "/s", "type": "agreement.signed",
             "data": {"title": "t", "party_count": sent, "organizations": [{"name": "X"}]}}
    if kept is None:
        with pytest.raises(ValidationError):
            parse_event(orjson.dumps(event))
    else:
        parsed = parse_event(orjson.dumps(event))
        assert parsed.data.party_count == kept and type(parsed.data.party_count) is int  # type: ignore[union-attr]
