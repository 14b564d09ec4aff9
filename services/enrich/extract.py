"""Which organizations a text names, where, and in what role — pure, offline, no I/O.

Three sources of names, in this order of trust:

1. the catalog (:class:`~services.enrich.gazetteer.Gazetteer`): every name and alias;
2. rules for the words organizations end with: ``公司``, ``集团``, ``政府``, ``大学``,
   ``协会``, ``联盟``, ``委员会``… (a run of Chinese words before it, cut with jieba's
   parts of speech at the first verb, preposition or conjunction) and ``Ltd``, ``Inc``,
   ``Group``, ``University``, ``Association``, ``Alliance``, ``Federation``, ``Committee``,
   ``Government``… (a run of capitalised English words ending in one, or starting with one
   and going on with ``of``: "University of Shanghai for Science and Technology");
3. short forms, which are mentions of the organization they stand for: one the text
   defines (``上海汽车集团股份有限公司（以下简称“上汽集团”）``, ``Beijing Institute of
   Technology (BIT)``), the name without its legal suffix (``Pony.ai Inc.`` … ``Pony.ai``),
   and a definite description of its kind after it (``the federation``, ``该联盟``).

A name found twice is one organization: a short form written before the full name
(``长安汽车`` in a headline, ``重庆长安汽车股份有限公司`` after) joins it; a body named
after a catalog organization (``中国移动元宇宙产业联盟``) is not a mention of the latter.
What a signing sets up ("signed … to form a joint venture, X", ``签署…成立合资公司X``) is
found, with the role ``venture``, not ``party``.

What is not an organization: a person, an event (``World Metaverse Conference``,
``论坛``), a vague group (``相关企业``, ``about 20 companies``), and a place named as a
place: a town's or district's name after ``in``, ``at``, ``of``, ``在``, ``位于``… is where
something is, not who does it ("started in Anting Town"; but "signed with Anting Town").

Traditional Chinese is read through its Simplified form, character for character, so
offsets stay the text's. Roles come from the words around a name (:func:`roles`).
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.enrich.gate import Gate
from services.enrich.gazetteer import Gazetteer, fold, unfolded_case
from services.enrich.resolve import has_cjk, is_generic, normalise
from services.enrich.segment import PosCutter

__all__ = [
    "EN_HEADS",
    "ROLES",
    "ZH_SUFFIXES",
    "Found",
    "Span",
    "find_organizations",
    "sentences",
    "warm_up",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]``, code points, ``end`` exclusive."""

    start: int
    end: int
    text: str


@dataclass
class Found:
    """One organization the text names: ``name`` as first written in full, every
    ``mentions`` span, the catalog id when the gazetteer found it, its ``role`` where the
    text says, and ``key``, what tells two found organizations apart."""

    name: str
    key: str
    mentions: list[Span] = field(default_factory=list)
    org_id: str | None = None
    role: str | None = None
    roles: dict[int, str] = field(default_factory=dict)  # mention start → the role said there

    @property
    def first(self) -> int:
        return self.mentions[0].start if self.mentions else 0


# --- sentences ---------------------------------------------------------------------

# each alternative starts with one character (not a class, nor "\n+"), so that the regex
# engine skips to the next of them in C: three times as fast over a document
_SENTENCE_END = re.compile(r"。|！|？|!|\?|；|;|\.(?=\s+[A-Z\"“(\u4e00-\u9fff])|\n\n*")


def sentences(text: str) -> list[tuple[int, int]]:
    """The text cut into sentences (and lines: a headline is one), as ``(start, end)``."""
    out: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.start() if m.group()[0] == "\n" else m.end()
        if text[start:end].strip():
            out.append((start, end))
        start = m.end()
    if text[start:].strip():
        out.append((start, len(text)))
    return out


# --- English rules ------------------------------------------------------------------

# the last word of an organization's English name (or its first, with "of" after it)
EN_HEADS = frozenset("""
Company Corporation Corp Group Holdings Holding Inc Incorporated Ltd Limited LLC GmbH AG SE
PLC Co University College Institute Academy School Association Alliance Federation Society
Committee Commission Council Consortium Foundation Government Ministry Bureau Department
Administration Agency Authority Office Bank Fund Laboratory Laboratories Lab Labs Motors
Motor Automotive Technologies Airlines Media Network Networks Systems Electronics Partners
Capital Ventures Union League Chamber Organization Organisation Secretariat Hospital Press
Studios Zone Park Base Center Centre Daily Times Post Agency Industries Robotics Software
Semiconductor Pharmaceuticals Telecom Communications Mobility Energy Auto
Automobile Automobiles Airways Pharma Biotech Solutions Services Logistics Insurance
Securities Enterprises Conglomerate Cooperative Trust Broadcasting Institution Institutes
Universities Commissions Ministries Councils Federations Associations Alliances
""".split())
# heads that name an organization only with one of these words before them
_QUALIFIED_HEADS = {
    "Center": {"Research", "Innovation", "Data", "Technology", "Development", "Service",
               "Services", "Information", "Testing", "Engineering", "Computing", "Design"},
    "Centre": {"Research", "Innovation", "Data", "Technology", "Development", "Service",
               "Services", "Information", "Testing", "Engineering", "Computing", "Design"},
    "Park": {"Industrial", "Science", "Technology", "Innovation", "Software", "Industry",
             "High-Tech", "Hi-Tech", "Tech", "Business", "Metaverse", "AI"},
    "Base": {"Industry", "Industrial", "Innovation", "Demonstration", "Production"},
    "Energy": {"New"},
    "Auto": {"Li"},
}
# words that end a name without being part of it, and event words: not organizations
_EVENT_HEADS = frozenset("""Conference Forum Summit Expo Exposition Congress Fair Show
Festival Week Awards Games Prix Olympics Exhibition Ceremony Meeting Session Plan Programme
Program Initiative Project Strategy Report Whitepaper Paper Declaration Agreement""".split())
_CONNECTORS = frozenset({"of", "for", "and", "&", "the", "de", "on", "du", "der", "für"})
# a capitalised word at the start of a run that is not part of a name
_LEADING = frozenset("""the a an this that these those during on in at after before
yesterday today tomorrow meanwhile also both and but while when where with by from as
according under among including officials representatives experts leaders delegates
its their our his her chinese china's shanghai's beijing's""".split())
_LEGAL = ("Co., Ltd.", "Co. Ltd.", "Co., Ltd", "Co.,Ltd.", "Ltd.", "Inc.", "Corp.",
          "Limited", "Ltd", "Inc", "LLC", "GmbH", "AG", "PLC", "S.A.", "SE")
