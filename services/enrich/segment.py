"""Chinese words with their parts of speech, as jieba cuts them from its dictionary alone
(``jieba.posseg.cut(text, HMM=False)``), in one pass per block instead of jieba's three.

jieba finds a block's words by the most probable path through its dictionary: every word
that starts at each character (its DAG), then, from the block's end back to its start,
the best path on from each character (its route), then a walk along that path, a word
and its tag from the dictionary at a time. The same arithmetic is done here in one loop
from the end of the block, on jieba's own dictionary (with the words the caller added),
so the words and tags are the same, float for float; without the generators, tuples and
per-word objects of jieba's pure-Python cut, which took a fifth of the time of reading a
mixed document. ``tests/enrich/test_segment.py`` holds it equal to jieba on texts of
every kind of character it may be given.
"""

from __future__ import annotations

import re
from math import log
from typing import Any

__all__ = ["PosCutter"]

# jieba.posseg's blocks: what it segments with its dictionary, and what it passes
# character by character (``re_han_internal``, ``re_skip_internal``)
_HAN = re.compile(r"([\u4E00-\u9FD5a-zA-Z0-9+#&\._]+)")
_SKIP = re.compile(r"(\r\n|\s)")
_NUM = re.compile(r"[\.0-9]+")
_ENG = re.compile(r"[a-zA-Z0-9]+")
# a one-character word jieba.posseg glues to its neighbours of the same kind
_ENG1 = re.compile(r"^[a-zA-Z0-9]$")


class PosCutter:
    """``cut(text)`` → ``[(word, tag), …]``, jieba.posseg's cut without its hidden Markov
    model, over the dictionary of ``pos`` (a ``jieba.posseg.POSTokenizer``, such as
    ``jieba.posseg.dt``). Its dictionary, its total and its tags are read on every call,
    so words added to jieba later count as they do for jieba itself."""

    __slots__ = ("pos",)

    def __init__(self, pos: Any) -> None:  # Any: jieba ships no types (a POSTokenizer)
        self.pos = pos

    def cut(self, text: str) -> list[tuple[str, str]]:
        """``text``'s words and tags, as ``jieba.posseg.lcut(text, HMM=False)`` gives them
        (as pairs of strings). Loads jieba's dictionary on first use."""
        pos = self.pos
        pos.makesure_userdict_loaded()  # the tags of words added with one
        tokenizer = pos.tokenizer
        tokenizer.check_initialized()
        freq: dict[str, int] = tokenizer.FREQ
        tags: dict[str, str] = pos.word_tag_tab
        logtotal = log(tokenizer.total)
        out: list[tuple[str, str]] = []
        for block in _HAN.split(text):
            if not block:
                continue
            if _HAN.match(block):
                _cut_block(block, freq, tags, logtotal, out)
                continue
            for part in _SKIP.split(block):
                if _SKIP.match(part):
                    out.append((part, "x"))
                    continue
                for ch in part:
                    if _NUM.match(ch):
                        out.append((ch, "m"))
                    elif _ENG.match(part):  # the part, not the character: as jieba does
                        out.append((ch, "eng"))
                    else:
                        out.append((ch, "x"))
        return out


def _cut_block(block: str, freq: dict[str, int], tags: dict[str, str], logtotal: float,
               out: list[tuple[str, str]]) -> None:
    """One block's words and tags onto ``out``: jieba's DAG, route and walk, in one."""
    n = len(block)
    # best[i]: the log probability of the best path from i to the end; end[i]: where
    # its first word ends. jieba's calc takes the largest (probability, last index)
    # pair over the words starting at i, so at equal probability the longer word.
    best = [0.0] * (n + 1)
    end = [0] * (n + 1)
    for k in range(n - 1, -1, -1):
        top = 0.0
        stop = -1
        i = k
        f = freq.get(block[k])
        while f is not None:  # a word or the prefix of one (frequency 0) starts here
            if f:
                p = log(f) - logtotal + best[i + 1]
                if stop < 0 or p >= top:
                    top, stop = p, i
            i += 1
            if i == n:
                break
            f = freq.get(block[k:i + 1])
        if stop < 0:  # no word starts here: the character alone, at frequency 1
            top, stop = log(1) - logtotal + best[k + 1], k
        best[k] = top
        end[k] = stop + 1
    x = 0
    buf = ""
    while x < n:
        y = end[x]
        word = block[x:y]
        if _ENG1.match(word):
            buf += word
        else:
            if buf:
                out.append((buf, "eng"))
                buf = ""
            out.append((word, tags.get(word, "x")))
        x = y
    if buf:
        out.append((buf, "eng"))
