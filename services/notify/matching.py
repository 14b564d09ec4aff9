"""Which subscriptions want an enriched event, and why (pure: no I/O).

``match(event, filter)`` returns the provenance — one entry per filter field,
saying which value matched which field or resolved organization — or ``None``
when the event does not match. Every given filter field must match; an empty
filter matches everything. Organization names are compared after NFKC
normalisation, case folding and whitespace collapsing, so "ＡＮＴＩＮＧ  town
government" finds "Anting Town Government" and "安亭镇人民政府" its record.

Events are matched as the JSON objects they arrive as (:func:`decode`): notify
forwards them unchanged, so building the full pydantic model of every event only
to read a handful of fields cost more than all of matching (about a sixth of the
service's CPU). :func:`decode` checks the shape of everything notify reads — a
CloudEvent of a known type with an ``enrichment`` block, and the types of every
field matching looks at — and refuses the rest, which then goes to
``dead-letters`` as before.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

import orjson

from shared.events import ANNOUNCEMENT, EVENT_TYPES, AnnouncementKind
from shared.subscriptions import Filter

Reason = dict[str, Any]
Event = dict[str, Any]  # an enriched CloudEvent as decoded JSON
_SPACE = re.compile(r"\s+")
_KINDS = frozenset(k.value for k in AnnouncementKind)


class InvalidEvent(ValueError):
    """The record is not an enriched event notify can match."""


# The checks take the field's path as a %-format and its arguments, formatted only when
# a check fails: building every path of every organization up front cost more than the
# checks themselves.
def _str(value: Any, where: str, *args: Any, optional: bool = False, empty: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or (not empty and not value):
        raise InvalidEvent(f"{where % args}: expected a {'non-empty ' if not empty else ''}string")


def _strs(value: Any, where: str, *args: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidEvent(f"{where % args}: expected a list of strings")


def _obj(value: Any, where: str, *args: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict):
        raise InvalidEvent(f"{where % args}: expected an object")


def _strings(value: Any) -> bool:
    return value is None or (type(value) is list and all(type(v) is str for v in value))


def _well_formed(ev: Any) -> bool:
    """Every check of :func:`_check` at once, as one boolean: no helper calls and no
    field paths, about a third of the checks' cost. Stricter where it is cheaper
    (exact types, as orjson makes them), so ``True`` always means the precise checks
    pass; anything else is left to them, which say what is wrong."""
    if type(ev) is not dict or ev.get("specversion") != "1.0":
        return False
    id_, source, type_, data = ev.get("id"), ev.get("source"), ev.get("type"), ev.get("data")
    if not (type(id_) is str and id_ and type(source) is str and source and type_ in EVENT_TYPES
            and type(data) is dict and type(data.get("enrichment")) is dict):
        return False
    if type_ == ANNOUNCEMENT:
        kind = data.get("kind", "other")
        if type(kind) is not str or kind not in _KINDS:
            return False
    if not _strings(data.get("sectors")):
        return False
    loc = data.get("location")
    if loc is not None:
        if type(loc) is not dict:
            return False
        for name in ("city", "district", "town"):
            v = loc.get(name)
            if v is not None and type(v) is not str:
                return False
    orgs = data.get("organizations")
    if orgs is None:
        return True
    if type(orgs) is not list:
        return False
    for mention in orgs:
        if type(mention) is not dict:
            return False
        mentioned = mention.get("name")
        if type(mentioned) is not str or not mentioned:
            return False
        org = mention.get("resolved")
        if org is None:
            continue
        if type(org) is not dict:
            return False
        oid, oname, names, city = org.get("id"), org.get("name"), org.get("names"), org.get("city")
        if not (type(oid) is str and oid and type(oname) is str and oname
                and (city is None or type(city) is str)
                and _strings(org.get("aliases")) and _strings(org.get("sectors"))):
            return False
        if names is not None and (type(names) is not dict or not all(type(v) is str for v in names.values())):
            return False
    return True


def decode(raw: bytes | str) -> Event:
    """The enriched event as a JSON object, its shape checked where notify reads it."""
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from exc
    if not _well_formed(ev):
        _check(ev)  # raises, naming the field (or accepts what the fast check was too strict for)
    return ev  # type: ignore[no-any-return]


def _check(ev: Any) -> None:
    """The shape checks, each naming the field it refuses."""
    _obj(ev, "event")
    if ev.get("specversion") != "1.0":
        raise InvalidEvent("specversion: expected '1.0'")
    _str(ev.get("id"), "id", empty=False)
    _str(ev.get("source"), "source", empty=False)
    if ev.get("type") not in EVENT_TYPES:
        raise InvalidEvent(f"type: expected one of {', '.join(EVENT_TYPES)}")
    data = ev.get("data")
    _obj(data, "data")
    _obj(data.get("enrichment"), "data.enrichment")
    kind = data.get("kind", "other")
    if ev["type"] == ANNOUNCEMENT and (not isinstance(kind, str) or kind not in _KINDS):
        raise InvalidEvent("data.kind: not a known announcement kind")
    _strs(data.get("sectors"), "data.sectors")
    loc = data.get("location")
    _obj(loc, "data.location", optional=True)
    if loc is not None:
        for name in ("city", "district", "town"):
            _str(loc.get(name), "data.location.%s", name, optional=True)
    orgs = data.get("organizations")
    if orgs is not None and not isinstance(orgs, list):
        raise InvalidEvent("data.organizations: expected a list")
    for i, mention in enumerate(orgs or ()):
        _obj(mention, "data.organizations[%d]", i)
        _str(mention.get("name"), "data.organizations[%d].name", i, empty=False)
        org = mention.get("resolved")
        _obj(org, "data.organizations[%d].resolved", i, optional=True)
        if org is not None:
            _str(org.get("id"), "data.organizations[%d].resolved.id", i, empty=False)
            _str(org.get("name"), "data.organizations[%d].resolved.name", i, empty=False)
            names = org.get("names")
            _obj(names, "data.organizations[%d].resolved.names", i, optional=True)
            if names:
                _strs(list(names.values()), "data.organizations[%d].resolved.names", i)
            _strs(org.get("aliases"), "data.organizations[%d].resolved.aliases", i)
            _strs(org.get("sectors"), "data.organizations[%d].resolved.sectors", i)
            _str(org.get("city"), "data.organizations[%d].resolved.city", i, optional=True)


@lru_cache(maxsize=65536)
def norm(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a name (names repeat: cached)."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _mentions(event: Event) -> list[dict[str, Any]]:
    return event["data"].get("organizations") or []


def _organizations(event: Event, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    for i, mention in enumerate(_mentions(event)):
        field = f"data.organizations[{i}]"
        org = mention.get("resolved")
        if org is not None:
            candidates = [("id", org["id"]), ("name", org["name"])]
            candidates += [(f"names.{lang}", n) for lang, n in (org.get("names") or {}).items()]
            candidates += [("alias", a) for a in org.get("aliases") or ()]
            for how, value in candidates:
                if norm(value) in want:
                    found.append({
                        "filter": "organizations", "value": want[norm(value)], "field": field,
                        "organization": org["id"], "matched_on": how, "mentioned_as": mention["name"],
                    })
                    break
        elif norm(mention["name"]) in want:
            # an unresolved mention still matches its own spelling
            found.append({
                "filter": "organizations", "value": want[norm(mention["name"])], "field": field,
                "organization": None, "matched_on": "mention", "mentioned_as": mention["name"],
            })
    return found


def _sectors(event: Event, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    for s in event["data"].get("sectors") or ():
        if norm(s) in want:
            found.append({"filter": "sectors", "value": want[norm(s)], "field": "data.sectors"})
    for i, mention in enumerate(_mentions(event)):
        org = mention.get("resolved")
        if org is None:
            continue
        for s in org.get("sectors") or ():
            if norm(s) in want:
                found.append({
                    "filter": "sectors", "value": want[norm(s)],
                    "field": f"data.organizations[{i}].resolved.sectors",
                    "organization": org["id"],
                })
    return found


def _cities(event: Event, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    loc = event["data"].get("location")
    if loc is not None:
        for name in ("city", "district", "town"):
            value = loc.get(name)
            if value and norm(value) in want:
                found.append({"filter": "cities", "value": want[norm(value)], "field": f"data.location.{name}"})
    for i, mention in enumerate(_mentions(event)):
        org = mention.get("resolved")
        city = org.get("city") if org is not None else None
        if city and norm(city) in want:
            found.append({
                "filter": "cities", "value": want[norm(city)],
                "field": f"data.organizations[{i}].resolved.city", "organization": org["id"],  # type: ignore[index]
            })
    return found


def match(event: Event, flt: Filter) -> list[Reason] | None:
    """The reasons the event matches the filter, or ``None`` if some given field does not."""
    reasons: list[Reason] = []
    if flt.types:
        if event["type"] not in flt.types:
            return None
        reasons.append({"filter": "types", "value": event["type"], "field": "type"})
    if flt.kinds:
        # an announcement without a kind is "other" (the model's default); agreements have none
        kind = event["data"].get("kind", "other") if event["type"] == ANNOUNCEMENT else None
        if kind is None or kind not in flt.kinds:
            return None
        reasons.append({"filter": "kinds", "value": str(kind), "field": "data.kind"})
    for wanted, find in ((flt.organizations, _organizations), (flt.sectors, _sectors), (flt.cities, _cities)):
        if wanted:
            found = find(event, wanted)
            if not found:
                return None
            reasons.extend(found)
    if not reasons:
        reasons.append({"filter": "all", "value": None, "field": None})
    return reasons


def describe(reasons: list[Reason]) -> str:
    """One readable line of provenance, e.g. for an email or the CloudEvent ``reason`` attribute."""
    parts = []
    for r in reasons:
        if r["filter"] == "organizations":
            target = r["organization"] or "(unresolved)"
            parts.append(f"organizations: {r['value']!r} -> {target} ({r['matched_on']}, {r['field']})")
        elif r["filter"] == "all":
            parts.append("no filter: every event")
        else:
            parts.append(f"{r['filter']}: {r['value']!r} at {r['field']}")
    return "; ".join(parts)