_EN_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’.&\-]*[A-Za-z0-9]|[A-Za-z0-9]|&")


def _alternation(words: Iterable[str]) -> str:
    """A pattern matching exactly ``words``, as a tree of their shared beginnings
    ("C(?:o(?:llege|mpany|…)|…)"): the regex engine then tries a few letters at each
    place of a text, not every word (three times as fast here as a flat list)."""
    tree: dict[str, dict[str, Any]] = {}
    for word in words:
        node = tree
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def pattern(node: dict[str, Any]) -> str:
        branches = [re.escape(ch) + pattern(sub) for ch, sub in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if "" in node else body

    return pattern(tree)


# a head word as a word of its own (what any name the head-noun rule finds has)
_EN_HEAD = re.compile(r"(?<![A-Za-z0-9])" + _alternation(EN_HEADS) + r"(?![A-Za-z0-9])")
_EN_GAP = re.compile(r"[ \t]*|[ \t]*-[ \t]*")  # between two words of a name
_EN_LEGAL_TAIL = re.compile(r"^,?\s*(Co\.,?\s*Ltd\.?|Ltd\.?|Inc\.?|Corp\.?|LLC|GmbH|AG|PLC|S\.A\.|Limited)")


def _capitalised(word: str) -> bool:
    return word[:1].isupper() or word[:1].isdigit()


def _english_candidates(text: str, start: int, end: int) -> Iterable[tuple[int, int]]:
    """Spans of English organization names in ``text[start:end]`` by the head-noun rule."""
    if _EN_HEAD.search(text, start, end) is None:
        return  # no head word, no name (most sentences, and every Chinese one)
    words = [(m.start(), m.end(), m.group()) for m in _EN_WORD.finditer(text, start, end)]
    words = [(s, e, w.rstrip(".") if w.endswith(".") and w not in ("Co.", "Inc.", "Ltd.") else w)
             for s, e, w in words]
    runs: list[list[tuple[int, int, str]]] = []
    run: list[tuple[int, int, str]] = []
    for i, (s, e, w) in enumerate(words):
        # a comma, a full stop or a line break between two words ends the run
        joined = bool(run) and _EN_GAP.fullmatch(text, run[-1][1], s) is not None
        if run and not joined:
            runs.append(run)
            run = []
        if _capitalised(w) or (run and w.lower() in _CONNECTORS and i + 1 < len(words)
                               and _capitalised(words[i + 1][2])):
            run.append((s, e, w))
        else:
            if run:
                runs.append(run)
            run = []
    if run:
        runs.append(run)
    split: list[list[tuple[int, int, str]]] = []
    for run in runs:
        # "X Inc. and Y University": two names; "Ministry of Industry and Information
        # Technology": one (no head before its "and")
        part: list[tuple[int, int, str]] = []
        for word in run:
            if word[2] in ("and", "&") and part and part[-1][2].rstrip(".") in EN_HEADS:
                split.append(part)
                part = []
                continue
            part.append(word)
        split.append(part)
    for run in split:
        while run and (run[0][2].lower() in _LEADING or run[0][2].lower() in _CONNECTORS):
            run = run[1:]
        while run and run[-1][2].lower() in _CONNECTORS:
            run = run[:-1]
        if not run:
            continue
        names = [w for _, _, w in run]
        last_head = None
        for i, w in enumerate(names):
            bare = w.rstrip(".")
            if bare in EN_HEADS and (bare not in _QUALIFIED_HEADS
                                     or (i > 0 and names[i - 1] in _QUALIFIED_HEADS[bare])):
                last_head = i
        if last_head is None:
            continue
        stop = last_head
        # "University of X", "Ministry of X": the complement after "of" is the name's
        if stop + 1 < len(names) and names[stop + 1].lower() in ("of", "for"):
            stop = len(names) - 1
            while stop > last_head and names[stop] in _EVENT_HEADS:
                stop -= 1
        if any(n in _EVENT_HEADS for n in names[:stop + 1]) and names[last_head] not in (
                "Committee", "Commission", "Council", "Secretariat", "Office"):
            continue
        first = 0
        if stop == 0 and names[0].rstrip(".") in EN_HEADS:
            continue  # a head alone ("Group", "University") names no one
        s, e = run[first][0], run[stop][1]
        tail = _EN_LEGAL_TAIL.match(text[e:e + 12])
        if tail and names[stop].rstrip(".") not in ("Ltd", "Inc", "Limited", "LLC"):
            e += tail.end()
        elif names[stop] in ("Inc", "Ltd", "Corp", "Co") and text[e:e + 1] == ".":
            e += 1  # the abbreviation's full stop is the name's
        if text[e - 1:e] == "," :
            e -= 1
        yield s, e


# --- Chinese rules -------------------------------------------------------------------

# the words a Chinese organization's name ends with, longest first
ZH_SUFFIXES: tuple[str, ...] = tuple(sorted("""
股份有限公司 有限责任公司 有限公司 集团公司 公司 集团 控股 人民政府 政府 管理委员会 管委会 委员会
大学 学院 研究院 研究所 科学院 工程院 研究中心 创新中心 中心 实验室 协会 学会 联合会 商会 联盟
基金会 银行 办公室 局 部 厅 委 日报 报社 电视台 通讯社 新闻社 产业园 园区 示范区 基地 联合体
汽车 科技 电子 网络 传媒 证券 保险 资本 医院
""".split(), key=len, reverse=True))
# parts of speech of the words that make a Chinese name specific: a place, a proper noun,
# an abbreviation, a foreign word, or a word jieba does not know
_ZH_PROPER_POS = ("ns", "nt", "nz", "nr", "j", "eng", "x")
# what starts a Chinese name only in the middle of a phrase: these end the name on its left
_ZH_STOP_POS = ("v", "p", "c", "u", "d", "r", "w", "y", "e", "o", "q", "m", "t", "f", "x", "ul",
                "uj", "uz", "ug", "ud", "ad", "an", "vn", "ag", "dg")
_ZH_GENERIC_PREFIX = ("该", "本", "这", "此", "各", "其", "多家", "相关", "其他", "一家", "两家", "多个",
                      "有关", "所属", "旗下", "合作", "参与", "知名", "龙头", "领军", "重点")
_ZH_BAD_START = ("的", "和", "与", "及", "、", "在", "于", "由", "等", "是", "将", "已", "为")
_ZH_NAME_VN = ("研究", "发展", "改革", "创新", "管理", "服务", "投资", "控股", "建设", "交流",
               "发展和改革", "信息化", "仿真", "指挥", "控制", "制造", "通信", "出版", "运营", "科技")
_ZH_SUFFIX = re.compile("|".join(map(re.escape, ZH_SUFFIXES)))
_ZH_SUFFIX_SET = frozenset(ZH_SUFFIXES)
_ZH_SUFFIX_LENGTHS = sorted({len(s) for s in ZH_SUFFIXES}, reverse=True)
_ZH_SUFFIX_LAST = frozenset(s[-1] for s in ZH_SUFFIXES)


def _zh_suffix_of(word: str) -> str:
    """The longest of :data:`ZH_SUFFIXES` that ``word`` ends with, or ``""``."""
    if word[-1:] not in _ZH_SUFFIX_LAST:
        return ""  # most words
    for n in _ZH_SUFFIX_LENGTHS:
        if word[-n:] in _ZH_SUFFIX_SET and len(word) >= n:
            return word[-n:]
    return ""


_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff（）()A-Za-z0-9·]+")

