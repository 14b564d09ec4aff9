"""What a document reports, as Anting's events — pure, offline, no I/O: a document and the
catalog's gazetteer in, ``conference.announcement`` and ``agreement.signed`` events out.

Each sentence is read for what happened (:data:`TRIGGERS`: a signing, an opening, an
alliance founded, a whitepaper released, a base unveiled, a forum, an exhibition, a
closing). Sentences that report the same kind of thing are one event (a headline and the
paragraph that tells it again). A signing is an ``agreement.signed`` naming the parties
of its sentences; anything else a ``conference.announcement`` of its kind. Every
organization the document names is in some event with every place it is named: those
named only outside the signings are in the first announcement (one of kind ``other`` is
made when the text reports nothing but signings and names others too). Events are in
the order the text first reports them; their ids are the document's id and that rank, so
reading a document again gives the same events.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from services.enrich.extract import SIGNING, Found, find_organizations, sentences
from services.enrich.gate import Gate
from services.enrich.gazetteer import Gazetteer, fold, unfolded_case
from shared.documents import Document
from shared.events import AGREEMENT, ANNOUNCEMENT, LIMITS

__all__ = ["TRIGGERS", "Report", "event_id", "read_document"]

#: What a sentence reports, by the words that say it, first match wins (a signing first:
#: "signed at the opening of" is a signing). Patterns are matched on the folded text
#: (lower case, Simplified Chinese).
TRIGGERS: tuple[tuple[str, str], ...] = (
    ("agreement", SIGNING.pattern + r"|\bmemorandum of understanding\b|\bmou\b|\bagreements?\b.{0,40}\b(?:reached|concluded)\b|达成.{0,10}协议"),
    ("alliance_established", r"\b(?:alliance|consortium|coalition|federation|association|league)\b.{0,80}\b(?:established|founded|launched|formed|set up|inaugurated|unveiled)\b|\b(?:established|founded|launched|formed|set up|inaugurated)\b.{0,60}\b(?:alliance|consortium|coalition|league)\b|(?:联盟|联合体|协会|共同体|产业联合会|委员会).{0,20}(?:成立|组建|揭牌|启动|发起)|(?:成立|组建|发起|启动).{0,40}(?:联盟|联合体|共同体)"),
    ("whitepaper_released", r"\b(?:white ?paper|whitepapar|blue ?book)s?\b|白皮书|蓝皮书"),
    ("industry_base_unveiled", r"\b(?:base|park|zone|hub)\b.{0,60}\b(?:unveiled|inaugurated|opened|launched|plaque)\b|\b(?:unveiled|inaugurated)\b.{0,60}\b(?:base|park|zone|hub)\b|(?:基地|园区|产业园|示范区|先导区).{0,20}(?:揭牌|启用|开园|授牌|落成|启动)|(?:揭牌|授牌).{0,30}(?:基地|园区|产业园|示范区)"),
    ("conference_closed", r"\b(?:closed|concluded|wrapped up|came to a close|came to an end)\b|闭幕|落下帷幕|圆满结束|胜利闭幕"),
    ("exhibition", r"\b(?:auto show|motor show|exhibition|expo)\b.{0,60}\b(?:opened|opens|kicked off|began|begins|started|starts|is held|was held|runs)\b|(?:车展|展览会|博览会|展会).{0,20}(?:开幕|开展|举行|举办|启幕)"),
    ("conference_opened", r"\b(?:conference|summit|congress|convention|assembly|forum|expo)\b.{0,80}\b(?:opened|opens|kicked off|kicks off|began|begins|started|starts|got under way|got underway|convened|commenced|was held|is held|held)\b|\b(?:opened|opening of|kicked off)\b.{0,40}\b(?:conference|summit|congress)\b|(?:大会|峰会|年会|会议|论坛).{0,30}(?:开幕|召开|举行|举办|启幕|拉开帷幕)|(?:开幕|召开).{0,20}(?:大会|峰会)"),
    ("forum", r"\bforums?\b|论坛"),
)
_TRIGGERS = [(kind, re.compile(p, re.IGNORECASE)) for kind, p in TRIGGERS]
# the same without IGNORECASE, twice as fast, for a folded text (lower case already) that
# has none of the letters IGNORECASE reads as "i" and folding leaves as they are
_FOLDED_TRIGGERS = [(kind, re.compile(p)) for kind, p in TRIGGERS]
# which of them may match in which sentence, from one pass over the document
_TRIGGER_GATE = Gate([(p, True) for _, p in _FOLDED_TRIGGERS])
_SPACES = re.compile(r"\s+")
# CJK ideographs (the ranges of :func:`~services.enrich.resolve.has_cjk`), a run at a time
_CJK_CHARS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


def event_id(doc_id: str, n: int) -> str:
    """The id of the ``n``-th event (from 1) read from document ``doc_id``:
    ``<doc_id>:<n>``, the document id replaced by ``doc-`` and its hash when the result
    would pass the contract's 256 characters."""
    base = doc_id if len(doc_id) <= 240 else "doc-" + hashlib.sha256(doc_id.encode()).hexdigest()[:32]
    return f"{base}:{n}"


