"""Resolution as a pure function: normalisation, exact → alias → fuzzy, and the guards."""

from __future__ import annotations

import pytest

from services.enrich.catalog import shipped
from services.enrich.resolve import CatalogIndex, build_index, normalise
from shared.events import MatchMethod
from shared.organizations import OrganizationKind
from tests.enrich.seed import SEED_NAMES


@pytest.fixture(scope="module")
def index() -> CatalogIndex:
    return build_index(shipped())


def test_catalog_is_large_and_consistent() -> None:
    """The shipped catalog has the seed organizations plus ≥100 more, unique ids, known parents."""
    orgs = shipped()
    ids = [o.id for o in orgs]
    assert len(ids) == len(set(ids))
    assert len(orgs) >= len(set(SEED_NAMES.values())) + 100
    for o in orgs:
        assert o.parent is None or o.parent in ids, o.id
    kinds = {o.kind for o in orgs}
    assert {OrganizationKind.government, OrganizationKind.academic, OrganizationKind.enterprise,
            OrganizationKind.alliance, OrganizationKind.venue} <= kinds


@pytest.mark.parametrize("name,org_id", sorted(SEED_NAMES.items()))
def test_every_seed_organization_resolves(index: CatalogIndex, name: str, org_id: str) -> None:
    """Every organization of the seed story resolves to its record, in English or Chinese."""
    res = index.resolve(name)
    assert res.organization is not None and res.organization.id == org_id
    assert res.method in (MatchMethod.exact, MatchMethod.alias) and res.score == 100.0


@pytest.mark.parametrize("raw,expected", [
    ("ＳＡＩＣ　Ｍｏｔｏｒ", "saic motor"),
    ("SAIC Motor Co., Ltd.", "saic motor"),
    ("  The   Khronos  Group, Inc. ", "khronos group"),
    ("安亭镇人民政府", "安亭镇"),
    ("上海国际汽车城（集团）有限公司", "上海国际汽车城"),
    ("Anting Town Government", "anting town"),
    ("Shanghai Government", "shanghai government"),  # suffix kept: "shanghai" alone is generic
    ("Jing'an District", "jingan district"),
])
def test_normalise(raw: str, expected: str) -> None:
    """Width, case, punctuation, whitespace and legal suffixes are folded away."""
    assert normalise(raw) == expected


@pytest.mark.parametrize("name,org_id,method", [
    ("SAIC Motor Co., Ltd.", "saic-motor", MatchMethod.exact),
    ("上汽集团", "saic-motor", MatchMethod.alias),
    ("Beijing Institute of Technology (BIT)", "beijing-institute-of-technology", MatchMethod.exact),
    ("ＢＩＴ", "beijing-institute-of-technology", MatchMethod.alias),
    ("Tesla Inc", "tesla", MatchMethod.exact),
    ("Beijing Institute of Technolgy", "beijing-institute-of-technology", MatchMethod.fuzzy),
    ("China Simulaton Federation", "china-simulation-federation", MatchMethod.fuzzy),
    ("Shanghai Jiao Tong Universty", "shanghai-jiao-tong-university", MatchMethod.fuzzy),
    ("SAIC Volkswagon", "saic-volkswagen", MatchMethod.fuzzy),
])
def test_methods(index: CatalogIndex, name: str, org_id: str, method: MatchMethod) -> None:
    """The match records how it was found: exact name, alias, or fuzzy with its score."""
    res = index.resolve(name)
    assert res.organization is not None and res.organization.id == org_id
    assert res.method == method
    assert (res.score == 100.0) if method != MatchMethod.fuzzy else (88 <= res.score < 100)


@pytest.mark.parametrize("name", [
    "Shanghai", "上海", "Alliance", "Government", "Group", "Town", "China", "Anting", "安亭",
    "Anting Road", "Anting Roads", "Beijing Institute", "Shanghai Metaverse Alliance",
    "Metaverse Industry Alliance", "Shanghai Institute of Technolgy Park", "Jiading Road",
    "Beijing Institute of Fashion Technology", "Xuhui Road", "BIT Coin", "Bosch Rexroth Shanghai Ltd",
])
def test_near_misses_do_not_resolve(index: CatalogIndex, name: str) -> None:
    """Short, generic or different names never match (no fuzzy false positives)."""
    res = index.resolve(name)
    assert res.organization is None, (name, res)


def test_bit_mining_is_not_bit(index: CatalogIndex) -> None:
    """"BIT Mining" is its own record, never the Beijing Institute of Technology (BIT)."""
    assert index.resolve("BIT Mining").organization.id == "bit-mining"  # type: ignore[union-attr]
    without = build_index([o for o in shipped() if o.id != "bit-mining"])
    assert without.resolve("BIT Mining").organization is None


def test_threshold_is_configurable() -> None:
    """A stricter threshold turns a fuzzy match into no match."""
    strict = build_index(shipped(), threshold=99.5)
    assert strict.resolve("China Simulaton Federation").organization is None