_cutter: PosCutter | None = None
# words of the field jieba's dictionary lacks (it splits 元宇宙 into 元 and 宇宙)
_ZH_WORDS = ("元宇宙", "智能网联", "新能源", "数字人", "算力", "白皮书", "大模型")


def _pseg(text: str) -> list[tuple[str, str]]:
    """jieba's words with parts of speech (loaded on first use; its dictionary is
    shipped in the wheel). The dictionary's words only, without jieba's hidden Markov
    model for words it lacks: that model was most of the time of reading a Chinese text,
    and it glues a name to the words around it ("小鹏汽车和赛力斯集团" as one) as often as
    it finds one; a character the dictionary lacks stays a word of its own. Cut by
    :class:`~services.enrich.segment.PosCutter`: jieba's words and tags, faster."""
    global _cutter
    if _cutter is None:
        import jieba
        import jieba.posseg

        jieba.setLogLevel(logging.WARNING)
        for suffix in ZH_SUFFIXES:  # a suffix stays a word of its own where jieba splits
            jieba.suggest_freq(suffix, tune=False)
        for word in _ZH_WORDS:
            jieba.add_word(word, freq=2000, tag="n")
        _cutter = PosCutter(jieba.posseg.dt)
    return _cutter.cut(text)


def warm_up() -> None:
    """Load jieba's dictionary now (a second or two), not on the first document."""
    _pseg("安亭镇人民政府")


def _chinese_candidates(folded: str, start: int, end: int) -> Iterable[tuple[int, int]]:
    """Spans of Chinese organization names in ``folded[start:end]`` (Simplified) by the
    suffix rule: the words before a suffix, back to the first that cannot be in a name."""
    if _ZH_SUFFIX.search(folded, start, end) is None:
        return  # no suffix, no name
    for run in _CJK_RUN.finditer(folded, start, end):
        if _ZH_SUFFIX.search(run.group()) is None:
            continue
        words = _pseg(run.group())
        offsets = []
        pos = run.start()
        for w, flag in words:
            offsets.append((pos, pos + len(w), w, flag))
            pos += len(w)
        for i, (_, e, w, _flag) in enumerate(offsets):
            suffix = _zh_suffix_of(w)
            if not suffix:
                continue
            # a longer suffix ahead ("有限" + "公司"): the name ends there
            if i + 1 < len(offsets) and len(_zh_suffix_of(w + offsets[i + 1][2])) > len(suffix):
                continue
            j = i
            while j > 0:
                pw, pflag = offsets[j - 1][2], offsets[j - 1][3]
                if pw in _ZH_BAD_START or pw in ("（", "）", "(", ")"):
                    break
                if pflag.startswith(_ZH_STOP_POS) and pw not in _ZH_NAME_VN:
                    break
                j -= 1
            # "电动车公司鸿华先进科技股份有限公司": a kind of company ("an EV company") and
            # then its name: the name starts after the kind's suffix
            for k in range(i - 1, j - 1, -1):
                if offsets[k][2] in ("公司", "集团", "企业") and not any(
                        flag.startswith(_ZH_PROPER_POS) for _, _, _, flag in offsets[j:k + 1]):
                    j = k + 1
                    break
            # a word that cannot start a name, glued to the next one by the segmenter ("由其")
            while j < i and offsets[j][2][:1] in _ZH_BAD_START:
                j += 1
            s = offsets[j][0]
            name = folded[s:e]
            if not any(flag.startswith(_ZH_PROPER_POS) for _, _, _, flag in offsets[j:i + 1]
                       if flag != "x" or len(offsets[j][2]) > 0):
                continue  # "元宇宙产业基地", "新能源汽车": a kind of body, no one's name
            # a suffix word alone, a generic phrase ("相关企业", "该公司"), a place word
            # and a kind ("上海市政府" is fine; "市政府" alone is not)
            core = name[: len(name) - len(suffix)] if name.endswith(suffix) else name
            if len(core) < 2 or name.startswith(_ZH_GENERIC_PREFIX):
                continue
            if is_generic(normalise(name)) or core in ("人民", "市", "区", "镇", "省", "县"):
                continue
            yield s, e


# --- names in an actor's place ---------------------------------------------------------
#
# A company is often named without any word of its kind ("Stellantis and Leapmotor
# signed", "奥迪"): where the sentence puts a name — the parties of a signing, a list
# after "founded by", the members a list "包括" names — a capitalised name (English) or a
# run of characters (Chinese) is taken as an organization.

_CAP = r"(?:[A-Z][\w.\-]*|[0-9]+[A-Za-z][\w.\-]*)(?:[ \t]+(?:[A-Z][\w.\-]*))*"
_EN_ACTOR_SLOTS = [re.compile(p) for p in (
    rf"^\s*(?:The\s+)?({_CAP})\s+(?:and|&)\s+(?:the\s+)?({_CAP})\s+(?:have\s+|has\s+|jointly\s+)?(?:signed|inked|agreed)\b",
    rf"^\s*(?:The\s+)?({_CAP})\s+(?:signed|inked)\b",
    rf"\bbetween\s+(?:the\s+)?({_CAP})\s+and\s+(?:the\s+)?({_CAP})",
    rf"\b(?:signed|inked)\b[^.;]*?\bwith\s+(?:the\s+)?({_CAP})",
)]
_EN_BY_LIST = re.compile(
    rf"\b(?:founded|launched|initiated|formed|established|hosted|organi[sz]ed|set\s+up)\s+"
    rf"(?:[\w,]+\s+){{0,5}}?by\s+((?:the\s+)?{_CAP}(?:\s*,\s*(?:and\s+)?(?:the\s+)?{_CAP})*(?:,?\s+and\s+(?:the\s+)?{_CAP})?)")
