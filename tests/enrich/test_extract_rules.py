"""General rules of the documents stage's extractor, on texts written for these tests (not
the gold set's): what a signing creates is not one of its parties, a short form found
before the full name is the same company, a kind of company before a name is not the
name, a body named after a catalog organization is another one. Every span is exact."""

from __future__ import annotations

from typing import Any

from services.enrich.reports import read_document
from tests.enrich.test_documents import GAZETTEER, doc


def _orgs(text: str) -> list[tuple[str, list[tuple[str | None, list[str]]]]]:
    report = read_document(doc(text), GAZETTEER)
    out: list[tuple[str, list[Any]]] = []
    for e in report.events:
        for o in e["data"]["organizations"]:
            assert all(text[m["start"]:m["end"]] == m["text"] for m in o["mentions"])
        out.append((e["type"], [(o["name"], o.get("role"), [m["text"] for m in o["mentions"]])
                                for o in e["data"]["organizations"]]))
    return out


def test_what_a_signing_creates_is_a_venture_not_a_party() -> None:
    """"A and B signed … to form a joint venture, C": A and B are parties, C the venture."""
    [(etype, orgs)] = _orgs("Acme Motors and Borealis Energy signed an agreement to form a "
                            "joint venture, Gamma Mobility, in Hefei.")
    assert etype == "agreement.signed"
    assert [(n, r) for n, r, _ in orgs] == [("Acme Motors", "party"), ("Borealis Energy", "party"),
                                            ("Gamma Mobility", "venture")]


def test_a_short_form_written_first_is_the_same_company() -> None:
    """A headline's "小鹏汽车" and the body's "广州小鹏科技股份有限公司" are one organization;
    the venture set up ("成立合资公司鹏众智行") is found and is no party."""
    events = _orgs("小鹏汽车与大众签约\n\n广州小鹏科技股份有限公司与大众汽车集团签署合作协议，"
                   "双方将成立合资公司鹏众智行，负责软件研发。")
    names = {n: (r, m) for _, orgs in events for n, r, m in orgs}
    assert names["小鹏汽车"][1] == ["小鹏汽车", "广州小鹏科技股份有限公司"]
    assert names["鹏众智行"][0] == "venture"


def test_a_kind_of_company_before_a_name_is_not_part_of_it() -> None:
    """"共同成立电动车公司鸿远智能科技股份有限公司": the name starts after "电动车公司"."""
    events = _orgs("甲方与乙方签署协议，共同成立电动车公司鸿远智能科技股份有限公司。")
    names = [n for _, orgs in events for n, _, _ in orgs]
    assert "鸿远智能科技股份有限公司" in names
    assert not any(n.startswith("电动车") for n in names)


def test_a_body_named_after_a_catalog_organization_is_another_one() -> None:
    """"SAIC Motor Software Alliance" is an alliance, not a mention of SAIC Motor."""
    [(_, orgs)] = _orgs("The SAIC Motor Software Alliance was launched in Shanghai.")
    assert [n for n, _, _ in orgs] == ["SAIC Motor Software Alliance"]


def test_the_head_word_pattern_finds_each_head_as_a_word_and_nothing_else() -> None:
    """The head words' pattern (a tree of their letters) matches every head alone, and no
    head inside a longer word."""
    from services.enrich.extract import _EN_HEAD, EN_HEADS

    for head in EN_HEADS:
        assert _EN_HEAD.fullmatch(head), head
        assert _EN_HEAD.search(f"the {head}, ") is not None
        assert _EN_HEAD.search(f"x{head} {head}s {head}1") is None or head + "s" in EN_HEADS
    assert _EN_HEAD.search("Companyx Groups university") is None


def test_sentence_ends_are_the_punctuation_a_full_stop_before_a_capital_and_line_breaks() -> None:
    """The sentence-end pattern (written for speed) finds what its plain form finds: one of
    。！？!?；;, a full stop before spaces and a capital, a quote, a bracket or a CJK
    character, or a run of line breaks; on random strings of those characters."""
    import random
    import re

    from services.enrich.extract import _SENTENCE_END

    plain = re.compile(r"[。！？!?；;]|\.(?=\s+[A-Z\"“(\u4e00-\u9fff])|\n+")
    rng = random.Random(3)
    alphabet = list("。！？!?；;. \n\tAa\"“(（中x1")
    for _ in range(3000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert [m.span() for m in _SENTENCE_END.finditer(t)] == [m.span() for m in plain.finditer(t)], t
