"""Which patterns can match where, from one pass over a text: the words every match of a
pattern contains (read from the pattern itself), all of them in one Aho–Corasick
automaton, so that a sentence holding none of a pattern's words is not searched by it.

The documents stage runs some thirty patterns on every sentence (what it reports, who
signs, who is listed after "founded by"…), and most sentences hold the words of few of
them: a pattern is still run wherever it may match, so what it finds is the same.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

import ahocorasick

from services.enrich.gazetteer import fold

__all__ = ["Gate", "required_words"]

# the standard library's own reader of patterns (what ``re.compile`` parses with): private,
# so a Python without it gates nothing, and every pattern runs everywhere as before
try:
    from re import _constants as _sre  # type: ignore[attr-defined]
    from re import _parser as _sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    _sre = _sre_parse = None


def required_words(pattern: re.Pattern[str]) -> frozenset[str] | None:
    """Strings one of which every match of ``pattern`` contains, read from its syntax:
    the first literal run (or alternation of them) that every match must go through;
    None when nothing can be said (a pattern that ignores case, one whose every part may
    be skipped or is a character class)."""
    if pattern.flags & re.IGNORECASE or _sre_parse is None:
        return None
    words = _needs(_sre_parse.parse(pattern.pattern, pattern.flags).data)
    return frozenset(words) if words else None


def _needs(items: Sequence[tuple[Any, Any]]) -> set[str] | None:
    """What one of which a match of the sequence ``items`` contains, or None."""
    run: list[str] = []
    for op, av in items:
        if op is _sre.LITERAL:
            run.append(chr(av))
            continue
        if op is _sre.AT:
            continue  # zero width: the characters either side are next to each other
        if run:
            return {"".join(run)}
        found: set[str] | None = None
        if op is _sre.SUBPATTERN:
            _group, add_flags, _del_flags, sub = av
            if add_flags & _sre.SRE_FLAG_IGNORECASE:
                return None
            found = _needs(sub.data)
        elif op is _sre.ATOMIC_GROUP:
            found = _needs(av.data)
        elif op is _sre.BRANCH:
            alternatives = [_needs(sub.data) for sub in av[1]]
            if all(alternatives):
                found = set().union(*alternatives)  # type: ignore[arg-type]
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            low, _high, sub = av
            if low >= 1:
                found = _needs(sub.data)
        # anything else (a class, any character, a look-around, a reference) holds no
        # literal of its own, and ends the run: the search goes on after it
        if found:
            return found
    return {"".join(run)} if run else None


class Gate:
    """``patterns`` (compiled), each with the text it is run on: ``folded`` True when it
    is searched in the folded text (:func:`~services.enrich.gazetteer.fold`), False when
    in the text itself (its words are then looked for folded, which a text holding them
    always holds at the same place: folding is character by character). :meth:`masks`
    says, span by span of a folded text, which patterns may match there (bit ``i`` for
    ``patterns[i]``); a pattern whose words cannot be said may match everywhere."""

    def __init__(self, patterns: Sequence[tuple[re.Pattern[str], bool]]) -> None:
        self.always = 0
        by_word: dict[str, int] = {}
        for i, (pattern, folded) in enumerate(patterns):
            words = required_words(pattern)
            if not words:
                self.always |= 1 << i
                continue
            for w in words:
                key = w if folded else fold(w)
                by_word[key] = by_word.get(key, 0) | 1 << i
        self.automaton = ahocorasick.Automaton()
        for word, bits in by_word.items():
            self.automaton.add_word(word, (len(word), bits))
        self.empty = not by_word
        if not self.empty:
            self.automaton.make_automaton()

    def masks(self, folded: str, spans: Sequence[tuple[int, int]]) -> list[int]:
        """For each of ``spans`` (``(start, end)`` of ``folded``, in order, not
        overlapping), the bits of the patterns that may match inside it."""
        out = [self.always] * len(spans)
        if self.empty or not spans:
            return out
        starts = [s for s, _ in spans]
        for last, (length, bits) in self.automaton.iter(folded):
            start = last + 1 - length
            i = bisect_right(starts, start) - 1
            if i >= 0 and last < spans[i][1]:
                out[i] |= bits
        return out
