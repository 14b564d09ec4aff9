"""What insights keeps, as plain data: the facts one enriched event teaches each entity it
names (:func:`facts_of`), one entity's state (:class:`Entity`), and the idempotent fold of
a fact into it (:meth:`Entity.apply`). No Kafka and no faust here: the faust agents
(``services.insights.streams``) and the tests' recomputation use the same functions.

An *entity* is what a table key names (:func:`entity_key`):

- ``org:<id>``: a resolved organization (a catalog id);
- ``unresolved:<name>``: a name no catalog record matched, counted apart so that a
  catalog operator sees what to add;
- ``sector:<sector>``: the event's agreement sectors and its organizations' sectors;
- ``city:<city>``: the event's location city and its organizations' cities.

Exactly once over at-least-once delivery: every fact carries the position of its event
on ``enriched-events`` (partition, offset). An entity remembers, per partition, the
highest offset it has applied (``pos``), in the same table value as its counts, so that
the two reach the changelog in one record and cannot disagree after a crash. A fact at
or below that offset is a replay (a restart from the last committed offset, a
rebalance) and changes nothing. Facts of one partition reach an entity in offset
order: one producer per partition of ``enriched-events`` writes them, keyed by the
entity, and the producer keeps per-partition order. An event published twice (one
``(source, id)`` at two offsets) is recognised among the entity's latest
:data:`RECENT` events and counted once; an older duplicate would count twice
(documented retention).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shared.events import AGREEMENT, AnyEnrichedEvent

__all__ = [
    "DAY_BUCKETS",
    "DAY_MS",
    "FACTS_PER_RECORD",
    "RECENT",
    "TITLE_CHARS",
    "WEEK_BUCKETS",
    "WEEK_MS",
    "Entity",
    "Fact",
    "Row",
    "Window",
    "decode_facts",
    "decode_rows",
    "encode_facts",
    "encode_rows",
    "entity_key",
    "facts_of",
    "rows_of",
    "window_start",
]

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
#: the latest events kept per entity (and the window in which a re-published event is
#: recognised as a duplicate)
RECENT = 50
#: tumbling windows kept per entity: the last 14 days and the last 8 weeks that had events
DAY_BUCKETS = 14
WEEK_BUCKETS = 8
#: characters of a headline or title kept in an entity's latest events
TITLE_CHARS = 200
#: facts of one entity carried by one ``insights-facts`` record at most: a busy entity (a
#: city named by most events) gets a few records per batch, each far below the topic's
#: size limit (a fact is a few hundred bytes)
FACTS_PER_RECORD = 256

Window = Literal["day", "week", "all"]
Namespace = Literal["org", "unresolved", "sector", "city"]


def entity_key(namespace: Namespace, name: str) -> str:
    """The table key of an entity: ``"org:anting-town-government"``, ``"sector:automotive"``."""
    return f"{namespace}:{name}"


def window_start(ts_ms: int, window: Literal["day", "week"]) -> int:
    """The start (ms since the epoch, UTC) of the tumbling window holding ``ts_ms``: days
    start at 00:00 UTC, weeks on Monday 00:00 UTC (ISO 8601 weeks). 1970-01-01 was a
    Thursday, hence the three days' shift."""
    if window == "day":
        return ts_ms - ts_ms % DAY_MS
    shift = 3 * DAY_MS
    return (ts_ms + shift) - (ts_ms + shift) % WEEK_MS - shift


# not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# and making ~8 facts per event (in the route, again in the fold) took 6.5% of the
# service's time in a profile at 20,000 events
@dataclass(slots=True)
class Fact:
    """What one event teaches one entity: the event's position on ``enriched-events``
    (``partition``, ``offset``), its record timestamp ``ts`` (ms; the windows' clock),
    ``source``/``id``/``type``/``kind``/``title``/``time`` (RFC 3339 or None) as the
    latest-events list shows them, ``name`` (the entity's display name) and, for an
    organization named by an ``agreement.signed`` event, ``partners`` (the other resolved
    organizations: id → name)."""

    key: str
    name: str
    partition: int
    offset: int
    ts: int
    source: str
    id: str
    type: str
    kind: str
    title: str
    time: str | None
    partners: Mapping[str, str] | None = None

    def to_json(self) -> bytes:
        """The fact as the ``insights-facts`` record value (orjson)."""
        return orjson.dumps({
            "key": self.key, "name": self.name, "p": self.partition, "o": self.offset, "ts": self.ts,
            "source": self.source, "id": self.id, "type": self.type, "kind": self.kind,
            "title": self.title, "time": self.time, "partners": self.partners,
        })

    @classmethod
    def from_json(cls, raw: bytes) -> Fact:
        """A fact from :meth:`to_json`'s bytes; raises ``orjson.JSONDecodeError`` or ``KeyError``."""
        d = orjson.loads(raw)
        return cls(d["key"], d["name"], d["p"], d["o"], d["ts"], d["source"], d["id"], d["type"],
                   d["kind"], d["title"], d["time"], d.get("partners"))


