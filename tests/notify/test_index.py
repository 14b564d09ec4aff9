"""The subscription index gives what matching every subscription gives: the same
subscriptions, in the same order, with the same reasons, whatever the filters, the
events and the history of puts, replacements and removals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.notify.index import SELECTIVITY, SubscriptionIndex, event_keys, filter_keys
from services.notify.matching import Event, Reason, decode, match
from shared.events import EVENT_TYPES, AnnouncementKind, dump_event
from shared.organizations import Organization, OrganizationKind
from shared.subscriptions import Filter, LogChannel, Subscription

from .helpers import ACME, ALLIANCE, ANTING_TOWN, agreement, announcement

CREATED = datetime(2024, 5, 1, tzinfo=UTC)

# --- a small shared vocabulary, so that filters and events meet -----------------------

ORG_IDS = ["anting-town-government", "shanghai-metaverse-alliance", "acme-vr", "saic-motor", "tongji-university"]
# "Anting" is a name and a place, "Automotive" a name and a sector: a value of one field
# must not find subscriptions filed under another
ORG_NAMES = ["Anting Town Government", "安亭镇人民政府", "Anting Town", "SMIIA", "ACME VR Ltd",
             "SAIC Motor", "上汽集团", "Tongji University", "同济大学", "Anting", "Automotive"]
SECTORS = ["public administration", "metaverse", "virtual reality", "Automotive", "EV", "auto  parts"]
CITIES = ["Shanghai", "Hangzhou", "Anting", "Jiading", "上海"]


def _fullwidth(text: str) -> str:
    """ASCII as its full-width forms (NFKC maps them back), spaces as ideographic spaces."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@st.composite
def variant(draw: st.DrawFn, base: str, *, tabs: bool = False) -> str:
    """``base`` as someone may type it: another case, full width, other spacing."""
    cases: list[Callable[[str], str]] = [str, str.upper, str.lower, str.title, str.swapcase]
    text = draw(st.sampled_from(cases))(base)
    if draw(st.booleans()):
        text = _fullwidth(text)
    spaces = ["  ", " \u3000 ", "\u3000"] + (["\t"] if tabs else [])
    if " " in text and draw(st.booleans()):
        text = text.replace(" ", draw(st.sampled_from(spaces)))
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\u3000"])) + text + draw(st.sampled_from(["", "  "]))
    return text


def vocab(words: list[str], *, tabs: bool = False) -> st.SearchStrategy[str]:
    return st.sampled_from(words).flatmap(lambda w: variant(w, tabs=tabs))


noise = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=8).filter(
    lambda s: not s.isspace())
org_names = vocab(ORG_NAMES)
sectors = vocab(SECTORS)
cities = vocab(CITIES)

organizations = st.builds(
    Organization,
    id=st.sampled_from(ORG_IDS),
    name=org_names,
    names=st.dictionaries(st.sampled_from(["en", "zh", "de"]), org_names, max_size=2),
    aliases=st.lists(org_names, max_size=2),
    kind=st.just(OrganizationKind.enterprise),
    sectors=st.lists(sectors, max_size=2),
    city=st.none() | cities | st.sampled_from(["", " "]),
) | st.sampled_from([ANTING_TOWN, ALLIANCE, ACME])