_EN_MEMBERS = re.compile(
    rf"\b(?:members|partners|exhibitors|participants)\s+(?:include|including|are)\s+"
    rf"((?:the\s+)?{_CAP}(?:\s*,\s*(?:and\s+)?{_CAP})*(?:,?\s+and\s+{_CAP})?)")
# a company named as what was created: "a joint venture, Leapmotor International,", "合资公司零跑国际，"
_EN_NEW_BODY = re.compile(
    rf"\b(?:joint\s+venture|subsidiary|affiliate|spin-?off|start-?up|new\s+company)\s*,?\s+"
    rf"(?:called\s+|named\s+)?({_CAP})")
_ZH_NEW_BODY = re.compile(
    r"(?:成立|设立|组建|创立|创办)(?:了|一家|一个)?(?:合资公司|合资企业|子公司|新公司)([\u3400-\u9fffA-Za-z0-9·]{2,12})(?=[，,。；;、（(])")
_EN_LIST_ITEM = re.compile(rf"(?:the\s+)?({_CAP})")
_ZH_LIST_SEP = re.compile(r"[、,，和及与]")
_MONTHS = frozenset("""January February March April May June July August September October
November December Monday Tuesday Wednesday Thursday Friday Saturday Sunday""".split())
_ZH_RUN = r"[\u3400-\u9fffA-Za-z0-9·]{2,30}?"
_ZH_SIGN_SLOT = re.compile(
    rf"(?:^|[，,。；;：:\s]|日)({_ZH_RUN})(?:与|和|同)({_ZH_RUN})(?:在[\u3400-\u9fff]{{1,8}})?(?:正式|共同|联合|已)?(?:签署|签订|签约)")
_ZH_MEMBERS = re.compile(r"(?:包括|包含)([^。；;]*?)等")


def _en_slot_names(sentence: str, offset: int) -> Iterable[tuple[int, int]]:
    for pattern in _EN_ACTOR_SLOTS:
        m = pattern.search(sentence)
        if m is None:
            continue
        for g in range(1, (m.lastindex or 0) + 1):
            yield from _en_name_at(sentence, m.start(g), m.end(g), offset)
    for m in _EN_NEW_BODY.finditer(sentence):
        yield from _en_name_at(sentence, m.start(1), m.end(1), offset)
    for pattern in (_EN_BY_LIST, _EN_MEMBERS):
        for m in pattern.finditer(sentence):
            for item in _EN_LIST_ITEM.finditer(m.group(1)):
                yield from _en_name_at(sentence, m.start(1) + item.start(1),
                                       m.start(1) + item.end(1), offset)


def _en_name_at(sentence: str, a: int, b: int, offset: int) -> Iterable[tuple[int, int]]:
    """A capitalised name at ``sentence[a:b]``, without trailing words that are not its
    own (a month, "The"), as text offsets."""
    words = sentence[a:b].split()
    while words and (words[-1] in _MONTHS or words[-1].lower() in _LEADING
                     or words[-1].lower() in _CONNECTORS):
        words.pop()
    while words and (words[0].lower() in _LEADING or words[0] in _MONTHS):
        a = sentence.index(words[0], a) + len(words[0])
        words.pop(0)
        a = sentence.index(words[0], a) if words else a
    if not words:
        return
    end = sentence.index(words[-1], a) + len(words[-1])
    start = sentence.index(words[0], a)
    name = sentence[start:end].rstrip(".,")
    if len(name) >= 2 and not is_generic(normalise(name)):
        yield offset + start, offset + start + len(name)


def _zh_slot_names(folded: str, start: int, end: int, may: int = -1) -> Iterable[tuple[int, int]]:
    """Chinese names in an actor's place in ``folded[start:end]`` (``may``: the bits of
    :data:`_SENTENCE_GATE`, the patterns that may match there)."""
    sentence = folded[start:end]
    for m in _ZH_SIGN_SLOT.finditer(sentence) if may & _MAY_ZH_SIGN_SLOT else ():
        for g in (1, 2):
            yield start + m.start(g), start + m.end(g)
    for m in _ZH_NEW_BODY.finditer(sentence) if may & _MAY_ZH_NEW_BODY else ():
        yield start + m.start(1), start + m.end(1)
    for m in _ZH_MEMBERS.finditer(sentence) if may & _MAY_ZH_MEMBERS else ():
        pos = m.start(1)
        for item in _ZH_LIST_SEP.split(m.group(1)):
            if 2 <= len(item.strip()) <= 30:
                i = sentence.index(item, pos)
                yield start + i, start + i + len(item)
            pos += len(item) + 1


# --- short forms and descriptions ---------------------------------------------------

_DEFINED = re.compile(
    r"^\s*[（(]\s*(?:以下简称|以下称|下称|简称|hereinafter(?:\s+referred\s+to\s+as)?|"
    r"the\s+)?\s*[:：]?\s*[“\"「『']?\s*([^”\"」』'）)]{1,30}?)\s*[”\"」』']?\s*[）)]")
_EN_DESCRIPTIONS = ("federation", "alliance", "university", "committee", "association",
                    "company", "group", "institute", "ministry", "commission", "government",
                    "academy", "society", "council", "consortium", "foundation", "bank",
                    "zone", "park", "base", "league", "union", "agency", "bureau", "college",
                    "corporation", "automaker", "carmaker", "firm")
_KIND_WORDS = {  # a description's word → the heads it may stand for
    "automaker": ("motor", "motors", "automotive", "auto", "group", "company", "corporation"),
    "carmaker": ("motor", "motors", "automotive", "auto", "group", "company", "corporation"),
    "firm": ("company", "corporation", "group", "inc", "ltd", "limited", "technologies"),
    "company": ("company", "corporation", "inc", "ltd", "limited", "technologies", "co"),
}
_EN_DESCRIPTION = re.compile(r"\b[Tt]he\s+(" + "|".join(_EN_DESCRIPTIONS) + r")\b")
_ZH_DESCRIPTION = re.compile(r"(?:该|此|这一|这家|本)(" + "|".join(
    ("公司", "集团", "联盟", "协会", "学会", "大学", "委员会", "政府", "基地", "园区", "研究院",
     "联合会", "中心", "企业")) + ")")
_ZH_KIND = {"企业": ("公司", "集团", "汽车", "科技")}


