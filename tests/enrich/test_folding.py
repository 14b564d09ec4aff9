"""Folding, which the documents stage's offsets and patterns rest on: ``fold`` is
``fold_char`` character by character (same length, so offsets stay the text's), and a
folded text is read by the case-sensitive patterns exactly as by the case-insensitive
ones unless it has one of the letters :func:`unfolded_case` names."""

from __future__ import annotations

import re
import string

from services.enrich.extract import _CREATES, _EN_SUBJECT_VERB, ROLES, SIGNING
from services.enrich.gazetteer import fold, fold_char, unfolded_case
from services.enrich.reports import TRIGGERS

# the patterns the documents stage runs without IGNORECASE on folded text
FOLDED_PATTERNS = [p for _, p in TRIGGERS] + [p for p, _ in ROLES] + [
    SIGNING.pattern, _CREATES.pattern, _EN_SUBJECT_VERB.pattern]

TEXTS = [
    "上海國際汽車城（集團）有限公司與ＳＡＩＣ簽署協議",
    "Ｆｕｌｌ　ｗｉｄｔｈ and ASCII; Ǆ ß ﬁ ŉ İstanbul ıi Kelvin \u212a",
    "The Alliance WAS FOUNDED by Acme Motors 在安亭镇成立",
    "",
]


def test_fold_is_fold_char_for_each_character() -> None:
    for text in TEXTS:
        assert fold(text) == "".join(fold_char(ch) for ch in text)
        assert len(fold(text)) == len(text)
    assert fold("ＳＡＩＣ 上海國際汽車城") == "saic 上海国际汽车城"


def test_only_the_letters_unfolded_case_names_match_ascii_letters_without_being_them() -> None:
    """Every code point, folded: if a case-insensitive pattern reads it as an ASCII letter,
    it is that letter, or :func:`unfolded_case` says so."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = fold_char(chr(cp))
        if letter.fullmatch(ch) and ch not in string.ascii_lowercase:
            assert unfolded_case(ch), hex(cp)


def test_the_folded_patterns_find_what_the_case_insensitive_ones_find() -> None:
    sentences = ["The World Metaverse Conference OPENED in Anting Town.",
                 "Acme and Borealis SIGNED a memorandum of understanding to FORM a venture.",
                 "The Alliance was Founded and HOSTED BY six companies.", "论坛在上海举行。",
                 "主办单位：安亭镇人民政府", "Ｃｏ-ｏｒｇａｎｉｚｅｄ ｂｙ Acme", "The base was unveıled."]
    assert all(not any(c.isupper() for c in p) for p in FOLDED_PATTERNS)
    for text in sentences:
        folded = fold(text)
        for p in FOLDED_PATTERNS:
            insensitive = re.compile(p, re.IGNORECASE).search(folded) is not None
            if not unfolded_case(folded):
                assert (re.compile(p).search(folded) is not None) == insensitive, (text, p)
    assert unfolded_case(fold("The base was unveıled."))