@dataclass
class _Event:
    kind: str
    sentences: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Report:
    """What one document reported: its ``events`` (JSON-ready CloudEvents, in order) and
    the ``organizations`` found in it."""

    events: list[dict[str, Any]]
    organizations: list[Found]

    @property
    def kind(self) -> str | None:
        """The document's type: its first event's kind (``agreement`` for a signing)."""
        if not self.events:
            return None
        first = self.events[0]
        return "agreement" if first["type"] == AGREEMENT else str(first["data"]["kind"])


def _clip(text: str, limit: int) -> str:
    return _cut(_SPACES.sub(" ", text).strip(), limit)


def _cut(text: str, limit: int) -> str:
    """``text`` (its spaces collapsed already) in at most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _role(f: Found, spans: _Within, party: bool) -> str | None:
    """The role ``f`` has in an event told in ``spans``: what the text says there; in a
    signing, ``party`` when it says nothing else; in an announcement, the first role the
    text gives it that is not a signing's."""
    here = [r for at, r in sorted(f.roles.items()) if at in spans]
    if party:
        return next((r for r in here if r != "party"), "party")
    return next((r for r in here if r != "party"), None) or next(
        (r for _, r in sorted(f.roles.items()) if r != "party"), None)


def _organizations(found: list[Found], spans: _Within, *,
                   party: bool) -> list[dict[str, Any]]:
    out = []
    for f in found[: LIMITS["organizations"]]:
        item: dict[str, Any] = {"name": _clip(f.name, LIMITS["name"])}
        role = _role(f, spans, party)
        if role is not None:
            item["role"] = role
        item["mentions"] = [{"start": m.start, "end": m.end, "text": m.text}
                            for m in f.mentions[: LIMITS["mentions"]]]
        out.append(item)
    return out


