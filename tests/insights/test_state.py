"""insights' fold without Kafka: facts of an event, the replay guard, windows, partners,
latest events, and the same state whatever order the facts come in."""

from __future__ import annotations

import random
from typing import Any

import orjson

from services.insights.state import (
    DAY_MS,
    RECENT,
    WEEK_MS,
    Entity,
    Fact,
    decode_rows,
    encode_facts,
    facts_of,
    rows_of,
    window_start,
)
from shared.events import parse_enriched, read_enriched
from tests.insights.helpers import random_events

MONDAY = 1_700_438_400_000  # 2023-11-20T00:00:00Z, a Monday


def fact(offset: int, ts: int = MONDAY, *, partition: int = 0, id_: str | None = None,
         partners: dict[str, str] | None = None) -> Fact:
    return Fact("org:a", "A", partition, offset, ts, "/s", id_ or f"e{partition}-{offset}",
                "agreement.signed" if partners is not None else "conference.announcement",
                "signed" if partners is not None else "forum", "t", None, partners)


def test_windows_are_utc_days_and_iso_weeks() -> None:
    assert window_start(MONDAY + 5 * DAY_MS + 3600_000, "week") == MONDAY
    assert window_start(MONDAY - 1, "week") == MONDAY - WEEK_MS
    assert window_start(MONDAY + 3 * DAY_MS + 5, "day") == MONDAY + 3 * DAY_MS


def test_a_replayed_fact_changes_nothing() -> None:
    e = Entity.new("org:a", "A")
    assert e.apply(fact(5))
    before = e.dump()
    assert not e.apply(fact(5))
    assert not e.apply(fact(3))  # below the partition's highest offset: applied before
    assert e.dump() == before
    assert e.apply(fact(3, partition=1))  # another partition has its own guard
    assert e.activity("all", MONDAY)["total"] == 2


def test_a_republished_event_counts_once() -> None:
    e = Entity.new("org:a", "A")
    assert e.apply(fact(1, id_="same"))
    assert not e.apply(fact(9, id_="same"))
    assert e.activity("all", MONDAY)["total"] == 1


def test_activity_partners_and_events() -> None:
    e = Entity.new("org:a", "A")
    e.apply(fact(1, MONDAY + 1000, partners={"b": "B", "c": "C"}))
    e.apply(fact(2, MONDAY + 2 * DAY_MS, partners={"b": "B"}))
    e.apply(fact(3, MONDAY - DAY_MS))
    assert e.activity("all", MONDAY)["by_type"] == {"agreement.signed": 2, "conference.announcement": 1}
    assert e.activity("week", MONDAY + DAY_MS)["total"] == 2
    assert e.activity("day", MONDAY + 2 * DAY_MS)["by_kind"] == {"signed": 1}
    assert e.activity("day", MONDAY + 9 * DAY_MS)["total"] == 0
    assert e.partners() == [{"id": "b", "name": "B", "count": 2}, {"id": "c", "name": "C", "count": 1}]
    assert e.doc["latest_agreement"]["id"] == "e0-2"
    assert [x["id"] for x in e.events()] == ["e0-2", "e0-1", "e0-3"]


def test_the_latest_events_are_bounded() -> None:
    e = Entity.new("org:a", "A")
    for i in range(RECENT + 20):
        e.apply(fact(i, MONDAY + i))
    assert len(e.events()) == RECENT
    assert e.events()[0]["id"] == f"e0-{RECENT + 19}"
    assert e.activity("all", MONDAY)["total"] == RECENT + 20


def test_same_state_in_any_order_and_with_replays() -> None:
    events = [parse_enriched(raw) for raw in random_events(200, seed=3)]
    facts = [f for i, ev in enumerate(events) for f in facts_of(ev, i % 3, i, MONDAY + i * 60_000)]

    def fold(order: list[Fact]) -> dict[str, bytes]:
        state: dict[str, Entity] = {}
        for f in order:
            state.setdefault(f.key, Entity.new(f.key, f.name)).apply(f)
        return {k: e.dump() for k, e in state.items()}

    once = fold(facts)
    # another interleaving of the partitions (each partition's own order kept), with
    # every fact of a partition replayed from some earlier point, as after a crash
    rng = random.Random(1)
    by_part = {p: [f for f in facts if f.partition == p] for p in range(3)}
    mixed: list[Fact] = []
    cursors = dict.fromkeys(by_part, 0)
    while any(cursors[p] < len(by_part[p]) for p in by_part):
        p = rng.choice([p for p in by_part if cursors[p] < len(by_part[p])])
        mixed.append(by_part[p][cursors[p]])
        cursors[p] += 1
        if rng.random() < 0.02:
            cursors[p] = max(0, cursors[p] - rng.randint(1, 30))  # a replay
    again = fold(mixed)
    assert set(again) == set(once)
    for key in once:
        a, b = Entity.load(once[key]).doc, Entity.load(again[key]).doc
        a.pop("pos"), b.pop("pos")
        assert a == b, key


def test_facts_of_an_agreement_name_partners_and_sectors() -> None:
    ev = parse_enriched(random_events(1, seed=5)[0])  # event 0 is an agreement
    facts = facts_of(ev, 0, 0, MONDAY)
    orgs = [f for f in facts if f.key.startswith("org:")]
    assert orgs and all(f.partners is not None and f.key[4:] not in f.partners for f in orgs)
    assert any(f.key.startswith("sector:") for f in facts)


