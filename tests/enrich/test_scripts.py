"""Traditional and Simplified Chinese spellings of a name resolve to the same record."""

from __future__ import annotations

import opencc
import pytest

from services.enrich import resolve
from services.enrich.catalog import shipped
from services.enrich.resolve import (
    GENERIC_CJK,
    CatalogIndex,
    build_index,
    has_cjk,
    normalise,
    to_simplified,
)
from shared.events import MatchMethod
from shared.organizations import Organization, OrganizationKind

# the other direction, to write the Traditional forms the tests look up
S2T = opencc.OpenCC("s2t")
S2HK = opencc.OpenCC("s2hk")
S2TW = opencc.OpenCC("s2tw")


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return build_index(shipped())


def _chinese_names() -> list[tuple[str, str]]:
    """Every Chinese official name and alias in the shipped catalog, with its record's id."""
    out = []
    for o in shipped():
        for n in [*o.names.values(), *o.aliases]:
            if has_cjk(n):
                out.append((n, o.id))
    return sorted(set(out))


@pytest.mark.parametrize("traditional,simplified,org_id", [
    ("安亭鎮人民政府", "安亭镇人民政府", "anting-town-government"),
    ("同濟大學", "同济大学", "tongji-university"),
    ("上海汽車集團股份有限公司", "上海汽车集团股份有限公司", "saic-motor"),
])
def test_traditional_resolves_like_simplified(
    index: CatalogIndex, traditional: str, simplified: str, org_id: str
) -> None:
    """The Traditional spelling finds the record its Simplified form names, as surely."""
    trad, simp = index.resolve(traditional), index.resolve(simplified)
    assert simp.organization is not None and simp.organization.id == org_id
    assert trad.organization is not None and trad.organization.id == org_id
    assert trad.method == simp.method and trad.method in (MatchMethod.exact, MatchMethod.alias)
    assert trad.score == 100.0


@pytest.mark.parametrize("simplified,org_id", [
    # the seed story's organizations and the field around it, as the catalog spells them
    ("中国仿真学会", "china-simulation-federation"),
    ("中国指挥与控制学会", "chinese-institute-of-command-and-control"),
    ("北京理工大学", "beijing-institute-of-technology"),
    ("北理工", "beijing-institute-of-technology"),
    ("安亭镇", "anting-town-government"),
    ("上海市嘉定区人民政府", "jiading-district-government"),
    ("上海市元宇宙产业创新联盟", "shanghai-metaverse-industry-innovation-alliance"),
    ("上海国际赛车场", "shanghai-international-circuit"),
    ("上海国际汽车城（集团）有限公司", "shanghai-international-automobile-city"),
    ("上汽大众汽车有限公司", "saic-volkswagen"),
    ("上汽集团", "saic-motor"),
    ("上海交通大学", "shanghai-jiao-tong-university"),
    ("复旦大学", "fudan-university"),
    ("蔚来汽车", "nio"),
])
@pytest.mark.parametrize("converter", [S2T, S2HK, S2TW], ids=["s2t", "s2hk", "s2tw"])
def test_seed_kind_names_in_traditional(
    index: CatalogIndex, converter: opencc.OpenCC, simplified: str, org_id: str
) -> None:
    """Catalog names of the seed's kind, written in Traditional (standard, HK, TW), resolve exactly."""
    traditional = converter.convert(simplified)
    res = index.resolve(traditional)
    assert res.organization is not None and res.organization.id == org_id, (traditional, res)
    assert res.method in (MatchMethod.exact, MatchMethod.alias) and res.score == 100.0


def test_every_chinese_catalog_name_in_traditional(index: CatalogIndex) -> None:
    """Every Chinese name and alias of the shipped catalog, converted to Traditional, finds its record."""
    missed = []
    for simplified, org_id in _chinese_names():
        for converter in (S2T, S2HK, S2TW):
            res = index.resolve(converter.convert(simplified))
            if res.organization is None or res.organization.id != org_id or res.score != 100.0:
                missed.append((simplified, converter.convert(simplified), org_id, res))
    assert not missed


def _small_catalog() -> CatalogIndex:
    return build_index([
        Organization(id="national-taiwan-university", name="National Taiwan University",
                     names={"en": "National Taiwan University", "zh": "國立臺灣大學"},
                     aliases=["臺大", "NTU"], kind=OrganizationKind.academic),
        Organization(id="hk-department-of-health", name="Department of Health (Hong Kong)",
                     names={"zh": "衞生署"}, kind=OrganizationKind.government),
    ])


