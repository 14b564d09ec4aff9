"""The words a pattern needs, read from its syntax, and the gate built on them: a sentence
the gate rules out for a pattern holds no match of it, so skipping it changes nothing."""

from __future__ import annotations

import random
import re
from pathlib import Path

from services.enrich import extract, reports
from services.enrich.extract import sentences
from services.enrich.gate import Gate, required_words
from services.enrich.gazetteer import fold

TEXTS = [p.read_text(encoding="utf-8") for p in
         sorted((Path(__file__).resolve().parents[2] / "bench" / "documents").glob("*/*.txt"))]

# every pattern the documents stage gates, with whether it reads the folded text
GATED = [(p, True) for _, p in reports._FOLDED_TRIGGERS] + [
    (extract._FOLDED_SIGNING, True), (extract._EN_BY_LIST, False), (extract._EN_MEMBERS, False),
    (extract._EN_NEW_BODY, False), (extract._ZH_SIGN_SLOT, True), (extract._ZH_NEW_BODY, True),
    (extract._ZH_MEMBERS, True), (extract._ZH_SUFFIX, True),
    *((p, True) for p, _ in extract._FOLDED_ROLE_PATTERNS), (extract._ZH_BY, True),
    (extract._ZH_SUBJECT_VERB, True), (extract._FOLDED_SUBJECT_VERB, True)]


def test_required_words_of_simple_patterns() -> None:
    """Literal runs, alternations, optional parts, repeats, classes and flags."""
    assert required_words(re.compile(r"\bforums?\b|论坛")) == {"forum", "论坛"}
    assert required_words(re.compile(r"white ?paper")) == {"white"}
    assert required_words(re.compile(r"(?:a|b)?x+yz")) == {"x"}
    assert required_words(re.compile(r"[ab]c")) == {"c"}
    assert required_words(re.compile(r"\d+.\s")) is None
    assert required_words(re.compile(r"sign|\w+")) is None  # one branch needs no word
    assert required_words(re.compile(r"sign", re.IGNORECASE)) is None
    assert required_words(re.compile(r"(?i:sign)ed")) is None
    assert required_words(re.compile(r"由(.*?)(主办|承办)")) == {"由"}


def _sample_texts() -> list[str]:
    rng = random.Random(11)
    pieces = [w for p, _ in GATED for w in required_words(p) or ()] + [
        " ", ", ", "。", "，", "\n", "The ", "Acme Motors", "小鹏汽车", "与", "和", "、", "等",
        "by ", "with ", "A", "签", "于", "正式", "合资公司", "包括", "founded by the ",
        "Beijing Institute", "由", "主办", "单位：", "hosted by ", "co-", "released"]
    out = list(TEXTS)
    for _ in range(2000):
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    return out


def test_a_pattern_matches_only_where_the_gate_says_it_may() -> None:
    """Over the gold texts and random sentences made of the patterns' own words: wherever
    a pattern matches a sentence, its bit is set for that sentence."""
    gate = Gate(GATED)
    checked = 0
    for text in _sample_texts():
        folded = fold(text)
        # the sentences of the text and those of the folded text (which roles reads)
        cut = sentences(text) + sentences(folded)
        for (s, e), may in zip(cut, [m for c in (sentences(text), sentences(folded))
                                     for m in gate.masks(folded, c)], strict=True):
            for bit, (pattern, on_folded) in enumerate(GATED):
                if pattern.search(folded[s:e] if on_folded else text[s:e]):
                    assert may >> bit & 1, (pattern.pattern[:40], text[s:e])
                    checked += 1
    assert checked > 1000


def test_a_pattern_without_words_may_match_everywhere() -> None:
    """A pattern whose words cannot be said is never ruled out."""
    gate = Gate([(re.compile(r"\d+"), True), (re.compile(r"sign"), True)])
    assert gate.masks("one sign. two", [(0, 9), (9, 13)]) == [0b11, 0b01]
    assert Gate([]).masks("text", [(0, 4)]) == [0]