def _is_description(written: str) -> bool:
    return _EN_DESCRIPTION.fullmatch(written) is not None or _ZH_DESCRIPTION.fullmatch(
        fold(written)) is not None


# --- places ------------------------------------------------------------------------

_EN_PLACE_BEFORE = re.compile(
    r"(?:\b(?:in|at|of|from|to|near|across|within|into|around|throughout|outside|inside|"
    r"visit(?:ed)?|based|located|headquartered|home)\s+(?:the\s+)?)$", re.IGNORECASE)
_ZH_PLACE_BEFORE = ("在", "于", "位于", "落户", "来自", "赴", "到", "至", "走进", "落地", "地处",
                    "坐落于", "扎根")
_PLACE_WORDS = ("town", "district", "city", "county", "province", "new area", "village",
                "镇", "区", "市", "县", "省", "新区", "村", "街道")
# :data:`_PLACE_WORDS` less "区" and "市": a name the rules found that ends in one of these
# and is used as a place is taken as a place
_RULE_PLACE_WORDS = tuple(w for w in _PLACE_WORDS if w not in ("区", "市"))


def _as_place(text: str, start: int, written: str) -> bool:
    """Whether a government's place-like name ("Anting Town", "嘉定区") is used as a place
    here: after a word of location. A name that says "government" is never a place."""
    low = written.lower()
    if "government" in low or "政府" in written or "委员会" in written:
        return False
    if not low.endswith(_PLACE_WORDS) and not has_cjk(written):
        # "Pudong", "Jiading": a bare place name is a place unless it acts; treat as place
        return True
    before = text[max(0, start - 24):start]
    if has_cjk(written):
        return before.rstrip().endswith(_ZH_PLACE_BEFORE)
    return _EN_PLACE_BEFORE.search(before) is not None


# --- roles ----------------------------------------------------------------------------

ROLES: tuple[tuple[str, str], ...] = (
    # English: "<verb> by" gives the role to the names after it
    (r"\bco-?(?:hosted|sponsored)\s+by\b", "co-host"),
    (r"\bco-?organi[sz]ed\s+by\b", "co-organizer"),
    (r"\b(?:jointly\s+)?hosted\s+by\b", "host"),
    (r"\b(?:jointly\s+)?(?:organi[sz]ed|undertaken|run)\s+by\b", "organizer"),
    (r"\bsponsored\s+by\b", "sponsor"),
    (r"\bsupported\s+by\b", "supporter"),
    (r"\bguided\s+by|under\s+the\s+guidance\s+of\b", "guide"),
    (r"\b(?:initiated|launched|founded|set\s+up|established|formed)\s+(?:jointly\s+)?by\b", "founder"),
    (r"\breleased\s+by|published\s+by|issued\s+by\b", "publisher"),
    # Chinese: "单位：" lists, and "由…<verb>" (the names between 由 and the verb)
    (r"联合主办单位|共同主办单位|协办单位", "co-organizer"),
    (r"主办单位|主办方", "host"),
    (r"承办单位|承办方|执行单位", "organizer"),
    (r"指导单位", "guide"),
    (r"支持单位", "supporter"),
)
_ROLE_PATTERNS = [(re.compile(p, re.IGNORECASE), role) for p, role in ROLES]
# the same without IGNORECASE, for a folded text (see :func:`gazetteer.unfolded_case`)
_FOLDED_ROLE_PATTERNS = [(re.compile(p), role) for p, role in ROLES]
# one of these is in every match of :data:`ROLES` (in a folded, so lower-case, text)
_ROLE_WORDS = ("by", "under", "单位", "主办方", "承办方")
_ZH_BY = re.compile(r"由([^。；;！!？?]*?)(联合主办|共同主办|主办|承办|协办|指导|支持|发起|牵头|发布)")
_ZH_BY_ROLE = {"联合主办": "host", "共同主办": "host", "主办": "host", "承办": "organizer",
               "协办": "co-organizer", "指导": "guide", "支持": "supporter", "发起": "founder",
               "牵头": "founder", "发布": "publisher"}
_ZH_SUBJECT_VERB = re.compile(r"(联合发起|共同发起|发起成立|牵头成立|牵头|发起|发布|联合主办|共同主办|主办|承办)")
_ZH_SUBJECT_ROLE = {"联合发起": "founder", "共同发起": "founder", "发起成立": "founder",
                    "牵头成立": "founder", "牵头": "founder", "发起": "founder",
                    "发布": "publisher", "联合主办": "host", "共同主办": "host", "主办": "host",
                    "承办": "organizer"}
_EN_SUBJECT_VERB = re.compile(
    r"\b(?:jointly\s+)?(?:founded|launched|initiated|established|set\s+up|formed|released|"
    r"published|unveiled|issued|hosted|organi[sz]ed)\b", re.IGNORECASE)
_EN_SUBJECT_ROLE = {"founded": "founder", "launched": "founder", "initiated": "founder",
                    "established": "founder", "set up": "founder", "formed": "founder",
                    "released": "publisher", "published": "publisher", "issued": "publisher",
                    "unveiled": "publisher", "hosted": "host", "organized": "organizer",
                    "organised": "organizer"}
_CREATES = re.compile(
    r"成立|设立|组建|创立|创办|\b(?:to\s+)?(?:form(?:s|ed|ing)?|set(?:s|ting)?\s+up|"
    r"establish(?:es|ed|ing)?|creat(?:e|es|ed|ing)|launch(?:es|ed|ing)?)\b", re.IGNORECASE)
SIGNING = re.compile(
    r"\b(?:sign(?:s|ed|ing)?|inked|inks|ink)\b|签约|签署|签订|签下|签订了|签署了", re.IGNORECASE)
# the same without IGNORECASE, for a folded text (see :func:`gazetteer.unfolded_case`)
_FOLDED_SIGNING = re.compile(SIGNING.pattern)
_FOLDED_CREATES = re.compile(_CREATES.pattern)
_FOLDED_SUBJECT_VERB = re.compile(_EN_SUBJECT_VERB.pattern)
# which of the patterns :func:`roles` runs may match in which sentence of a folded text
_ROLES_GATE = Gate([*((p, True) for p, _ in _FOLDED_ROLE_PATTERNS), (_ZH_BY, True),
                    (_ZH_SUBJECT_VERB, True), (_FOLDED_SUBJECT_VERB, True), (_FOLDED_SIGNING, True)])
_MAY_ROLE = (1 << len(ROLES)) - 1
_MAY_ZH_BY = 1 << len(ROLES)
_MAY_SUBJECT_VERB = 0b11 << (len(ROLES) + 1)
_MAY_SIGNING = 1 << (len(ROLES) + 3)


