"""Organization name resolution, pure (no I/O): normalise → exact → alias → fuzzy.

A name as a publisher wrote it ("Anting Town Government of Jiading District",
"安亭镇人民政府", "安亭鎮人民政府", "Beijing Institute of Technolgy") is normalised
(NFKC width folding, case, Chinese script, punctuation, legal suffixes) and
looked up first among the normalised official names (``exact``), then among
aliases and abbreviations (``alias``), then by rapidfuzz similarity (``fuzzy``).
Fuzzy matching is guarded so that a short or generic name ("Shanghai",
"Alliance") never matches and a name with a word the candidate lacks ("BIT
Mining", "Anting Road") does not either: every word of one side must match a
word of the other.

Traditional and Simplified spellings meet: a name with CJK characters is
converted to Simplified with OpenCC's ``hk2s`` config before the rest of the
folding, on the catalog's side and the mention's side alike, so 同濟大學,
同济大学 and a Traditional alias in the catalog all give one key (and fuzzy
matching compares the folded forms). ``hk2s`` is ``t2s`` (Traditional
characters and phrases) plus the Hong Kong variant glyphs (衞 → 卫, 敍 → 叙,
枱 → 台, ...); none of those is a Simplified character, so the additions never
change Simplified text. ``tw2s`` is not used: its Taiwan variant table also rewrites
characters that are valid Simplified (著 → 着, 么 → 幺), and Taiwan's
Traditional characters are already covered by ``t2s``. Conversion is character
and phrase level only: a Taiwan wording that is a different word (福斯 for 大众,
資訊 for 信息) is an alias, not a spelling.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import opencc
from rapidfuzz import fuzz, process

from shared.events import MatchMethod
from shared.organizations import Organization

DEFAULT_THRESHOLD = 88.0
# below these lengths a typo is indistinguishable from another name: exact/alias only
MIN_FUZZY_LATIN = 8
MIN_FUZZY_CJK = 4
TOKEN_THRESHOLD = 80.0
CACHE_LIMIT = 50_000
# Traditional (incl. Hong Kong variants) → Simplified; see the module docstring for why hk2s.
# The dictionaries ship in the opencc wheel: nothing is fetched at run time.
OPENCC_CONFIG = "hk2s"

# English legal and administrative suffixes, as normalised token sequences,
# longest first; stripped from the end while something else remains
_EN_SUFFIXES: tuple[tuple[str, ...], ...] = tuple(
    tuple(s.split())
    for s in sorted(
        [
            "co ltd", "co limited", "company limited", "company ltd", "corporation limited",
            "limited", "ltd", "inc", "incorporated", "corporation", "corp", "company", "co",
            "gmbh", "ag", "se", "sa", "plc", "llc", "peoples government", "government",
        ],
        key=lambda s: -len(s.split()),
    )
)
_EN_SUFFIX_LAST = frozenset(suffix[-1] for suffix in _EN_SUFFIXES)
_ZH_SUFFIXES = (
    "股份有限公司", "有限责任公司", "集团有限公司", "有限公司", "人民政府", "公司", "政府",
)
# words that say what kind of body something is, or where, but not which one
GENERIC_WORDS = frozenset(
    """
    the of and for a an in at de la
    shanghai beijing china chinese international national world global municipal
    alliance government group town district city county province village road street
    company association federation society committee council institute university college
    academy school center centre industry industrial innovation metaverse technology
    technologies science sciences research development park zone base office bureau
    commission ministry department people peoples new area holding holdings network
    """.split()
)
GENERIC_CJK = frozenset(
    [
        "上海", "上海市", "北京", "北京市", "中国", "中华", "政府", "人民政府", "集团", "联盟",
        "公司", "协会", "学会", "大学", "学院", "委员会", "镇", "区", "市", "元宇宙", "产业",
    ]
)

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_PUNCT = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+")
_CJK_GAP = re.compile(r"(?<=[\u3400-\u9fff])\s+(?=[\u3400-\u9fff])")
_PARENS = re.compile(r"[(（\[［]([^)）\]］]*)[)）\]］]")


_TO_SIMPLIFIED = opencc.OpenCC(OPENCC_CONFIG)


def has_cjk(s: str) -> bool:
    """True when the text has a CJK ideograph (the ranges ``_CJK`` covers)."""
    return not s.isascii() and _CJK.search(s) is not None


def to_simplified(text: str) -> str:
    """The text with Traditional Chinese (and Hong Kong variant) characters and phrases
    in Simplified; anything else (Latin, digits, Simplified) is left as it is."""
    return str(_TO_SIMPLIFIED.convert(text))


def normalise(name: str) -> str:
    """Case, width, Chinese script (Traditional → Simplified), punctuation, whitespace and
    legal suffixes folded away (but a suffix is kept when only a generic word would remain:
    "Shanghai Government")."""
    base = _fold(name)
    stripped = _strip_suffixes(base)
    return base if is_generic(stripped) else stripped


# Names repeat (every catalog rebuild folds the same names again, mentions recur across
# events), and the OpenCC conversion is the costly step: cache the whole fold.
@lru_cache(maxsize=CACHE_LIMIT)
def _fold(name: str) -> str:
    s = unicodedata.normalize("NFKC", name).casefold()
    if has_cjk(s):  # Latin-only names skip the converter
        s = to_simplified(s)
    s = s.replace("&", " and ").replace("'", "").replace("\u2019", "")
    s = _PUNCT.sub(" ", s)
    s = _SPACES.sub(" ", s).strip()
    return _CJK_GAP.sub("", s)


def _strip_suffixes(s: str) -> str:
    tokens = s.split(" ")
    if tokens and tokens[0] == "the" and len(tokens) > 1:
        tokens = tokens[1:]
    changed = tokens[-1] in _EN_SUFFIX_LAST  # the usual name has none: no loop
    while changed:
        changed = False
        for suffix in _EN_SUFFIXES:
            n = len(suffix)
            if len(tokens) > n and tuple(tokens[-n:]) == suffix:
                tokens = tokens[:-n]
                changed = True
                break
    s = " ".join(tokens)
    changed = s.endswith(_ZH_SUFFIXES)
    while changed:
        changed = False
        for zh in _ZH_SUFFIXES:
            if s.endswith(zh) and len(s) > len(zh):
                s = s[: -len(zh)].rstrip()
                changed = True
                break
    return s


def is_generic(key: str) -> bool:
    """True for a normalised name that is one generic word ("shanghai", "alliance", "上海"):
    it names no organization, so it never resolves."""
    if not key:
        return True
    if has_cjk(key):
        return key in GENERIC_CJK
    return " " not in key and key in GENERIC_WORDS


def distinctive(key: str) -> bool:
    """True when a normalised name is long and specific enough to fuzzy-match: a word
    beyond place and kind, or at least three words ("beijing institute of technology")."""
    if has_cjk(key):
        return len(key) >= MIN_FUZZY_CJK and key not in GENERIC_CJK
    tokens = key.split()
    return len(key) >= MIN_FUZZY_LATIN and (
        len(tokens) >= 3 or any(t not in GENERIC_WORDS for t in tokens)
    )


def variants(name: str) -> list[str]:
    """The name, then without its parenthetical, then the parenthetical alone
    ("Beijing Institute of Technology (BIT)")."""
    out = [name]
    inner = _PARENS.findall(name)
    if inner:
        out.append(_PARENS.sub(" ", name))
        out.extend(inner)
    return out


@dataclass(frozen=True)
class Resolution:
    organization: Organization | None
    method: MatchMethod | None = None
    score: float = 0.0


UNRESOLVED = Resolution(None)


def _tokens_agree(a: str, b: str) -> bool:
    """Every word of each side has a close word on the other side (CJK: whole string)."""
    if has_cjk(a) or has_cjk(b):
        return has_cjk(a) and has_cjk(b)
    ta, tb = a.split(), b.split()

    def covered(xs: list[str], ys: list[str]) -> bool:
        return all(max(fuzz.ratio(x, y) for y in ys) >= TOKEN_THRESHOLD for x in xs)

    return covered(ta, tb) and covered(tb, ta)


@dataclass
class CatalogIndex:
    """The catalog prepared for lookups; rebuild it (cheap) whenever the catalog changes."""

    organizations: dict[str, Organization]
    threshold: float = DEFAULT_THRESHOLD
    exact: dict[str, str] = field(init=False, default_factory=dict)
    alias: dict[str, str] = field(init=False, default_factory=dict)
    fuzzy_keys: list[str] = field(init=False, default_factory=list)
    fuzzy_ids: list[str] = field(init=False, default_factory=list)
    records: dict[str, dict[str, Any]] = field(init=False, default_factory=dict)
    _cache: dict[str, Resolution] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # sorted ids: the same catalog always gives the same answer for a clash
        for oid in sorted(self.organizations):
            org = self.organizations[oid]
            self.records[oid] = org.model_dump(mode="json")
            for n in [org.name, *org.names.values()]:
                self._add(self.exact, n, oid)
            for n in org.aliases:
                self._add(self.alias, n, oid)
        seen: set[str] = set()
        for table in (self.exact, self.alias):
            for key, oid in table.items():
                if key in seen or not self._fuzzy_eligible(key):
                    continue
                seen.add(key)
                self.fuzzy_keys.append(key)
                self.fuzzy_ids.append(oid)

    @staticmethod
    def _add(table: dict[str, str], name: str, oid: str) -> None:
        key = normalise(name)
        if not is_generic(key):
            table.setdefault(key, oid)

    @staticmethod
    def _fuzzy_eligible(key: str) -> bool:
        return distinctive(key)

    def resolve(self, name: str) -> Resolution:
        """The catalog record a name refers to, how it was found, and how sure (0-100)."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        result = self._resolve(name)
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[name] = result
        return result

    def _resolve(self, name: str) -> Resolution:
        keys = [k for k in (normalise(v) for v in variants(name)) if not is_generic(k)]
        for table, method in ((self.exact, MatchMethod.exact), (self.alias, MatchMethod.alias)):
            for key in keys:
                oid = table.get(key)
                if oid is not None:
                    return Resolution(self.organizations[oid], method, 100.0)
        for key in keys[:2]:  # the parenthetical alone is usually an abbreviation: no fuzzy
            if not self._fuzzy_eligible(key):
                continue
            for candidate, score, i in process.extract(
                key, self.fuzzy_keys, scorer=fuzz.ratio, score_cutoff=self.threshold, limit=5
            ):
                if _tokens_agree(key, candidate):
                    return Resolution(
                        self.organizations[self.fuzzy_ids[i]], MatchMethod.fuzzy, round(score, 1)
                    )
        return UNRESOLVED


def build_index(
    organizations: Iterable[Organization], threshold: float = DEFAULT_THRESHOLD
) -> CatalogIndex:
    return CatalogIndex({o.id: o for o in organizations}, threshold)


__all__ = ["CACHE_LIMIT", "DEFAULT_THRESHOLD", "GENERIC_CJK", "GENERIC_WORDS", "MIN_FUZZY_CJK",
           "MIN_FUZZY_LATIN", "OPENCC_CONFIG", "TOKEN_THRESHOLD", "UNRESOLVED", "CatalogIndex",
           "Resolution", "build_index", "distinctive", "has_cjk", "is_generic", "normalise",
           "to_simplified", "variants"]