#: one fact as the route sends it and the fold applies it, without a :class:`Fact` around
#: it: ``[partition, offset, ts, source, id, type, kind, title, time, partners]`` (the
#: fields of :class:`Fact` after ``key`` and ``name``, which one record carries once)
Row = list[Any]


def encode_facts(facts: Sequence[Fact]) -> bytes:
    """Facts of one entity (one key), in the order they were taught, as one
    ``insights-facts`` record value: ``{"key", "name", "facts": [[partition, offset, ts,
    source, id, type, kind, title, time, partners], ...]}``. One record per entity per
    batch instead of one per fact: the fold's cost is per record, and a batch of
    events names the same few sectors, cities and busy organizations again and again."""
    first = facts[0]
    return orjson.dumps({
        "key": first.key, "name": facts[-1].name,
        "facts": [[f.partition, f.offset, f.ts, f.source, f.id, f.type, f.kind, f.title, f.time, f.partners]
                  for f in facts],
    })


def encode_rows(key: str, name: str, rows: Sequence[Row]) -> bytes:
    """What :func:`encode_facts` writes for the facts ``rows`` of entity ``key`` (display
    name ``name``: the last fact's), from rows instead of :class:`Fact` objects."""
    return orjson.dumps({"key": key, "name": name, "facts": rows})


def decode_rows(raw: bytes) -> tuple[str, str, list[Row]]:
    """``(key, name, rows)`` of an ``insights-facts`` record (either form
    :func:`decode_facts` reads). Raises ``orjson.JSONDecodeError``, ``KeyError``,
    ``ValueError`` or ``TypeError``."""
    d = orjson.loads(raw)
    if "facts" not in d:
        rows: list[Row] = [[d["p"], d["o"], d["ts"], d["source"], d["id"], d["type"], d["kind"],
                            d["title"], d["time"], d.get("partners")]]
        return d["key"], d["name"], rows
    rows = d["facts"]
    for row in rows:
        if len(row) != 10:
            raise ValueError(f"a fact of {len(row)} fields, not 10")
    return d["key"], d["name"], rows


def decode_facts(raw: bytes) -> list[Fact]:
    """The facts of an ``insights-facts`` record: :func:`encode_facts`' many, or the one
    fact of :meth:`Fact.to_json` (what the topic held before facts were grouped). Raises
    ``orjson.JSONDecodeError``, ``KeyError``, ``ValueError`` or ``TypeError``."""
    d = orjson.loads(raw)
    if "facts" not in d:
        return [Fact.from_json(raw)]
    key, name = d["key"], d["name"]
    return [Fact(key, name, p, o, ts, source, id_, type_, kind, title, time, partners)
            for p, o, ts, source, id_, type_, kind, title, time, partners in d["facts"]]


def facts_of(event: AnyEnrichedEvent, partition: int, offset: int, ts: int) -> list[Fact]:
    """Every fact an enriched event at ``partition``/``offset`` (record timestamp ``ts``,
    ms) teaches: one per resolved organization (each once, however often named), per
    unresolved name, per sector and per city. An announcement's kind is its ``data.kind``;
    an agreement's is ``signed``. The same as :func:`rows_of` on the event's document."""
    return [Fact(key, name, *row) for key, name, row in
            rows_of(event.model_dump(), partition, offset, ts)]