@pytest.mark.parametrize("name,org_id,method", [
    ("国立台湾大学", "national-taiwan-university", MatchMethod.exact),
    ("國立臺灣大學", "national-taiwan-university", MatchMethod.exact),
    ("國立台灣大學", "national-taiwan-university", MatchMethod.exact),  # 台 for 臺, as often written
    ("台大", "national-taiwan-university", MatchMethod.alias),
    ("臺大", "national-taiwan-university", MatchMethod.alias),
    ("卫生署", "hk-department-of-health", MatchMethod.exact),
    ("衛生署", "hk-department-of-health", MatchMethod.exact),  # standard Traditional vs HK 衞
])
def test_traditional_catalog_entry_found_by_simplified(name: str, org_id: str, method: MatchMethod) -> None:
    """A catalog that spells a name or alias in Traditional is found by a Simplified mention."""
    res = _small_catalog().resolve(name)
    assert res.organization is not None and res.organization.id == org_id, (name, res)
    assert res.method == method and res.score == 100.0


@pytest.mark.parametrize("name,org_id", [
    ("同濟大学", "tongji-university"),  # Traditional and Simplified characters in one name
    ("上海汽車集团股份有限公司", "saic-motor"),
    ("安亭鎮人民政府（Anting Town Government）", "anting-town-government"),
    ("Tongji University (同濟大學)", "tongji-university"),
    ("北京理工大學 (BIT)", "beijing-institute-of-technology"),
    ("Ｂ站", "bilibili"),  # a Latin letter inside a Chinese alias, full width
    ("嗶哩嗶哩", "bilibili"),
])
def test_mixed_scripts(index: CatalogIndex, name: str, org_id: str) -> None:
    """Names mixing Traditional with Simplified, or Chinese with Latin, resolve exactly."""
    res = index.resolve(name)
    assert res.organization is not None and res.organization.id == org_id, (name, res)
    assert res.method in (MatchMethod.exact, MatchMethod.alias) and res.score == 100.0


def test_fuzzy_matches_on_the_folded_form(index: CatalogIndex) -> None:
    """A Traditional near spelling (和 for 与) fuzzy-matches like its Simplified form."""
    simp = index.resolve("中国指挥和控制学会")
    trad = index.resolve("中國指揮和控制學會")
    assert trad.organization is not None
    assert trad.organization.id == "chinese-institute-of-command-and-control"
    assert trad.method == MatchMethod.fuzzy and trad.score == simp.score and 88 <= trad.score < 100


@pytest.mark.parametrize("name", ["上海", "上海市", "集團", "聯盟", "協會", "人民政府", "委員會",
                                  "安亭", "學院", "產業", "中華", "集團有限公司"])
def test_traditional_near_misses_do_not_resolve(index: CatalogIndex, name: str) -> None:
    """Generic words in Traditional are as generic as in Simplified: no match."""
    assert index.resolve(name).organization is None, name


@pytest.mark.parametrize("traditional,key", [
    ("安亭鎮人民政府", "安亭镇"),  # the suffix 人民政府 is stripped after the fold
    ("上海汽車集團股份有限公司", "上海汽车集团"),
    ("上海國際汽車城（集團）有限公司", "上海国际汽车城"),
    ("上海聯和投資有限責任公司", "上海联和投资"),
    ("香港衞生署", "香港卫生署"),
])
def test_normalise_folds_to_simplified(traditional: str, key: str) -> None:
    """normalise() gives a Traditional name the key of its Simplified form."""
    assert normalise(traditional) == key


@pytest.mark.parametrize("converter", [S2T, S2HK, S2TW], ids=["s2t", "s2hk", "s2tw"])
def test_traditional_and_simplified_share_a_key(converter: opencc.OpenCC) -> None:
    """Every Chinese catalog name and its Traditional form normalise to the same key."""
    for name, _ in _chinese_names():
        assert normalise(converter.convert(name)) == normalise(name), name


def test_simplified_is_left_as_it_is() -> None:
    """Simplified text (catalog names, generic words, suffixes) is a fixed point of the fold."""
    for name, _ in _chinese_names():
        assert to_simplified(name) == name
    for word in [*GENERIC_CJK, *resolve._ZH_SUFFIXES]:
        assert to_simplified(word) == word


def test_non_chinese_names_skip_the_converter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name without CJK never reaches OpenCC and normalises as before."""

    def refuse(text: str) -> str:
        raise AssertionError(f"converter called for {text!r}")

    monkeypatch.setattr(resolve, "to_simplified", refuse)
    resolve._fold.cache_clear()
    assert normalise("SAIC Motor Co., Ltd.") == "saic motor"
    assert normalise("ＳＡＩＣ　Ｍｏｔｏｒ") == "saic motor"
    assert normalise("Zürich Versicherungs-Gesellschaft AG") == "zürich versicherungs gesellschaft"
    assert normalise("Tongji University") == "tongji university"
    for o in shipped():
        normalise(o.name)
    resolve._fold.cache_clear()


def test_conversions_are_cached() -> None:
    """A name folded once is not converted again (names repeat across events and rebuilds)."""
    resolve._fold.cache_clear()
    normalise("國立臺灣大學")
    before = resolve._fold.cache_info()
    normalise("國立臺灣大學")
    after = resolve._fold.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