def read_document(doc: Document, gazetteer: Gazetteer) -> Report:
    """The events ``doc`` reports (see the module docstring), each with ``documentid``,
    the document's ``source``, ``subject`` = the document id, ``time`` = when ingest
    received it. An event's JSON is valid for the contract's models; the caller checks
    its size. Never raises."""
    text = doc.text
    folded = fold(text)
    cut = sentences(text)
    found = find_organizations(text, gazetteer, folded, cut)
    events: list[_Event] = []
    by_kind: dict[str, _Event] = {}
    signings: list[tuple[_Event, set[str]]] = []
    if unfolded_case(folded):
        triggers, may_match = _TRIGGERS, [-1] * len(cut)
    else:
        triggers, may_match = _FOLDED_TRIGGERS, _TRIGGER_GATE.masks(folded, cut)
    for (s, e), may in zip(cut, may_match, strict=True):
        if not may:
            continue  # none of the triggers' words: it reports nothing
        sentence = folded[s:e]
        for bit, (kind, pattern) in enumerate(triggers):
            if not may >> bit & 1 or not pattern.search(sentence):
                continue
            if kind == "agreement":
                # one event per signing: a sentence naming some of a signing's parties
                # tells that signing again; one naming none, the last one told
                names = _names_in(found, s, e)
                same = next((ev for ev, keys in signings if keys & names), None)
                if same is None and not names and signings:
                    same = signings[-1][0]
                if same is None:  # a signing told first without its parties
                    same = next((ev for ev, keys in signings if not keys), None)
                if same is None:
                    same = _Event(kind)
                    events.append(same)
                    signings.append((same, set()))
                same.sentences.append((s, e))
                for ev, keys in signings:
                    if ev is same:
                        keys |= names
                break
            event = by_kind.get(kind)
            if event is None:
                event = by_kind[kind] = _Event(kind)
                events.append(event)
            event.sentences.append((s, e))
            break
    cjk = sum(m.end() - m.start() for m in _CJK_CHARS.finditer(text, 0, 2000))
    language = "zh" if cjk > 0.2 * min(len(text), 2000) else "en"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    headline = _clip(doc.title or (lines[0] if lines else text), LIMITS["headline"])
    out: list[dict[str, Any]] = []
    agreements = [ev for ev in events if ev.kind == "agreement"]
    signed = [span for ev in agreements for span in ev.sentences]
    # named only where signings are told: placed in those; named elsewhere too: also in
    # the first announcement
    in_signings = _Within(signed)
    placed = {f.key for f in found if all(m.start in in_signings for m in f.mentions)}
    first_announcement = next((ev for ev in events if ev.kind != "agreement"), None)
    if first_announcement is None and any(f.key not in placed for f in found):
        first_announcement = _Event("other", [])
        events.append(first_announcement)
    # the sentences each organization is named in, by their rank
    starts = [s for s, _ in cut]
    rank = {span: i for i, span in enumerate(cut)}
    named_in = [{i for m in f.mentions
                 if (i := bisect_right(starts, m.start) - 1) >= 0 and m.start < cut[i][1]}
                for f in found]
    for n, ev in enumerate(events, 1):
        told = _Within(ev.sentences)
        ranks = {rank[span] for span in ev.sentences}
        where = [f for f, named in zip(found, named_in, strict=True) if not named.isdisjoint(ranks)]
        said = _SPACES.sub(" ", " ".join(text[s:e].strip() for s, e in ev.sentences)).strip()
        if ev.kind == "agreement":
            data: dict[str, Any] = {
                "title": _cut(said, LIMITS["headline"]) if said else headline,
                "organizations": _organizations(where, told, party=True),
                "summary": _cut(said, LIMITS["summary"]), "language": language}
            etype = AGREEMENT
        else:
            members = where
            if ev is first_announcement:
                members = [f for f in found if f in where or f.key not in placed]
            data = {
                "headline": headline if ev is first_announcement else _cut(said, LIMITS["headline"]),
                "kind": ev.kind, "organizations": _organizations(members, told, party=False),
                "language": language}
            if said:
                data["summary"] = _cut(said, LIMITS["summary"])
            etype = ANNOUNCEMENT
        out.append({
            "specversion": "1.0", "id": event_id(doc.id, n), "source": doc.source,
            "type": etype, "subject": doc.id, "time": doc.received_at.isoformat(),
            "datacontenttype": "application/json", "documentid": doc.id, "data": data})
    return Report(out, found)


class _Within:
    """Spans of a text that do not overlap (sentences), to ask whether an offset is in
    one of them."""

    __slots__ = ("ends", "starts")

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self.starts = [s for s, _ in ordered]
        self.ends = [e for _, e in ordered]

    def __contains__(self, offset: int) -> bool:
        i = bisect_right(self.starts, offset) - 1
        return i >= 0 and offset < self.ends[i]


def _names_in(found: list[Found], start: int, end: int) -> set[str]:
    """The keys of the organizations named in ``text[start:end]``."""
    return {f.key for f in found for m in f.mentions if start <= m.start < end}
