"""The documents stage's Chinese segmenter cuts exactly as jieba does from its dictionary:
the same words with the same tags as ``jieba.posseg.lcut(text, HMM=False)``, on the
gold texts whole, on the runs the extractor cuts, and on random strings of every kind
of character either may see."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import jieba.posseg

from services.enrich.extract import _CJK_RUN, warm_up
from services.enrich.gazetteer import fold
from services.enrich.segment import PosCutter

TEXTS = sorted((Path(__file__).resolve().parents[2] / "bench" / "documents").glob("*/*.txt"))


def _jieba(text: str) -> list[tuple[str, str]]:
    return [(w.word, w.flag) for w in jieba.posseg.lcut(text, HMM=False)]


def test_the_same_words_and_tags_as_jieba_on_articles() -> None:
    """Every gold and unseen text, whole and folded, and every run of it the extractor cuts."""
    warm_up()  # the words the extractor adds to jieba's dictionary, as it reads
    cutter = PosCutter(jieba.posseg.dt)
    assert len(TEXTS) >= 20
    for path in TEXTS:
        text = path.read_text(encoding="utf-8")
        for t in (text, fold(text), *(m.group() for m in _CJK_RUN.finditer(fold(text)))):
            assert cutter.cut(t) == _jieba(t), (path.name, t[:40])


def test_the_same_words_and_tags_as_jieba_on_random_strings() -> None:
    """Strings drawn from Chinese of the dictionary and out of it, Latin letters, digits,
    jieba's joiners, brackets, spaces and line ends."""
    warm_up()
    cutter = PosCutter(jieba.posseg.dt)
    rng = random.Random(7)
    alphabet = list("上海汽车集团股份有限公司与签署协议元宇宙产业联盟的在了政府大学和委员会"
                    "國際會議研究院中心科技") + list("aZ09._+#&") + list("（）()·、， \n\r\t") + [
        "\u3400", "\u4dbf", "\u9fd5", "\u9fd6", "\u9fff", "\uf900", "\ufaff", "é"]
    for _ in range(3000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert cutter.cut(t) == _jieba(t), t


def test_a_word_added_later_is_cut_as_jieba_cuts_it() -> None:
    """The dictionary is read on each call: a word added to jieba after the cutter was made
    (with its tag) is cut the same way by both (a tokenizer of its own, so the shared one
    stays as the extractor set it)."""
    jieba.setLogLevel(logging.WARNING)
    pos = jieba.posseg.POSTokenizer(jieba.Tokenizer())
    cutter = PosCutter(pos)
    text = "今天安亭测试词公司成立"
    before = cutter.cut(text)
    assert before == [(w.word, w.flag) for w in pos.lcut(text, HMM=False)]
    pos.tokenizer.add_word("安亭测试词", freq=5000, tag="nt")
    assert ("安亭测试词", "nt") in cutter.cut(text) and cutter.cut(text) != before
    assert cutter.cut(text) == [(w.word, w.flag) for w in pos.lcut(text, HMM=False)]