def rows_of(doc: Mapping[str, Any], partition: int, offset: int, ts: int) -> list[tuple[str, str, Row]]:
    """:func:`facts_of` on an enriched event's JSON object as
    :func:`shared.events.read_enriched` gives it (checked by the contract; fields left
    out are the models' defaults), as ``(key, name, row)`` triples: what the route sends,
    without building the models (their construction was most of the route's time)."""
    data = doc["data"]
    type_ = doc["type"]
    if type_ == AGREEMENT:
        title, kind, sectors = data["title"], "signed", list(data.get("sectors") or ())
    else:
        title, kind, sectors = data["headline"], str(data.get("kind", "other")), []
    title = title[:TITLE_CHARS]
    when = doc.get("time")
    time = when.isoformat() if when is not None else None
    orgs: dict[str, Any] = {}
    for mention in data.get("organizations") or ():
        resolved = mention.get("resolved")
        if resolved is not None:
            orgs.setdefault(resolved["id"], resolved)
    location = data.get("location")
    city = location.get("city") if location is not None else None
    cities = [city] if city else []
    for org in orgs.values():
        sectors.extend(org.get("sectors") or ())
        if org.get("city"):
            cities.append(org["city"])
    head = (partition, offset, ts, doc["source"], doc["id"], type_, kind, title, time)
    out: list[tuple[str, str, Row]] = []
    if type_ == AGREEMENT:
        for oid, org in orgs.items():
            out.append(("org:" + oid, org["name"], [*head, {p: o["name"] for p, o in orgs.items() if p != oid}]))
    else:
        for oid, org in orgs.items():
            out.append(("org:" + oid, org["name"], [*head, None]))
    enrichment = data.get("enrichment") or {}
    for namespace, names in (("unresolved:", enrichment.get("unresolved") or ()), ("sector:", sectors),
                             ("city:", cities)):
        seen: set[str] = set()
        for name in names:
            if name and name not in seen:  # each once, in the order first named
                seen.add(name)
                out.append((namespace + name, name, [*head, None]))
    return out


_PARTS = [str(i) for i in range(64)]  # pos's keys: partitions as strings, made once


def _counts() -> dict[str, Any]:
    return {"total": 0, "by_type": {}, "by_kind": {}}


def _order(item: Mapping[str, Any]) -> tuple[int, int, int]:
    """Newest first, the same whatever order facts arrived in: record time, then position."""
    return (item["ts"], item["p"], item["o"])


def _descending(item: Mapping[str, Any]) -> tuple[int, int, int]:
    """:func:`_order` negated: ascending along a newest-first list, for :mod:`bisect`."""
    return (-item["ts"], -item["p"], -item["o"])


def _row_order(row: Row) -> tuple[int, int, int]:
    """:func:`_order` of a row."""
    return (row[2], row[0], row[1])


def _row_descending(row: Row) -> tuple[int, int, int]:
    return (-row[2], -row[0], -row[1])


def _item(row: Sequence[Any]) -> dict[str, Any]:
    """The latest-events entry of a row (its first nine fields)."""
    return {"id": row[4], "source": row[3], "type": row[5], "kind": row[6], "title": row[7],
            "time": row[8], "ts": row[2], "p": row[0], "o": row[1]}