def roles(text: str, found: list[Found], folded: str | None = None) -> None:
    """Set each organization's ``role`` where the text says it, sentence by sentence:
    the names after "hosted by", "organized by"…, listed after "主办单位："…, between
    "由" and "主办"…, or before "founded", "发起"…; in a sentence that reports a
    signing, every name without another role is a ``party``. The first role the text
    gives an organization is kept."""
    spans = sorted(((m.start, m.end, f) for f in found for m in f.mentions),
                   key=lambda t: t[0])
    if not spans:
        return
    starts = [a for a, _b, _f in spans]
    # Traditional read as Simplified, offsets unchanged (``folded``: ``fold(text)``, when
    # the caller has it already)
    text = fold(text) if folded is None else folded
    cut = sentences(text)
    if unfolded_case(text):  # the patterns that ignore case: no words to look for first
        role_patterns, subject_verb, signing_re, creates = (
            _ROLE_PATTERNS, _EN_SUBJECT_VERB, SIGNING, _CREATES)
        may_match = [-1] * len(cut)
    else:
        role_patterns, subject_verb, signing_re, creates = (
            _FOLDED_ROLE_PATTERNS, _FOLDED_SUBJECT_VERB, _FOLDED_SIGNING, _FOLDED_CREATES)
        may_match = _ROLES_GATE.masks(text, cut)
    for (s_start, s_end), may in zip(cut, may_match, strict=True):
        inside = spans[bisect_left(starts, s_start):bisect_left(starts, s_end)]
        if not inside:
            continue
        sentence = text[s_start:s_end]
        given: dict[int, str] = {}  # mention start → role
        marks: list[tuple[int, int, str]] = []
        for bit, (pattern, role) in enumerate(
                role_patterns if may & _MAY_ROLE and any(w in sentence for w in _ROLE_WORDS) else ()):
            if not may >> bit & 1:
                continue
            for m in pattern.finditer(sentence):
                a, b = m.start() + s_start, m.end() + s_start
                if any(a < mb and ma < b for ma, mb, _ in marks):
                    continue  # "hosted by" inside "co-hosted by"
                marks.append((a, b, role))
        marks.sort()
        for i, (_a, b, role) in enumerate(marks):
            until = marks[i + 1][0] if i + 1 < len(marks) else s_end
            for ma, _mb, _f in inside:
                if b <= ma < until:
                    given.setdefault(ma, role)
        by_spans = []
        for m in _ZH_BY.finditer(sentence) if may & _MAY_ZH_BY else ():
            role = _ZH_BY_ROLE[m.group(2)]
            by_spans.append((m.start() + s_start, m.end() + s_start))
            for ma, _mb, _f in inside:
                if m.start(1) + s_start <= ma < m.end(1) + s_start:
                    given.setdefault(ma, role)
        # subject and verb, clause by clause: "A、B联合发起", "X released a whitepaper"
        for c_start, c_end in _clauses(sentence, s_start) if may & _MAY_SUBJECT_VERB else ():
            if not any(c_start <= ma < c_end for ma, _mb, _f in inside):
                continue  # no one named here to give a role to
            if any(a < c_end and c_start < b for a, b in by_spans) or any(
                    c_start <= a < c_end for a, _b, _r in marks):
                continue
            clause = text[c_start:c_end]
            verb = _ZH_SUBJECT_VERB.search(clause) or subject_verb.search(clause)
            if verb is None or signing_re.search(clause[:verb.start()]):
                continue
            word = _SPACES.sub(" ", verb.group().lower()).replace("jointly ", "")
            said = _ZH_SUBJECT_ROLE.get(verb.group()) or _EN_SUBJECT_ROLE.get(word)
            # passive English ("was established") names no subject before the verb
            passive = _PASSIVE.search(clause, 0, verb.start())
            if said is None or passive:
                continue
            for ma, _mb, _f in inside:
                if c_start <= ma < verb.start() + c_start:
                    given.setdefault(ma, said)
        signing = signing_re.search(sentence) if may & _MAY_SIGNING else None
        if signing is not None:
            # "signed … to form a joint venture, X": what the signing sets up is no party
            # of it, but the venture it creates
            created = creates.search(sentence, signing.end())
            until = s_start + created.start() if created is not None else s_end
            for ma, _mb, _f in inside:
                given.setdefault(ma, "party" if ma < until else "venture")
        for ma, _mb, f in inside:
            if ma in given:
                f.roles[ma] = given[ma]
                if f.role is None:
                    f.role = given[ma]


_SPACES = re.compile(r"\s+")
_PASSIVE = re.compile(r"\b(?:was|were|is|are|been|be)\s+(?:\w+\s+)?$")
_CLAUSE_END = re.compile(r"[，,；;：:]")


def _clauses(sentence: str, offset: int) -> list[tuple[int, int]]:
    """A sentence's clauses (cut at commas, semicolons, colons), as text offsets."""
    out, start = [], 0
    for m in _CLAUSE_END.finditer(sentence):
        out.append((offset + start, offset + m.start()))
        start = m.end()
    out.append((offset + start, offset + len(sentence)))
    return out


# --- all together -----------------------------------------------------------------------

# the patterns run on each sentence, and which may match in which: one pass over the text
_SENTENCE_GATE = Gate([
    (_FOLDED_SIGNING, True), (_EN_BY_LIST, False), (_EN_MEMBERS, False), (_EN_NEW_BODY, False),
    (_ZH_SIGN_SLOT, True), (_ZH_NEW_BODY, True), (_ZH_MEMBERS, True), (_ZH_SUFFIX, True)])
_MAY_EN_SLOT = 0b1111  # a signing, "founded by", "members include", "a joint venture"
_MAY_ZH_SIGN_SLOT, _MAY_ZH_NEW_BODY, _MAY_ZH_MEMBERS, _MAY_ZH_SUFFIX = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_MAY_ZH_SLOT = _MAY_ZH_SIGN_SLOT | _MAY_ZH_NEW_BODY | _MAY_ZH_MEMBERS


def _key_of(name: str) -> str:
    return normalise(name) or fold(name)


