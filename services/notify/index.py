"""An index of subscriptions by what their filters name (pure: no I/O).

Matching every event against every subscription costs one :func:`match` per
subscription, however few could want the event. The index files each subscription
under the values of ONE field its filter names, so that an event is checked only
against the subscriptions filed under a value the event carries (its *candidates*),
plus those whose filter names nothing (the catch-all, which match every event).

Why one field is enough: a filter matches only if every field it names matches, and a
field matches only if one of its values equals (after normalisation) one of the
event's values for that field. So a subscription that matches the event has at least
one value of its chosen field among the event's keys for that field, and is found in
that bucket. The candidates are a superset of the matches; :func:`match` then checks
the rest of the filter, and its reasons are returned unchanged.

Why not a counting matcher (Siena/Elvin style, every constraint indexed and the hits
counted per subscription): it pays for every field of every filter on every put and
for every field's hits on every event. Filters here are conjunctions over at most
five fields, and checking a candidate with :func:`match` is cheap once the field
most likely to reject it has already been used to find it.

The event keys mirror :func:`match` exactly (``services.notify.matching``):

- ``organizations``: for a resolved mention, the record's id, name, every
  ``names.*`` and every alias; for an unresolved mention, its own name; normalised
  with :func:`norm`. A resolved mention's own spelling is not a key: :func:`match`
  does not compare it either.
- ``cities``: ``data.location``'s city, district and town, and each resolved
  record's city (non-empty ones), normalised.
- ``sectors``: ``data.sectors`` and each resolved record's sectors, normalised.
- ``kinds``: an announcement's ``data.kind`` (``"other"`` when absent), compared as
  is; an agreement has no kind, hence no key.
- ``types``: the event's ``type``, compared as is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from services.notify.matching import Event, Reason, match, norm
from shared.events import ANNOUNCEMENT
from shared.subscriptions import Filter, Subscription

IndexedField = Literal["organizations", "cities", "sectors", "kinds", "types"]

#: The fields a subscription can be filed under, most selective first; a filter is
#: filed under the first of them it names. The order follows how many events share
#: one value of the field, i.e. how many candidates one bucket hands to ``match``:
#: an organization (id, name or alias) appears in few events — the catalog holds
#: thousands and an event names a handful; a city or district in more (tens to
#: hundreds of places); a sector in more still (tens, some as broad as "automotive",
#: and a resolved record brings its own); a kind is one of nine values and every
#: announcement has one; a type is one of two, so its bucket holds about half of all
#: events. The order is fixed rather than learnt from bucket sizes, so that where a
#: subscription goes depends only on its own filter: put and remove never move
#: another subscription.
SELECTIVITY: tuple[IndexedField, ...] = ("organizations", "cities", "sectors", "kinds", "types")


def filter_keys(flt: Filter) -> tuple[IndexedField, frozenset[str]] | None:
    """The field a filter is filed under and its keys, or ``None`` for a filter that
    names no field (it matches every event: the catch-all).

    Names, sectors and places are keyed by :func:`norm` of each value, as :func:`match`
    compares them; kinds and types by the value itself. O(number of values of the field).
    """
    if flt.organizations:
        return "organizations", frozenset(norm(v) for v in flt.organizations)
    if flt.cities:
        return "cities", frozenset(norm(v) for v in flt.cities)
    if flt.sectors:
        return "sectors", frozenset(norm(v) for v in flt.sectors)
    if flt.kinds:
        return "kinds", frozenset(k.value for k in flt.kinds)
    if flt.types:
        return "types", frozenset(flt.types)
    return None


def event_keys(event: Event, field: IndexedField) -> set[str]:
    """The keys an event offers for one field (see the module's docstring for each).

    ``event`` is a decoded enriched CloudEvent that passed ``decode``'s contract check.
    O(number of names the event carries for that field).
    """
    data = event["data"]
    mentions = data.get("organizations") or []
    keys: set[str] = set()
    if field == "organizations":
        for mention in mentions:
            org = mention.get("resolved")
            if org is None:
                keys.add(norm(mention["name"]))
                continue
            keys.add(norm(org["id"]))
            keys.add(norm(org["name"]))
            keys.update(norm(n) for n in (org.get("names") or {}).values())
            keys.update(norm(a) for a in org.get("aliases") or ())
    elif field == "cities":
        loc = data.get("location")
        if loc is not None:
            keys.update(norm(loc[p]) for p in ("city", "district", "town") if loc.get(p))
        for mention in mentions:
            org = mention.get("resolved")
            if org is not None and org.get("city"):
                keys.add(norm(org["city"]))
    elif field == "sectors":
        keys.update(norm(s) for s in data.get("sectors") or ())
        for mention in mentions:
            org = mention.get("resolved")
            if org is not None:
                keys.update(norm(s) for s in org.get("sectors") or ())
    elif field == "kinds":
        if event["type"] == ANNOUNCEMENT:
            kind = data.get("kind", "other")  # the model's default, as match() reads it
            if isinstance(kind, str):
                keys.add(kind)
    else:
        keys.add(event["type"])
    return keys


@dataclass(frozen=True, slots=True)
class _Entry:
    sub: Subscription
    seq: int  # when it was last put: the order candidates come in
    placed: tuple[IndexedField, frozenset[str]] | None  # where it is filed; None: catch-all


def _seq(entry: _Entry) -> int:
    return entry.seq


class SubscriptionIndex:
    """Subscriptions filed by the most selective field their filter names.

    Feed it every write of the subscription store, in the store's order: :meth:`put`
    for each record (new, changed, disabled or enabled again) and :meth:`remove` for
    each tombstone. It holds disabled subscriptions too (so it mirrors the store and
    ``len`` counts them) but never offers them as candidates: the caller need not
    filter them out.

    Order: :meth:`candidates` and :meth:`matches` list subscriptions in the order of
    their last :meth:`put`, oldest first — the order of the store's compacted view
    (``CompactedView.items``, "in order of last write"), so a caller looping over the
    matches sees what a loop over ``store.active()`` saw. (A store write that assigns
    ``items[id]`` in place keeps the old position until its record is read back; the
    index moves it at once. Only the order in which deliveries start can differ.)

    Costs, with k the number of values in the filed field of the filter:
    :meth:`put` and :meth:`remove` are O(k) (plus :func:`norm`, cached), never a
    rebuild; :meth:`candidates` is O(e + c log c) for e keys of the event and c
    candidates (each bucket is kept in put order, so the sort merges sorted runs);
    :meth:`matches` adds one :func:`match` per candidate. Not thread-safe: one event
    loop reads and writes it.
    """

    def __init__(self, subs: Iterable[Subscription] = ()) -> None:
        """An index holding ``subs``, put in the order given."""
        self._entries: dict[str, _Entry] = {}
        # field -> key -> {subscription id: entry}; a dict per key keeps put order and
        # makes removing one subscription O(1) per key
        self._buckets: dict[IndexedField, dict[str, dict[str, _Entry]]] = {f: {} for f in SELECTIVITY}
        self._catch_all: dict[str, _Entry] = {}
        self._next_seq = 0
        for sub in subs:
            self.put(sub)

    def __len__(self) -> int:
        """How many subscriptions it holds, disabled ones included."""
        return len(self._entries)

    def __contains__(self, sub_id: object) -> bool:
        return sub_id in self._entries

    def put(self, sub: Subscription) -> None:
        """Add ``sub``, or replace the subscription of its id (its old filing is removed
        first, so a changed filter leaves its old buckets). It moves to the end of the
        order, as a write moves it in the store. A disabled subscription is held but
        filed nowhere. O(k_old + k_new)."""
        self.remove(sub.id)
        placed = filter_keys(sub.filter)
        entry = _Entry(sub, self._next_seq, placed)
        self._next_seq += 1
        self._entries[sub.id] = entry
        if sub.disabled:
            return
        if placed is None:
            self._catch_all[sub.id] = entry
            return
        field, keys = placed
        buckets = self._buckets[field]
        for key in keys:
            buckets.setdefault(key, {})[sub.id] = entry

    def remove(self, sub_id: str) -> None:
        """Forget the subscription of that id (nothing happens if there is none). O(k)."""
        entry = self._entries.pop(sub_id, None)
        if entry is None or entry.sub.disabled:
            return
        if entry.placed is None:
            del self._catch_all[sub_id]
            return
        field, keys = entry.placed
        buckets = self._buckets[field]
        for key in keys:
            bucket = buckets[key]
            del bucket[sub_id]
            if not bucket:  # no empty buckets left behind: the index stays O(live filters)
                del buckets[key]

    def candidates(self, event: Event) -> list[Subscription]:
        """The enabled subscriptions that may match ``event``, each once, in put order:
        every one that :func:`match` accepts is among them (the converse need not hold).

        ``event`` is a decoded enriched event (``matching.decode``). The list is new:
        the caller may change the index while going through it.
        """
        found: dict[str, _Entry] = dict(self._catch_all)
        for field in SELECTIVITY:
            buckets = self._buckets[field]
            if not buckets:  # nobody filed here: skip computing the event's keys
                continue
            for key in event_keys(event, field):
                bucket = buckets.get(key)
                if bucket is not None:
                    found.update(bucket)  # keyed by id: a subscription under two keys comes once
        return [e.sub for e in sorted(found.values(), key=_seq)]

    def matches(self, event: Event) -> list[tuple[Subscription, list[Reason]]]:
        """The enabled subscriptions ``event`` matches, with :func:`match`'s reasons, in
        put order: the same pairs as running :func:`match` over every enabled
        subscription in the store's order, for the cost of :meth:`candidates` plus one
        :func:`match` per candidate."""
        out: list[tuple[Subscription, list[Reason]]] = []
        for sub in self.candidates(event):
            reasons = match(event, sub.filter)
            if reasons is not None:
                out.append((sub, reasons))
        return out


__all__ = ["SELECTIVITY", "IndexedField", "SubscriptionIndex", "event_keys", "filter_keys"]