class Entity:
    """One entity's state, a JSON document (what the table holds, as bytes):

    ``key``, ``name``; ``pos`` (partition of ``enriched-events`` → highest offset applied,
    the replay guard); ``all`` (``{"total", "by_type", "by_kind"}``); ``day`` and ``week``
    (window start ms, as a string → the same counts; the last :data:`DAY_BUCKETS` /
    :data:`WEEK_BUCKETS` windows); ``partners`` (id → ``{"name", "count"}``) and
    ``latest_agreement`` (organizations only); ``recent`` (the latest :data:`RECENT`
    events, newest first).
    """

    __slots__ = ("_ids", "_window", "doc")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        # (source, id) of the latest events, built on the first fold: a batch folds many
        # facts into one entity, and scanning the list for each was most of the fold's time
        self._ids: set[tuple[str, str]] | None = None
        # window → (start, end, its counts in doc): see _bucket
        self._window: dict[str, tuple[int, int, dict[str, Any]]] = {}

    @classmethod
    def new(cls, key: str, name: str) -> Entity:
        """An entity that has seen nothing."""
        return cls({"key": key, "name": name, "pos": {}, "all": _counts(), "day": {}, "week": {},
                    "partners": {}, "latest_agreement": None, "recent": []})

    @classmethod
    def load(cls, raw: bytes) -> Entity:
        """An entity from its table bytes."""
        return cls(orjson.loads(raw))

    def dump(self) -> bytes:
        """The table bytes."""
        return orjson.dumps(self.doc)

    def _bucket(self, window: Literal["day", "week"], ts: int) -> dict[str, Any] | None:
        """The counts of ``window``'s bucket holding ``ts`` (ms), made when new (the oldest
        beyond :data:`DAY_BUCKETS` / :data:`WEEK_BUCKETS` dropped); None when ``ts`` falls
        in a window older than every one kept. The last bucket used is remembered with its
        bounds: a batch's facts nearly all fall in the same day and week."""
        cached = self._window.get(window)
        if cached is not None and cached[0] <= ts < cached[1]:
            return cached[2]
        buckets: dict[str, Any] = self.doc[window]
        start = window_start(ts, window)
        key = str(start)
        if key not in buckets:
            buckets[key] = _counts()
            keep = DAY_BUCKETS if window == "day" else WEEK_BUCKETS
            if len(buckets) > keep:
                for old in sorted(buckets, key=int)[:-keep]:
                    del buckets[old]
        bucket = buckets.get(key)
        if bucket is not None:
            self._window[window] = (start, start + (DAY_MS if window == "day" else WEEK_MS), bucket)
        return bucket

    def apply(self, fact: Fact) -> bool:
        """Fold ``fact`` in; False (and nothing changed) for a replay or a duplicate:
        its offset is at or below the highest applied on its partition, or its
        ``(source, id)`` is among the latest events."""
        return self.apply_rows(fact.name, [[fact.partition, fact.offset, fact.ts, fact.source, fact.id,
                                            fact.type, fact.kind, fact.title, fact.time, fact.partners]])[0] == 1

    def apply_rows(self, name: str, rows: Iterable[Row]) -> tuple[int, int]:
        """Fold facts of this entity in, in order, as :meth:`apply` does one by one (rows:
        see :data:`Row`; ``name`` the display name they carry). Returns ``(applied,
        past_guard)``: how many were applied (the others are replays or duplicates), and
        how many were above their partition's highest offset (applied, or duplicates whose
        offset the guard now holds: the document changed when this is not 0). The fold's
        time is per fact, so facts come in rows (no :class:`Fact` each) and, when none of
        them can be a duplicate, are counted together (:meth:`_apply_distinct`)."""
        doc = self.doc
        pos: dict[str, int] = doc["pos"]
        passed: list[Row] = []
        for row in rows:
            partition, offset = row[0], row[1]
            part = _PARTS[partition] if partition < len(_PARTS) else str(partition)
            if offset > pos.get(part, -1):
                pos[part] = offset
                passed.append(row)
        if not passed:
            return 0, 0
        ids = self._ids
        if ids is None:
            ids = self._ids = {(e["source"], e["id"]) for e in doc["recent"]}
        idents = {(row[3], row[4]) for row in passed}
        if len(idents) == len(passed) and ids.isdisjoint(idents):
            applied = self._apply_distinct(passed)
        else:
            applied = self._apply_each(passed, ids)
        if applied:
            doc["name"] = name
        return applied, len(passed)

    def _apply_each(self, rows: list[Row], ids: set[tuple[str, str]]) -> int:
        """Rows past the replay guard, one after the other: a row whose ``(source, id)`` is
        among the latest events when its turn comes is a duplicate."""
        doc = self.doc
        recent: list[dict[str, Any]] = doc["recent"]
        all_counts = doc["all"]
        applied = 0
        for partition, offset, ts, source, id_, type_, kind, title, time, partners in rows:
            ident = (source, id_)
            if ident in ids:
                continue
            applied += 1
            for c in (all_counts, self._bucket("day", ts), self._bucket("week", ts)):
                if c is not None:
                    c["total"] += 1
                    by_type, by_kind = c["by_type"], c["by_kind"]
                    by_type[type_] = by_type.get(type_, 0) + 1
                    by_kind[kind] = by_kind.get(kind, 0) + 1
            # newest first. Facts of several partitions interleave with equal timestamps, so
            # a new one is often not the newest: binary search (keys negated: the list
            # descends) instead of a scan, and nothing at all for one older than a full
            # list's last
            order = (ts, partition, offset)
            if not recent or order > _order(recent[0]):
                at = 0
            elif len(recent) < RECENT or order > _order(recent[-1]):
                at = bisect.bisect_right(recent, (-ts, -partition, -offset), key=_descending)
            else:
                at = RECENT
            item = _item((partition, offset, ts, source, id_, type_, kind, title, time))
            if at < RECENT:
                recent.insert(at, item)
                ids.add(ident)
                if len(recent) > RECENT:
                    gone = recent.pop()
                    ids.discard((gone["source"], gone["id"]))
            if partners is not None:
                self._partnered(item, partners)
        return applied

    def _apply_distinct(self, rows: list[Row]) -> int:
        """Rows past the replay guard whose ``(source, id)`` pairs are all different and
        none among the latest events: every one is applied, as :meth:`_apply_each` would,
        with the counts added up per window, type and kind first, and the latest events
        merged once. The same state: a window bucket dropped as too old never comes back
        (only newer ones are added), so the buckets kept and their counts do not depend on
        the order; the latest events are the newest :data:`RECENT` of those kept and the
        new ones, whatever the order."""
        doc = self.doc
        sums: dict[tuple[int, int, str, str], int] = {}
        day_lo = day_hi = week_lo = week_hi = 0
        for row in rows:
            ts = row[2]
            if not day_lo <= ts < day_hi:
                day_lo = window_start(ts, "day")
                day_hi = day_lo + DAY_MS
            if not week_lo <= ts < week_hi:
                week_lo = window_start(ts, "week")
                week_hi = week_lo + WEEK_MS
            key = (day_lo, week_lo, row[5], row[6])
            sums[key] = sums.get(key, 0) + 1
        all_counts = doc["all"]
        # in the order each first came: the same order of keys in the document as one by one
        for (day, week, type_, kind), n in sums.items():
            for c in (all_counts, self._bucket("day", day), self._bucket("week", week)):
                if c is not None:
                    c["total"] += n
                    by_type, by_kind = c["by_type"], c["by_kind"]
                    by_type[type_] = by_type.get(type_, 0) + n
                    by_kind[kind] = by_kind.get(kind, 0) + n
        recent: list[dict[str, Any]] = doc["recent"]
        newest = rows if len(rows) <= RECENT else sorted(rows, key=_row_descending)[:RECENT]
        if len(recent) < RECENT or max(map(_row_order, newest)) > _order(recent[-1]):
            merged = sorted([*recent, *map(_item, newest)], key=_descending)[:RECENT]
            recent[:] = merged
            self._ids = {(e["source"], e["id"]) for e in merged}
        for row in rows:
            if row[9] is not None:
                self._partnered(_item(row), row[9])
        return len(rows)

    def _partnered(self, item: dict[str, Any], partners: Mapping[str, str]) -> None:
        """An agreement ``item`` (a latest-events entry) naming ``partners`` (id → name)."""
        doc = self.doc
        known = doc["partners"]
        for pid, pname in partners.items():
            entry = known.get(pid)
            if entry is None:
                known[pid] = {"name": pname, "count": 1}
            else:
                entry["name"] = pname
                entry["count"] += 1
        latest = doc["latest_agreement"]
        if latest is None or _order(item) > _order(latest):
            doc["latest_agreement"] = {**item, "partners": sorted(partners)}

    # --- views: what the API answers ---------------------------------------------------

    def activity(self, window: Window, now_ms: int) -> dict[str, Any]:
        """``{"window", "start", "end", "total", "by_type", "by_kind"}``: all-time counts
        (``start``/``end`` None) or those of the current day or week (UTC) at ``now_ms``."""
        if window == "all":
            return {"window": "all", "start": None, "end": None, **self.doc["all"]}
        start = window_start(now_ms, window)
        counts = self.doc[window].get(str(start), _counts())
        length = DAY_MS if window == "day" else WEEK_MS
        return {"window": window, "start": start, "end": start + length, **counts}

    def partners(self) -> list[dict[str, Any]]:
        """Partners, most agreements first then by id: ``[{"id", "name", "count"}]``."""
        rows = [{"id": pid, **entry} for pid, entry in self.doc["partners"].items()]
        return sorted(rows, key=lambda r: (-r["count"], r["id"]))

    def events(self) -> list[dict[str, Any]]:
        """The latest events, newest first: ``[{"id", "source", "type", "kind", "title", "time", "ts"}]``."""
        return [{k: e[k] for k in ("id", "source", "type", "kind", "title", "time", "ts")}
                for e in self.doc["recent"]]