def find_organizations(text: str, gazetteer: Gazetteer, folded: str | None = None,
                       cut: list[tuple[int, int]] | None = None) -> list[Found]:
    """Every organization ``text`` names, in the order it first names them, each with every
    mention (code points of ``text``) and its role where the text says (``folded``:
    ``fold(text)``, and ``cut``: ``sentences(text)``, when the caller has them already).
    Never raises."""
    folded = fold(text) if folded is None else folded
    cut = sentences(text) if cut is None else cut
    taken = _Taken(len(text))
    found: dict[str, Found] = {}
    free = taken.free

    # the catalog's mentions by where they start, while the rules' candidates are weighed
    # against them (None: to be made from ``found`` when next needed)
    catalog_at: dict[int, list[tuple[Found, Span]]] | None = None

    def add(a: int, b: int, key: str, name: str, org_id: str | None = None) -> Found:
        f = found.get(key)
        if f is None:
            f = found[key] = Found(name, key, org_id=org_id)
        span = Span(a, b, text[a:b])
        f.mentions.append(span)
        taken.append((a, b))
        if catalog_at is not None and f.org_id:
            catalog_at.setdefault(a, []).append((f, span))
        return f

    # 1. the catalog
    hits = gazetteer.find(text, folded)
    for n, hit in enumerate(hits):
        written = text[hit.start:hit.end]
        org = gazetteer.organizations[hit.org_id]
        qualifier = (n + 1 < len(hits) and hits[n + 1].start == hit.end
                     and not any(w in written.lower() for w in ("government", "政府")))
        if org.kind.value == "government" and (qualifier or _as_place(text, hit.start, written)):
            # "嘉定区安亭镇人民政府": the district says where the town government is
            taken.append((hit.start, hit.end))  # a place: neither a mention nor a new name
            continue
        add(hit.start, hit.end, "id:" + hit.org_id, written, hit.org_id)
    # 2. the rules, where the catalog found nothing
    candidates: list[tuple[int, int]] = []
    if unfolded_case(folded):  # SIGNING ignores case: no words to look for first
        signing_re, may_match = SIGNING, [-1] * len(cut)
    else:
        signing_re, may_match = _FOLDED_SIGNING, _SENTENCE_GATE.masks(folded, cut)
    for (s_start, s_end), may in zip(cut, may_match, strict=True):
        candidates.extend(_english_candidates(text, s_start, s_end))
        if may & _MAY_ZH_SUFFIX:
            candidates.extend(_chinese_candidates(folded, s_start, s_end))
    # names in an actor's place, where neither the catalog nor a suffix found one
    for (s_start, s_end), may in zip(cut, may_match, strict=True):
        if may & _MAY_EN_SLOT and (
                signing_re.search(folded[s_start:s_end]) or _EN_BY_LIST.search(text[s_start:s_end])
                or _EN_MEMBERS.search(text[s_start:s_end]) or _EN_NEW_BODY.search(text[s_start:s_end])):
            candidates.extend(_en_slot_names(text[s_start:s_end], s_start))
        if may & _MAY_ZH_SLOT:
            candidates.extend(_zh_slot_names(folded, s_start, s_end, may))
    for a, b in sorted(candidates, key=lambda c: (c[0], -(c[1] - c[0]))):
        if not free(a, b):
            if catalog_at is None:
                catalog_at = {}
                for f in found.values():
                    for m in f.mentions if f.org_id else ():
                        catalog_at.setdefault(m.start, []).append((f, m))
            if _named_after(text[a:b], [(f, m) for f, m in catalog_at.get(a, ()) if m.end < b]):
                # "中国移动元宇宙产业联盟", "China Mobile Metaverse Industry Alliance": a body
                # named after its founder is another organization than the founder
                _release(found, taken, a, b)
                catalog_at = None
        if not free(a, b):
            # a longer name around a catalog name ("上海汽车集团股份有限公司" is the
            # catalog's; "SAIC Motor Passenger Vehicle Company" is not): keep the catalog's
            continue
        written = text[a:b]
        key = _key_of(written)
        if not key or is_generic(key):
            continue
        if _as_place(text, a, written) and written.lower().endswith(_RULE_PLACE_WORDS):
            taken.append((a, b))
            continue
        add(a, b, key, written)
    # 3. short forms: defined ones, then names without their legal suffix
    for f in list(found.values()):
        for m in list(f.mentions):
            defined = _DEFINED.match(text[m.end:m.end + 48])
            if defined is None:
                continue
            short = defined.group(1).strip()
            if 2 <= len(short) <= 30 and not is_generic(_key_of(short)):
                _all_of(text, folded, short, f, add, free)
    for f in list(found.values()):
        core = _without_legal_suffix(f.name)
        if core and core != f.name:
            _all_of(text, folded, core, f, add, free)
            # the short form found on its own first ("长安汽车与华为签署" in a headline, then
            # "重庆长安汽车股份有限公司"): one company, not two
            folded_core = fold(core)
            for g in list(found.values()):
                if g is f or f.key not in found or (f.org_id and g.org_id) \
                        or not _same_company(core, g.name, folded_core):
                    continue
                keep, drop = (g, f) if g.org_id else (f, g)  # the catalog's record stays
                keep.mentions.extend(drop.mentions)
                del found[drop.key]
    # 4. descriptions after a name: "the federation", "该联盟"
    ordered = sorted(found.values(), key=lambda f: f.first)
    for pattern, kinds in ((_EN_DESCRIPTION, _KIND_WORDS), (_ZH_DESCRIPTION, _ZH_KIND)):
        for d in pattern.finditer(folded if pattern is _ZH_DESCRIPTION else text):
            if not free(d.start(), d.end()):
                continue
            word = d.group(1).lower()
            heads = kinds.get(word, (word,))
            before = [f for f in ordered if any(s.end <= d.start() for s in f.mentions)
                      and _is_kind(f.name, heads)]
            if before:
                target = max(before, key=lambda f: max(s.end for s in f.mentions if s.end <= d.start()))
                add(d.start(), d.end(), target.key, target.name)
    out = sorted(found.values(), key=lambda f: f.first)
    for f in out:
        f.mentions.sort(key=lambda s: s.start)
        # the name is the fullest form the text writes ("Anting Town Government of Jiading
        # District", not "Anting Town"), never a description ("the federation")
        named = [m.text for m in f.mentions if not _is_description(m.text)]
        record = gazetteer.organizations.get(f.org_id) if f.org_id else None
        official = ({fold(n) for n in (record.name, *record.names.values())}
                    if record is not None else set())
        named_officially = [n for n in named if fold(n) in official]
        if named_officially or named:
            f.name = (named_officially or [max(named, key=len)])[0]
    roles(text, out, folded)
    return out


# kinds of body often named after whoever set them up ("中国移动元宇宙产业联盟")
_NAMED_AFTER_HEADS = frozenset({
    "联盟", "联合会", "委员会", "协会", "学会", "商会", "基金会", "研究院", "研究所", "实验室",
    "联合体", "Alliance", "Association", "Federation", "Committee", "Commission", "Council",
    "Consortium", "Foundation", "Society", "League", "Union", "Chamber", "Institute",
    "Laboratory", "Lab"})