@st.composite
def mention(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(org_names | noise)
    org = draw(st.none() | organizations)
    if org is None:
        return {"name": name}
    # the record as enrich embeds it, sometimes without its empty fields
    record = org.model_dump(mode="json", exclude_defaults=draw(st.booleans()))
    return {"name": name, "resolved": record, "match": {"method": "exact", "score": 100.0}}


@st.composite
def enriched_events(draw: st.DrawFn) -> Event:
    """A decoded enriched event naming resolved and unresolved organizations from the
    vocabulary, with places and sectors from it; checked by the contract (``decode``)."""
    kind = draw(st.sampled_from(EVENT_TYPES))
    mentions = draw(st.lists(mention(), max_size=4))
    data: dict[str, Any] = {}
    empty_list = draw(st.booleans())
    if mentions or empty_list:  # an empty list, or no member at all
        data["organizations"] = mentions
    data["headline" if kind == "conference.announcement" else "title"] = "Something happened"
    if kind == "conference.announcement" and draw(st.booleans()):
        data["kind"] = draw(st.sampled_from([k.value for k in AnnouncementKind]))
    if draw(st.booleans()):
        place = cities | st.sampled_from(["", " "]) | noise
        data["location"] = draw(st.fixed_dictionaries({}, optional={"city": place, "district": place, "town": place}))
    if draw(st.booleans()):  # agreements carry sectors; an announcement may as an extra field
        data["sectors"] = draw(st.lists(sectors, max_size=3))
    data["enrichment"] = {
        "resolved": [m["resolved"]["id"] for m in mentions if "resolved" in m],
        "unresolved": [m["name"] for m in mentions if "resolved" not in m],
        "catalog_version": "test", "enriched_at": "2024-05-01T10:00:00Z",
    }
    ev = {"specversion": "1.0", "id": "ev-1", "source": "/test", "type": kind, "data": data}
    return decode(orjson.dumps(ev))


def some(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Half the time not named at all; otherwise one to three values."""
    return st.just([]) | st.lists(values, min_size=1, max_size=3)


filters = st.builds(
    Filter,
    types=some(st.sampled_from(EVENT_TYPES)),
    kinds=some(st.sampled_from(list(AnnouncementKind))),
    organizations=some(vocab(ORG_NAMES + ORG_IDS, tabs=True) | st.sampled_from([" ", "Nobody"])),
    sectors=some(vocab(SECTORS, tabs=True)),
    cities=some(vocab(CITIES, tabs=True) | st.just(" ")),
)
disabled = st.integers(0, 4).map(lambda n: n == 0)  # one in five


def subscription(sub_id: str, flt: Filter, off: bool = False) -> Subscription:
    return Subscription(id=sub_id, name=sub_id, filter=flt, channel=LogChannel(type="log"),
                        created_at=CREATED, disabled=off)


def naive(store: dict[str, Subscription], ev: Event) -> list[tuple[str, list[Reason]]]:
    """What notify did without an index: match() over every enabled subscription, in the store's order."""
    out = []
    for sub in store.values():
        if not sub.disabled and (reasons := match(ev, sub.filter)) is not None:
            out.append((sub.id, reasons))
    return out


def indexed(index: SubscriptionIndex, ev: Event) -> list[tuple[str, list[Reason]]]:
    return [(sub.id, reasons) for sub, reasons in index.matches(ev)]


def flt(**kw: object) -> Filter:
    return Filter.model_validate_json(orjson.dumps(kw))


def as_json(ev: Any) -> Event:
    return decode(dump_event(ev))


# --- properties ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 10**6), filters, disabled), max_size=30, unique_by=lambda t: t[0]),
       st.lists(enriched_events(), min_size=1, max_size=4))
def test_index_matches_what_matching_every_subscription_matches(
        drawn: list[tuple[int, Filter, bool]], events: list[Event]) -> None:
    """Same subscriptions, same order (the order they were put in, not their ids'), same reasons."""
    store = {f"sub-{n}": subscription(f"sub-{n}", f, off) for n, f, off in drawn}
    index = SubscriptionIndex(store.values())
    assert len(index) == len(store)
    for ev in events:
        expected = naive(store, ev)
        assert indexed(index, ev) == expected
        # and each match was found through a key of the one field its filter is filed under
        for sub_id, _ in expected:
            placed = filter_keys(store[sub_id].filter)
            assert placed is None or placed[1] & event_keys(ev, placed[0])
        event(f"matches: {min(len(expected), 3)}{'+' if len(expected) >= 3 else ''}")


POOL = [f"s{i}" for i in range(8)]
operations = st.lists(
    st.tuples(st.just("put"), st.sampled_from(POOL), filters, disabled)
    | st.tuples(st.just("remove"), st.sampled_from(POOL), st.none(), st.just(False)),
    max_size=40,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations, st.lists(enriched_events(), min_size=1, max_size=3))
def test_index_follows_puts_replacements_and_removals(
        ops: list[tuple[str, str, Filter | None, bool]], events: list[Event]) -> None:
    """After every write, the index agrees with a store that applies the same writes
    (a write moves the subscription to the end, as the compacted view orders them)."""
    store: dict[str, Subscription] = {}
    index = SubscriptionIndex()
    for op, sub_id, f, off in ops:
        store.pop(sub_id, None)
        if op == "put":
            assert f is not None
            store[sub_id] = subscription(sub_id, f, off)
            index.put(store[sub_id])
        else:
            index.remove(sub_id)
        assert len(index) == len(store)
        for ev in events:
            assert indexed(index, ev) == naive(store, ev)
    for sub_id in POOL:
        index.remove(sub_id)
    # nothing left behind: no subscription and no bucket, however it got there
    assert len(index) == 0
    assert not index._catch_all and not any(index._buckets.values())
    assert all(index.candidates(ev) == [] for ev in events)


# --- examples --------------------------------------------------------------------------


def test_an_empty_filter_is_a_candidate_for_every_event() -> None:
    """A filter naming nothing is in the catch-all: offered for any event, matched as "all"."""
    index = SubscriptionIndex([subscription("all", Filter()), subscription("acme", flt(organizations=["acme-vr"]))])
    ev = as_json(agreement([ANTING_TOWN]))
    assert [s.id for s in index.candidates(ev)] == ["all"]
    assert indexed(index, ev) == [("all", [{"filter": "all", "value": None, "field": None}])]


def test_a_filter_naming_two_fields_is_filed_under_the_more_selective() -> None:
    """Filed under its organizations only: an event with the city but another
    organization is not even a candidate; one with the organization but another city is
    a candidate that match() rejects."""
    both = flt(organizations=["SMIIA"], cities=["shanghai"])
    assert filter_keys(both) == ("organizations", frozenset({"smiia"}))
    index = SubscriptionIndex([subscription("both", both)])
    city_only = as_json(announcement([ANTING_TOWN], city="Shanghai"))  # Anting Town is in Shanghai too
    assert index.candidates(city_only) == []
    org_elsewhere = as_json(announcement([ALLIANCE], city="Hangzhou"))
    assert [s.id for s in index.candidates(org_elsewhere)] == ["both"]
    assert index.matches(as_json(announcement([ACME, ALLIANCE], city="Hangzhou"))) != []  # the alliance's own city
    no_city = as_json(agreement([ALLIANCE]))
    no_city["data"]["organizations"][0]["resolved"]["city"] = "Suzhou"
    assert [s.id for s in index.candidates(no_city)] == ["both"] and index.matches(no_city) == []


def test_a_replaced_filter_leaves_its_old_bucket() -> None:
    """Putting a subscription again with another filter refiles it; the old keys find nothing."""
    index = SubscriptionIndex([subscription("s", flt(organizations=["ACME VR Ltd"]))])
    acme, alliance = as_json(agreement([ACME])), as_json(agreement([ALLIANCE]))
    assert [s.id for s in index.candidates(acme)] == ["s"]
    index.put(subscription("s", flt(organizations=["SMIIA"])))
    assert index.candidates(acme) == [] and [s.id for s in index.candidates(alliance)] == ["s"]
    index.put(subscription("s", flt(kinds=["forum"])))  # to another field altogether
    assert index.candidates(alliance) == []
    assert [s.id for s in index.candidates(as_json(announcement([ACME])))] == ["s"]
    assert len(index) == 1
    index.remove("s")
    index.remove("s")  # removing what is not there is nothing
    assert len(index) == 0 and "s" not in index


def test_names_are_compared_normalised() -> None:
    """Width, case and spacing do not matter for names, sectors and places."""
    index = SubscriptionIndex([
        subscription("wide", flt(organizations=["ＡＮＴＩＮＧ  town government"])),
        subscription("zh", flt(organizations=["安亭镇人民政府"])),
        subscription("sector", flt(sectors=["PUBLIC\u3000Administration"])),
        subscription("city", flt(cities=[" shanghai "])),
    ])
    ev = as_json(agreement([ACME, ANTING_TOWN], names=["ACME", "Anting town govt"]))
    assert [s.id for s, _ in index.matches(ev)] == ["wide", "zh", "sector", "city"]
    wide = index.matches(ev)[0][1]
    assert wide == [{"filter": "organizations", "value": "ＡＮＴＩＮＧ  town government",
                     "field": "data.organizations[1]", "organization": "anting-town-government",
                     "matched_on": "name", "mentioned_as": "Anting town govt"}]


def test_kinds_and_types_are_exact_and_agreements_have_no_kind() -> None:
    """A kinds filter is never a candidate for an agreement; an announcement without a kind is "other"."""
    index = SubscriptionIndex([
        subscription("other", flt(kinds=["other"])),
        subscription("agreements", flt(types=["agreement.signed"])),
    ])
    assert [s.id for s in index.candidates(as_json(agreement([ACME])))] == ["agreements"]
    ann = as_json(announcement([ACME]))
    del ann["data"]["kind"]
    assert [s.id for s, _ in index.matches(ann)] == ["other"]
    assert index.matches(as_json(announcement([ACME], kind="forum"))) == []


def test_disabled_subscriptions_are_held_but_never_candidates() -> None:
    """The caller feeds every write; a disabled subscription counts but is not offered
    until it is put enabled again, and then comes last (it was written last)."""
    index = SubscriptionIndex([subscription("a", Filter()), subscription("b", Filter())])
    ev = as_json(agreement([ACME]))
    index.put(subscription("a", Filter(), off=True))
    assert len(index) == 2 and [s.id for s in index.candidates(ev)] == ["b"]
    index.put(subscription("a", Filter()))
    assert [s.id for s in index.candidates(ev)] == ["b", "a"]


def test_a_subscription_under_several_keys_comes_once() -> None:
    """An event hitting two of a filter's values offers the subscription once."""
    index = SubscriptionIndex([subscription("s", flt(organizations=["acme-vr", "Anting Town", "SMIIA"]))])
    ev = as_json(agreement([ACME, ANTING_TOWN, ALLIANCE]))
    assert [s.id for s in index.candidates(ev)] == ["s"]
    assert len(index.matches(ev)[0][1]) == 3  # the reasons still name every mention
    assert set(SELECTIVITY) == {"organizations", "cities", "sectors", "kinds", "types"}
