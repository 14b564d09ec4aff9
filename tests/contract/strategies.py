"""Hypothesis strategies for events as publishers really send them: valid ones, and
the same events broken in each of the ways the contract refuses (each a kind of input
that once broke a later stage)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import strategies as st

from shared.events import LIMITS, AnnouncementKind

# names and lines: no control characters, at least one visible character
text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30).filter(
    lambda s: not s.isspace())
# the seed's organizations, in both scripts, so that enrich resolves some
known = st.sampled_from([
    "Anting Town Government", "安亭镇人民政府", "安亭鎮人民政府", "SAIC Motor", "同济大学",
    "同濟大學", "Tongji University", "China Simulation Federation", "Shanghai International Circuit",
])
names = known | text
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5, minutes=30))]),
).map(lambda d: d.isoformat(timespec="seconds"))
location = st.fixed_dictionaries({}, optional={
    "venue": text, "town": text, "district": text, "city": text, "country": text,
})
mentions = st.lists(st.fixed_dictionaries({"name": names}, optional={"role": text}), max_size=6)
numbers = st.integers(-(2**53 - 1), 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)

announcement_data = st.fixed_dictionaries({"headline": text}, optional={
    "kind": st.sampled_from([k.value for k in AnnouncementKind]),
    "conference": text, "summary": st.text(st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from("\n\r\t"),
                       max_size=200),
    "location": location, "starts_at": times, "ends_at": times, "organizations": mentions,
    "people": st.lists(st.fixed_dictionaries({"name": text}, optional={"role": text, "affiliation": text}), max_size=3),
    "figures": st.dictionaries(text, numbers, max_size=4), "language": st.sampled_from(["en", "zh"]),
})
agreement_data = st.fixed_dictionaries({"title": text}, optional={
    "organizations": mentions, "party_count": st.integers(0, 1000), "signed_at": times,
    "location": location,
    "value": st.fixed_dictionaries({"amount": numbers, "currency": st.sampled_from(["CNY", "USD", "EUR"])}),
    "sectors": st.lists(text, max_size=4), "language": st.sampled_from(["en", "zh"]),
})
_ENVELOPE = {"specversion": st.just("1.0"), "id": text, "source": text}
_OPTIONAL = {"time": times, "subject": text, "datacontenttype": st.just("application/json"),
             "traceparent": st.just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
             "partitionkey": text}
valid_events = st.one_of(
    st.fixed_dictionaries({**_ENVELOPE, "type": st.just("conference.announcement"), "data": announcement_data},
                          optional=_OPTIONAL),
    st.fixed_dictionaries({**_ENVELOPE, "type": st.just("agreement.signed"), "data": agreement_data},
                          optional=_OPTIONAL),
)

# a number orjson can write, replaced in the bytes by one it cannot
_SENTINEL = 1.25e-300
CONTROLS = ["\n", "\r", "\r\n", "\x00", "\x1b", "\x7f", "\x85", "\t"]
BAD_TIMES = ["2024-05-01T10:00:00", "2024-05-01", "2024-05-01T10:00Z", "2024-05-01 10:00:00Z",
             "2024-13-01T10:00:00Z", "20240501T100000Z", "2024-05-01T10:00:00+0800"]
BAD_NUMBERS = [b"1e400", b"-1e400", b"1E999", b"18446744073709551616", b"9007199254740992",
               b"-123456789012345678901234567890"]


def _string_fields(ev: dict[str, Any]) -> list[tuple[Any, Any]]:
    """(container, key) of every protocol field and name in the event."""
    out: list[tuple[Any, Any]] = [(ev, "id"), (ev, "source")]
    if "subject" in ev:
        out.append((ev, "subject"))
    data = ev["data"]
    out.append((data, "headline" if "headline" in data else "title"))
    out += [(m, "name") for m in data.get("organizations", ())]
    return out


@st.composite
def broken_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """(kind of breakage, body bytes): a valid event broken in one way the contract refuses."""
    ev = copy.deepcopy(draw(valid_events))
    kind = draw(st.sampled_from([
        "control", "number", "time", "too_many", "too_long", "extension", "whitespace_name",
        "wrong_type",
    ]))
    if kind == "control":
        target, key = draw(st.sampled_from(_string_fields(ev)))
        c = draw(st.sampled_from(CONTROLS))
        target[key] = target[key][:3] + c + target[key][3:]
        if c == "\t" and target is not ev and key == "name":
            target[key] += "\n"  # a tab alone is a control character too; make sure
    elif kind == "number":
        data = ev["data"]
        if ev["type"] == "agreement.signed":
            data["value"] = {"amount": _SENTINEL, "currency": "CNY"}
        else:
            data["figures"] = {"visitors": _SENTINEL}
        if draw(st.booleans()):  # unknown fields obey the number rules too
            data.pop("value", None)
            data.pop("figures", None)
            data["extra_numbers"] = [1, {"deep": _SENTINEL}]
        raw = orjson.dumps(ev).replace(b"1.25e-300", draw(st.sampled_from(BAD_NUMBERS)))
        return kind, raw
    elif kind == "time":
        field = draw(st.sampled_from(["time", "data"]))
        bad = draw(st.sampled_from(BAD_TIMES))
        if field == "time":
            ev["time"] = bad
        else:
            ev["data"]["signed_at" if ev["type"] == "agreement.signed" else "starts_at"] = bad
    elif kind == "too_many":
        ev["data"]["organizations"] = [{"name": "SAIC Motor Corporation Limited"}] * (
            LIMITS["organizations"] + draw(st.integers(1, 3000)))
    elif kind == "too_long":
        target, key = draw(st.sampled_from(_string_fields(ev)))
        target[key] = "x" * (LIMITS["uri"] + 1)  # over every single-line limit
    elif kind == "extension":
        ev.update(draw(st.sampled_from([
            {"Bad_Name": "x"}, {"with-dash": "x"}, {"nested": {"a": 1}}, {"list": [1]},
            {"line": "a\nb"}, {"big": 2**40},
        ])))
    elif kind == "whitespace_name":
        target, key = draw(st.sampled_from(_string_fields(ev)))
        target[key] = draw(st.sampled_from([" ", "   ", "\u3000", ""]))
    else:
        target, key = draw(st.sampled_from(_string_fields(ev)))
        # null is absent for an optional attribute (CloudEvents JSON format), wrong for the rest
        wrong = [1, 1.5, True, [], {}] + ([] if key == "subject" else [None])
        target[key] = draw(st.sampled_from(wrong))
    return kind, orjson.dumps(ev)