def test_rows_folded_as_the_route_groups_them_give_the_state_of_facts_one_by_one() -> None:
    """Facts grouped per entity in records of any size (as the route sends them, through
    its encoding) fold to the same documents as the same facts applied one by one, with
    events published twice, replays, and windows older than the ones kept."""
    rng = random.Random(4)
    raws = random_events(400, seed=9)
    stream = []
    for i, raw in enumerate(raws):
        stream.append(raw)
        if rng.random() < 0.05:
            stream.append(raws[max(0, i - rng.choice([0, 1, 5, 60]))])  # published again
    facts: list[Fact] = []
    for i, raw in enumerate(stream):
        ts = MONDAY + rng.randint(-30, 30) * DAY_MS // 2 + i  # days beyond DAY_BUCKETS, in any order
        doc = read_enriched(raw)
        rows = rows_of(doc, i % 3, i, ts)
        assert [Fact(k, n, *r) for k, n, r in rows] == facts_of(parse_enriched(raw), i % 3, i, ts)
        facts += [Fact(k, n, *r) for k, n, r in rows]
    replayed: list[Fact] = []
    for j, f in enumerate(facts):
        replayed.append(f)
        if rng.random() < 0.01:
            replayed += facts[max(0, j - rng.randint(1, 40)):j]

    one_by_one: dict[str, Entity] = {}
    for f in replayed:
        one_by_one.setdefault(f.key, Entity.new(f.key, f.name)).apply(f)
    for most in (1, 7, 300, 5000):
        grouped: dict[str, Entity] = {}
        at = 0
        while at < len(replayed):
            size = rng.randint(1, most)
            by_key: dict[str, list[Fact]] = {}
            for f in replayed[at:at + size]:
                by_key.setdefault(f.key, []).append(f)
            for group in by_key.values():
                key, name, decoded = decode_rows(encode_facts(group))
                entity = grouped.setdefault(key, Entity.new(key, name))
                entity.apply_rows(name, decoded)
                if rng.random() < 0.3:  # sometimes from the table's bytes, as after a recovery
                    grouped[key] = Entity.load(entity.dump())
            at += size
        assert {k: e.dump() for k, e in grouped.items()} == {k: e.dump() for k, e in one_by_one.items()}, most


def _without(doc: dict[str, Any], path: tuple[str | int, ...], value: Any = ...) -> bytes:
    """``doc`` as JSON with the key at ``path`` left out (or set to ``value``)."""
    copy = orjson.loads(orjson.dumps(doc))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    if value is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return orjson.dumps(copy)


def test_rows_of_the_document_are_the_facts_of_the_models_whatever_is_left_out() -> None:
    """The route's rows from the contract's document (fields left out, not defaulted) are the
    facts of the models (defaults filled in), for every optional field left out or null."""
    org = {"id": "acme", "name": "Acme", "kind": "enterprise", "sectors": ["robotics", "", "robotics"], "city": "Suzhou"}
    other = {"id": "beta", "name": "Beta", "kind": "enterprise", "sectors": ["ai"], "city": "Shanghai"}
    mentions = [{"name": "Acme", "resolved": org}, {"name": "Beta", "resolved": other}, {"name": "X Co"}]
    enrichment = {"resolved": ["acme", "beta"], "unresolved": ["X Co", "X Co"], "catalog_version": "t",
                  "enriched_at": "2026-12-07T10:00:00Z"}
    base = {"specversion": "1.0", "id": "e1", "source": "/s", "time": "2026-12-07t10:00:00.5+08:00"}
    agreement = {**base, "type": "agreement.signed", "data": {
        "title": "T" * 300, "organizations": mentions, "sectors": ["metaverse"], "enrichment": enrichment}}
    announcement = {**base, "type": "conference.announcement", "data": {
        "headline": "H", "kind": "forum", "organizations": mentions, "location": {"city": "Shanghai"},
        "enrichment": enrichment}}
    cases = [orjson.dumps(agreement), orjson.dumps(announcement)]
    for doc in (agreement, announcement):
        cases += [_without(doc, ("time",)), _without(doc, ("time",), None),
                  _without(doc, ("data", "organizations")),
                  _without(doc, ("data", "organizations", 0, "resolved", "sectors")),
                  _without(doc, ("data", "organizations", 0, "resolved", "city")),
                  _without(doc, ("data", "organizations", 1, "resolved"), None),
                  _without(doc, ("data", "enrichment", "unresolved"))]
    cases += [_without(agreement, ("data", "sectors")), _without(announcement, ("data", "kind")),
              _without(announcement, ("data", "location")), _without(announcement, ("data", "location"), None),
              _without(announcement, ("data", "location", "city")),
              _without(announcement, ("data", "location", "city"), None)]
    for raw in cases:
        rows = [Fact(k, n, *r) for k, n, r in rows_of(read_enriched(raw), 1, 7, MONDAY)]
        assert rows == facts_of(parse_enriched(raw), 1, 7, MONDAY), raw
        assert rows, raw