def _named_after(name: str, inside: list[tuple[Found, Span]]) -> bool:
    """Whether ``name``, which starts with a catalog organization's name (``inside``), is
    rather a body of its own named after it: an alliance, a committee, an institute…"""
    return bool(inside) and _head_of(name) in _NAMED_AFTER_HEADS and all(
        _head_of(f.name) not in _NAMED_AFTER_HEADS for f, _ in inside)


class _Taken:
    """The spans of a text already taken (a mention, a place), which never overlap, and a
    mask of their code points, so that whether a span is free is one search."""

    __slots__ = ("mask", "spans")

    def __init__(self, length: int) -> None:
        self.mask = bytearray(length)
        self.spans: list[tuple[int, int]] = []

    def append(self, span: tuple[int, int]) -> None:
        a, b = span
        self.spans.append(span)
        self.mask[a:b] = b"\x01" * (b - a)

    def free(self, a: int, b: int) -> bool:
        """Whether no taken span overlaps ``[a, b)`` (``a < b``)."""
        return self.mask.find(1, a, b) < 0

    def release(self, a: int, b: int) -> None:
        """Forget the spans inside ``[a, b)``."""
        kept = []
        for s, e in self.spans:
            if a <= s and e <= b:
                self.mask[s:e] = bytes(e - s)
            else:
                kept.append((s, e))
        self.spans = kept
        for s, e in kept:  # spans never overlap; if ever one did, it stays taken
            if s < b and a < e:
                self.mask[s:e] = b"\x01" * (e - s)


def _release(found: dict[str, Found], taken: _Taken, a: int, b: int) -> None:
    """Forget the catalog mentions inside ``[a, b)`` (a longer name is there instead)."""
    for key, f in list(found.items()):
        kept = [m for m in f.mentions if not (a <= m.start and m.end <= b)]
        if len(kept) != len(f.mentions):
            f.mentions = kept
            if not kept:
                del found[key]
    taken.release(a, b)


# the words a Chinese company's short name may end with after its brand ("零跑汽车", "零跑科技")
_ZH_TRADE = ("汽车", "科技", "集团", "控股", "股份", "电子", "网络", "动力", "能源", "智能", "")


def _same_company(core: str, other: str, folded_core: str | None = None) -> bool:
    """Whether ``other`` is a short form of the company whose name without its legal form
    is ``core``: the same, or the same brand (its first two characters, not a place) with
    another trade word ("浙江零跑科技股份有限公司": "零跑科技", "零跑汽车")
    (``folded_core``: ``fold(core)``, when the caller has it already)."""
    a, b = fold(core) if folded_core is None else folded_core, fold(other)
    if a == b:
        return True
    if len(a) < 4 or len(b) < 3 or not b.startswith(a[:2]) or not (has_cjk(a) and has_cjk(b)):
        return False
    brand = a[:2]
    if brand in _ZH_REGISTERED_IN or brand in ("中国", "中华", "国家", "全国"):
        return False
    return b.startswith(brand) and a[2:] in _ZH_TRADE and b[2:] in _ZH_TRADE


def _is_kind(name: str, heads: tuple[str, ...]) -> bool:
    """Whether ``name`` is of one of the kinds ``heads`` (English head words, lower-case,
    or Chinese suffixes)."""
    if has_cjk(name):
        simple = fold(name)
        return any(simple.endswith(h) for h in heads)
    return _head_of(name).lower() in heads


def _head_of(name: str) -> str:
    """The word that says what kind of body a name is: its last English head word, or its
    Chinese suffix."""
    if has_cjk(name):
        simple = fold(name)
        return next((s for s in ZH_SUFFIXES if simple.endswith(s)), "")
    words = [w.rstrip(".,") for w in name.split()]
    for w in reversed(words):
        if w in EN_HEADS:
            return w
    return words[-1] if words else ""


_ZH_LEGAL = ("股份有限公司", "有限责任公司", "有限公司")
# where Chinese companies are registered, as their names begin
_ZH_REGISTERED_IN = ("北京", "上海", "天津", "重庆", "浙江", "江苏", "广东", "深圳", "杭州", "广州",
                     "安徽", "山东", "湖北", "四川", "福建", "河北", "河南", "湖南", "江西", "辽宁",
                     "吉林", "黑龙江", "陕西", "山西", "云南", "贵州", "广西", "海南", "甘肃",
                     "宁夏", "青海", "新疆", "西藏", "内蒙古", "苏州", "南京", "武汉", "成都", "合肥")


_EN_LEGAL_END = re.compile(
    r",?\s+(Co\.,?\s*Ltd\.?|Ltd\.?|Inc\.?|Corp\.?|Corporation|Limited|LLC|GmbH|AG|PLC)$")


def _without_legal_suffix(name: str) -> str | None:
    """A company's name without its legal form, when what is left still names it:
    ``Pony.ai Inc.`` → ``Pony.ai``, ``宁德时代新能源科技股份有限公司`` →
    ``宁德时代新能源科技``; None otherwise."""
    if has_cjk(name):
        simple = fold(name)
        for s in _ZH_LEGAL:
            if simple.endswith(s) and len(simple) - len(s) >= 4:
                core = name[: len(name) - len(s)]
                # "重庆长安汽车" is written "长安汽车": the place it is registered in goes too
                place = next((p for p in _ZH_REGISTERED_IN if simple.startswith(p)), None)
                if place is not None and len(core) - len(place) >= 4:
                    core = core[len(place):]
                return core
        return None
    m = _EN_LEGAL_END.search(name)
    if m and len(name[:m.start()]) >= 3 and not is_generic(_key_of(name[:m.start()])):
        return name[:m.start()]
    return None


def _all_of(text: str, folded: str, short: str, f: Found, add: object, free: object) -> None:
    """Every free occurrence of ``short`` in ``text``, at word boundaries when Latin, as a
    mention of ``f``."""
    key = fold(short)
    latin = not has_cjk(short)
    i = folded.find(key)
    while i >= 0:
        j = i + len(key)
        ok = not latin or ((i == 0 or not text[i - 1].isalnum())
                           and (j >= len(text) or not text[j].isalnum())
                           and text[i:j] == short)
        if ok and free(i, j):  # type: ignore[operator]
            add(i, j, f.key, f.name)  # type: ignore[operator]
        i = folded.find(key, j)
