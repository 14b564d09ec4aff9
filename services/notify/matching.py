"""Which subscriptions want an enriched event, and why (pure: no I/O).

``match(event, filter)`` returns the provenance — one entry per filter field,
saying which value matched which field or resolved organization — or ``None``
when the event does not match. Every given filter field must match; an empty
filter matches everything. Organization names are compared after NFKC
normalisation, case folding and whitespace collapsing, so "ＡＮＴＩＮＧ  town
government" finds "Anting Town Government" and "安亭镇人民政府" its record.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from shared.events import AnyEnrichedEvent
from shared.subscriptions import Filter

Reason = dict[str, Any]
_SPACE = re.compile(r"\s+")


def norm(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a name."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _organizations(event: AnyEnrichedEvent, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    for i, mention in enumerate(event.data.organizations):
        field = f"data.organizations[{i}]"
        org = mention.resolved
        if org is not None:
            candidates = [("id", org.id), ("name", org.name)]
            candidates += [(f"names.{lang}", n) for lang, n in org.names.items()]
            candidates += [("alias", a) for a in org.aliases]
            for how, value in candidates:
                if norm(value) in want:
                    found.append({
                        "filter": "organizations", "value": want[norm(value)], "field": field,
                        "organization": org.id, "matched_on": how, "mentioned_as": mention.name,
                    })
                    break
        elif norm(mention.name) in want:
            # an unresolved mention still matches its own spelling
            found.append({
                "filter": "organizations", "value": want[norm(mention.name)], "field": field,
                "organization": None, "matched_on": "mention", "mentioned_as": mention.name,
            })
    return found


def _sectors(event: AnyEnrichedEvent, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    for s in getattr(event.data, "sectors", []) or []:
        if norm(s) in want:
            found.append({"filter": "sectors", "value": want[norm(s)], "field": "data.sectors"})
    for i, mention in enumerate(event.data.organizations):
        if mention.resolved is None:
            continue
        for s in mention.resolved.sectors:
            if norm(s) in want:
                found.append({
                    "filter": "sectors", "value": want[norm(s)],
                    "field": f"data.organizations[{i}].resolved.sectors",
                    "organization": mention.resolved.id,
                })
    return found


def _cities(event: AnyEnrichedEvent, wanted: list[str]) -> list[Reason]:
    want = {norm(w): w for w in wanted}
    found: list[Reason] = []
    loc = event.data.location
    if loc is not None:
        for name in ("city", "district", "town"):
            value = getattr(loc, name)
            if value and norm(value) in want:
                found.append({"filter": "cities", "value": want[norm(value)], "field": f"data.location.{name}"})
    for i, mention in enumerate(event.data.organizations):
        org = mention.resolved
        if org is not None and org.city and norm(org.city) in want:
            found.append({
                "filter": "cities", "value": want[norm(org.city)],
                "field": f"data.organizations[{i}].resolved.city", "organization": org.id,
            })
    return found


def match(event: AnyEnrichedEvent, flt: Filter) -> list[Reason] | None:
    """The reasons the event matches the filter, or ``None`` if some given field does not."""
    reasons: list[Reason] = []
    if flt.types:
        if event.type not in flt.types:
            return None
        reasons.append({"filter": "types", "value": event.type, "field": "type"})
    if flt.kinds:
        kind = getattr(event.data, "kind", None)
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
