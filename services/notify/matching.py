"""Which subscriptions want an enriched event, and why (pure: no I/O).

``match(event, filter)`` returns the provenance — one entry per filter field,
saying which value matched which field or resolved organization — or ``None``
when the event does not match. Every given filter field must match; an empty
filter matches everything. Organization names are compared after NFKC
normalisation, case folding and whitespace collapsing, so "ＡＮＴＩＮＧ  town
government" finds "Anting Town Government" and "安亭镇人民政府" its record.

Events are matched as the JSON objects they arrive as (:func:`decode`), checked by the
contract's own models (``shared.events.read_enriched``, the check ingest and enrich use,
giving the object): what notify refuses goes to ``dead-letters``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from shared.events import ANNOUNCEMENT, error_paths, read_enriched
from shared.subscriptions import Filter

Reason = dict[str, Any]
Event = dict[str, Any]  # an enriched CloudEvent as decoded JSON
_SPACE = re.compile(r"\s+")


class InvalidEvent(ValueError):
    """The record is not an enriched event of the contract (``shared.events``)."""


def decode(raw: bytes | str) -> Event:
    """The enriched event as a JSON object, checked against the contract, for matching.

    The check is ``shared.events.read_enriched``: the models ingest and enrich use, in
    their typed-dict form, so notify refuses exactly what the contract refuses (raises
    :class:`InvalidEvent` naming the first field) and reads the object from the same pass.
    Times in it are ``datetime``s: notify forwards the record's bytes, never this object
    encoded again.
    """
    try:
        ev = read_enriched(raw)
    except ValidationError as exc:
        errors = error_paths(exc)
        first = errors[0] if errors else {"path": "$", "message": str(exc)}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise InvalidEvent(f"{first['path']}: {first['message']}{more}") from None
    return ev


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


__all__ = ["Event", "InvalidEvent", "Reason", "decode", "match", "norm"]
