"""The catalog as a gazetteer, pure (no I/O): every official name and alias of every
organization in one Aho–Corasick automaton, so one pass over a document finds every
place it names a catalog organization, in either Chinese script, any case or width.

Offsets must be those of the document's own text, so the text is folded one code point
for one code point (:func:`fold`): width (NFKC), case and Traditional → Simplified are
applied per character, and a character whose folded form is not one character is kept
as it is. The names are folded the same way, so 上海國際汽車城 finds 上海国际汽车城 and
ＳＡＩＣ finds SAIC, and a match's start and end are the text's.

What a match must satisfy to count, each a guard against a kind of false hit seen in
news text: a Latin name starts and ends at a word boundary ("BIT" is not in "BITmain");
an acronym (all capitals, five letters at most) matches only in capitals ("bit" is a
word); a one-word Latin name only with its capital ("meta", "unity", "apple"); a few
Chinese names that are also common words ("地平线", "吉利") only when a word of a
company follows.

The gazetteer is rebuilt from the live catalog whenever it changes (the caller keys it
by the catalog's version), so an alias added to ``organizations`` is used for the next
document without a restart.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import ahocorasick

from services.enrich.resolve import has_cjk, to_simplified
from shared.organizations import Organization, OrganizationKind

__all__ = ["AMBIGUOUS_CJK", "Gazetteer", "Hit", "fold", "fold_char", "unfolded_case"]

# Chinese names of catalog organizations that are ordinary words, and what must follow
# them for them to name the organization
AMBIGUOUS_CJK: dict[str, tuple[str, ...]] = {
    "地平线": ("机器人", "公司", "科技", "集团"),
    "吉利": ("汽车", "控股", "集团", "公司", "与", "和"),
    "大陆": ("集团", "公司"),
    "小米": ("集团", "公司", "汽车", "科技", "与", "和"),
    "苹果": ("公司",),
}
# venue records that are organizations when named (parks, bases, zones run by a body);
# other venues (a circuit, an exhibition centre, a museum) are places where things happen
_ACTOR_VENUE_WORDS = ("base", "park", "zone", "基地", "园区", "产业园", "示范区")


@lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    """One character folded for matching: width, case and script; itself when any of
    them would give more or fewer than one character."""
    out = unicodedata.normalize("NFKC", ch)
    if len(out) != 1:
        out = ch
    low = out.lower()
    if len(low) == 1:
        out = low
    if has_cjk(out):
        simple = to_simplified(out)
        if len(simple) == 1:
            out = simple
    return out


class _FoldTable(dict[int, str]):
    """Code point → its folded character, for ``str.translate``, filled as characters
    are first seen."""

    def __missing__(self, code: int) -> str:
        if len(self) > 65536:  # bounded, whatever the texts
            self.clear()
        out = self[code] = fold_char(chr(code))
        return out


_FOLD_TABLE = _FoldTable()


def fold(text: str) -> str:
    """``text`` folded character by character: ``len(fold(t)) == len(t)`` always, so an
    offset in the folded text is the same offset in ``text``. ASCII folds to its lower
    case (width and script leave it as it is)."""
    if text.isascii():
        return text.lower()
    return text.translate(_FOLD_TABLE)


def unfolded_case(folded: str) -> bool:
    """Whether a folded text has a letter that a case-insensitive pattern matches to an
    ASCII letter other than itself: "ı" and "İ" (both read as "i"), which folding leaves
    as they are. Without one, a pattern of lower-case letters finds the same in the
    folded text with IGNORECASE as without it (checked over every code point)."""
    return "ı" in folded or "İ" in folded


def _latin_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in "_")


@dataclass(frozen=True, slots=True)
class Hit:
    """One place the text names a catalog organization: ``text[start:end]``, which of its
    names it matched (``name``) and the organization's id."""

    start: int
    end: int
    org_id: str
    name: str


@dataclass(frozen=True, slots=True)
class _Entry:
    org_id: str
    name: str
    acronym: bool
    one_word: bool
    length: int
    follow: tuple[str, ...] | None  # what must follow a name that is an ordinary word


class Gazetteer:
    """Every name and alias of ``organizations`` (a catalog), ready to find in a text."""

    def __init__(self, organizations: Iterable[Organization]) -> None:
        self.automaton = ahocorasick.Automaton()
        self.organizations: dict[str, Organization] = {}
        keys: dict[str, list[_Entry]] = {}
        for org in sorted(organizations, key=lambda o: o.id):  # a clash always ends the same
            if org.kind is OrganizationKind.venue and not any(
                    w in n.lower() for n in (org.name, *org.names.values(), *org.aliases)
                    for w in _ACTOR_VENUE_WORDS):
                continue
            self.organizations[org.id] = org
            for name in dict.fromkeys([org.name, *org.names.values(), *org.aliases]):
                key = fold(name.strip())
                if len(key) < 2 or (not has_cjk(key) and len(key) < 2):
                    continue
                latin = not has_cjk(name)
                acronym = latin and name.isupper() and len(name.replace(" ", "")) <= 5
                entry = _Entry(org.id, name, acronym, latin and " " not in name.strip(),
                               len(key), AMBIGUOUS_CJK.get(fold(name)))
                keys.setdefault(key, []).append(entry)
        for key, entries in keys.items():
            self.automaton.add_word(key, (key, entries[0]))
        if keys:
            self.automaton.make_automaton()
        self.empty = not keys

    def _accepts(self, text: str, start: int, end: int, entry: _Entry) -> bool:
        written = text[start:end]
        if not has_cjk(entry.name):
            if start > 0 and _latin_word(text[start - 1]):
                return False
            if end < len(text) and _latin_word(text[end]):
                return False
            if entry.acronym:
                return written == entry.name or written.upper() == written
            if entry.one_word:
                return written[:1].isupper()
            return True
        follow = entry.follow
        if follow is not None:
            after = fold(text[end:end + 4])
            return after.startswith(follow)
        return True

    def find(self, text: str, folded: str | None = None) -> list[Hit]:
        """Every catalog name in ``text``, longest first where two overlap, in text order
        (``folded``: ``fold(text)``, when the caller has it already)."""
        if self.empty:
            return []
        folded = fold(text) if folded is None else folded
        found: list[Hit] = []
        for last, (key, entry) in self.automaton.iter(folded):
            start = last - len(key) + 1
            end = last + 1
            if self._accepts(text, start, end, entry):
                found.append(Hit(start, end, entry.org_id, entry.name))
        return list(_longest(found))


def _longest(hits: list[Hit]) -> Iterator[Hit]:
    """The hits that no longer hit overlaps, in text order (the longer wins; at equal
    length the earlier)."""
    taken: list[Hit] = []
    mask = bytearray(max((h.end for h in hits), default=0))  # the code points taken
    for hit in sorted(hits, key=lambda h: (-(h.end - h.start), h.start)):
        if mask.find(1, hit.start, hit.end) < 0:
            taken.append(hit)
            mask[hit.start:hit.end] = b"\x01" * (hit.end - hit.start)
    yield from sorted(taken, key=lambda h: h.start)
