"""The documents gold set and its scorer: short articles written for it from public facts
(conference openings, alliances founded, signings), each with the organizations, roles,
agreement parties and type a careful reader finds (``gold/<name>.txt`` and
``gold/<name>.json``), scored against enrich's documents stage, offline.

``python -m bench.documents`` prints the figures (:func:`score`), and the throughput of
:func:`~services.enrich.reports.read_document` beside that of jieba alone on the same
texts: the gold texts as they are, and the gold texts joined into documents of about
3 KB of mixed English and Chinese (:func:`corpus`). The annotation rules are in
``gold/README.md``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.enrich.catalog import shipped
from services.enrich.extract import warm_up
from services.enrich.gazetteer import Gazetteer, fold
from services.enrich.reports import Report, read_document
from services.enrich.resolve import CatalogIndex, build_index, normalise
from shared.documents import Document
from shared.events import AGREEMENT

GOLD = Path(__file__).resolve().parent / "gold"
# written after the extractor's rules, and never looked at while writing them: the
# figures on these say how the rules carry to articles they were not fitted to
UNSEEN = Path(__file__).resolve().parent / "unseen"
SEED = "seed-world-metaverse-conference"

# the size of a document of the throughput corpus (UTF-8 bytes, at least)
DOCUMENT_BYTES = 3 * 1024

__all__ = ["DOCUMENT_BYTES", "GOLD", "SEED", "UNSEEN", "Gold", "Scores", "corpus", "load", "main",
           "rates", "score", "score_one"]


@dataclass
class Gold:
    """One gold document: its ``name``, ``text`` and what a careful reader finds in it."""

    name: str
    text: str
    truth: dict[str, Any]

    def document(self) -> Document:
        return Document(id=self.name, source="/bench/gold", media_type="text/plain",
                        text=self.text, received_at=datetime(2024, 1, 1, tzinfo=UTC))


def load(directory: Path = GOLD) -> list[Gold]:
    """Every ``<name>.txt`` with its ``<name>.json``, by name."""
    return [Gold(p.stem, p.read_text(encoding="utf-8"),
                 orjson.loads(p.with_suffix(".json").read_bytes()))
            for p in sorted(directory.glob("*.txt"))]


@dataclass
class Scores:
    """Counts summed over documents (micro averages)."""

    org_tp: int = 0
    org_pred: int = 0
    org_gold: int = 0
    pair_tp: int = 0
    pair_pred: int = 0
    pair_gold: int = 0
    types_right: int = 0
    documents: int = 0
    roles_right: int = 0
    roles_gold: int = 0
    bad_spans: int = 0
    misses: list[str] = field(default_factory=list)

    def add(self, other: Scores) -> None:
        for name in ("org_tp", "org_pred", "org_gold", "pair_tp", "pair_pred", "pair_gold",
                     "types_right", "documents", "roles_right", "roles_gold", "bad_spans"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.misses.extend(other.misses)

    @staticmethod
    def _ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    @property
    def precision(self) -> float:
        return self._ratio(self.org_tp, self.org_pred)

    @property
    def recall(self) -> float:
        return self._ratio(self.org_tp, self.org_gold)

    @staticmethod
    def _f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def f1(self) -> float:
        return self._f1(self.precision, self.recall)

    @property
    def pair_f1(self) -> float:
        return self._f1(self._ratio(self.pair_tp, self.pair_pred),
                        self._ratio(self.pair_tp, self.pair_gold))

    @property
    def type_accuracy(self) -> float:
        return self._ratio(self.types_right, self.documents)

    @property
    def role_accuracy(self) -> float:
        return self._ratio(self.roles_right, self.roles_gold)


def _forms(names: list[str]) -> set[str]:
    return {f for n in names for f in (normalise(n), fold(n).strip()) if f}


def score_one(gold: Gold, report: Report, index: CatalogIndex) -> Scores:
    """One document's counts: organizations matched one to one (a predicted organization
    is a gold one when one of its names or mentions is one of the gold one's names, folded,
    or both resolve to the same catalog record), agreement pairs over the matched
    organizations, the document's type, the roles of matched organizations."""
    s = Scores(documents=1)
    text = gold.text
    predicted: dict[str, dict[str, Any]] = {}
    for event in report.events:
        for org in event["data"]["organizations"]:
            predicted.setdefault(org["name"], org)
            for m in org["mentions"]:
                if text[m["start"]:m["end"]] != m["text"]:
                    s.bad_spans += 1
    golds = gold.truth["organizations"]

    def ids(names: list[str]) -> set[str]:
        return {r.organization.id for n in names
                if (r := index.resolve(n)).organization is not None}

    gold_forms = [(_forms([g["name"], *g.get("also", [])]), ids([g["name"], *g.get("also", [])]))
                  for g in golds]
    match: dict[str, int] = {}  # predicted name → gold index
    for name, org in predicted.items():
        names = [name, *(m["text"] for m in org["mentions"])]
        forms, found_ids = _forms(names), ids(names)
        for i, (gf, gi) in enumerate(gold_forms):
            if i in match.values():
                continue
            if forms & gf or found_ids & gi:
                match[name] = i
                break
    s.org_pred, s.org_gold, s.org_tp = len(predicted), len(golds), len(match)
    s.misses += [f"{gold.name}: extra {n!r}" for n in predicted if n not in match]
    s.misses += [f"{gold.name}: missed {g['name']!r}" for i, g in enumerate(golds)
                 if i not in match.values()]
    for name, i in match.items():
        want = golds[i].get("role")
        if want is not None:
            s.roles_gold += 1
            got = {o.get("role") for e in report.events for o in e["data"]["organizations"]
                   if o["name"] == name}
            s.roles_right += want in got
    index_of = {g["name"]: i for i, g in enumerate(golds)}
    gold_pairs = {frozenset(p) for parties in gold.truth.get("agreements", [])
                  for p in itertools.combinations(sorted(index_of[n] for n in parties), 2)}
    pred_pairs = set()
    for event in report.events:
        if event["type"] != AGREEMENT:
            continue
        parties = sorted({match.get(o["name"], -1 - hash(o["name"]) % 10_000)
                          for o in event["data"]["organizations"] if o.get("role") == "party"})
        pred_pairs |= {frozenset(p) for p in itertools.combinations(parties, 2)}
    s.pair_gold, s.pair_pred = len(gold_pairs), len(pred_pairs)
    s.pair_tp = len(gold_pairs & pred_pairs)
    s.types_right = int(report.kind == gold.truth["type"])
    if not s.types_right:
        s.misses.append(f"{gold.name}: type {report.kind} (gold {gold.truth['type']})")
    return s


def corpus(golds: list[Gold], size: int = DOCUMENT_BYTES) -> list[Document]:
    """Documents of about ``size`` bytes of mixed English and Chinese, one for each of
    ``golds`` but the seed article (longer than a document alone): the texts taken English
    and Chinese in turn (by name), the ``n``-th document starting at the ``n``-th of them
    and going on round the cycle, line by line, until it is ``size`` bytes long. Always
    the same documents."""
    golds = [g for g in golds if g.name != SEED]
    english = [g for g in golds if g.truth["language"] != "zh"]
    chinese = [g for g in golds if g.truth["language"] == "zh"]
    cycle = [g for pair in itertools.zip_longest(english, chinese) for g in pair if g is not None]
    docs = []
    for n in range(len(cycle)):
        lines: list[str] = []
        k, used = n, 0
        while used < size:
            for line in [*cycle[k % len(cycle)].text.strip().splitlines(), ""]:
                lines.append(line)
                used += len(line.encode()) + 1
                if used >= size:
                    break
            k += 1
        docs.append(Document(id=f"mixed-{n}", source="/bench/mixed", media_type="text/plain",
                             text="\n".join(lines).strip() + "\n",
                             received_at=datetime(2024, 1, 1, tzinfo=UTC)))
    return docs


def rates(docs: list[Document], gazetteer: Gazetteer, rounds: int = 10) -> tuple[float, float]:
    """Documents per second through :func:`~services.enrich.reports.read_document` (the
    extraction and the events: what the documents stage calls for each record), and the
    baseline, documents per second that jieba alone segments (``jieba.lcut``) on the same
    texts: reading a document is that and the rest, so the ratio says what the rest costs.
    One thread, in this process, after a warm-up; ``rounds`` passes over ``docs`` of each,
    taken in turn, and each the fastest of its passes (on a machine shared with other
    work, the pass least disturbed by it)."""
    import jieba

    warm_up()  # jieba's dictionary loads on first use
    for d in docs:
        read_document(d, gazetteer)
    read, segment = float("inf"), float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for d in docs:
            read_document(d, gazetteer)
        t1 = time.perf_counter()
        for d in docs:
            jieba.lcut(d.text)
        t2 = time.perf_counter()
        read, segment = min(read, t1 - t0), min(segment, t2 - t1)
    return len(docs) / read, len(docs) / segment


def score(golds: list[Gold] | None = None) -> tuple[Scores, Scores]:
    """All documents' counts and the seed's alone (the shipped catalog)."""
    golds = load() if golds is None else golds
    catalog = shipped()
    gazetteer = Gazetteer(catalog)
    index = build_index(catalog)
    warm_up()
    total, seed = Scores(), Scores()
    for gold in golds:
        one = score_one(gold, read_document(gold.document(), gazetteer), index)
        total.add(one)
        if gold.name == SEED:
            seed.add(one)
    return total, seed


def _kb(docs: list[Document]) -> float:
    return sum(len(d.text.encode()) for d in docs) / len(docs) / 1024


def _throughput(label: str, docs: list[Document], rounds: int) -> None:
    rate, baseline = rates(docs, Gazetteer(shipped()), rounds)
    print(f"throughput, {label}: {len(docs)} documents of {_kb(docs):.1f} KB on average: "
          f"read_document {rate:.1f} documents/s (one core, in-process, offline); jieba.lcut "
          f"alone {baseline:.1f} documents/s: {rate / baseline:.2f}x")


def _print(label: str, golds: list[Gold]) -> None:
    total, seed = score(golds)
    zh = sum(g.truth["language"] == "zh" for g in golds)
    hant = sum(g.truth.get("script") == "hant" for g in golds)
    print(f"{label}: {len(golds)} documents ({zh} Chinese, {hant} of them Traditional; "
          f"{len(golds) - zh} English), {total.org_gold} organizations, "
          f"{total.pair_gold} agreement pairs")
    print(f"organizations  P {total.precision:.3f}  R {total.recall:.3f}  F1 {total.f1:.3f}"
          f"  ({total.org_tp} of {total.org_pred} found, {total.org_gold} in gold)")
    print(f"agreement pairs F1 {total.pair_f1:.3f}  ({total.pair_tp} right, "
          f"{total.pair_pred} found, {total.pair_gold} in gold)")
    print(f"document type accuracy {total.type_accuracy:.3f}  ({total.types_right}/{total.documents})")
    print(f"roles right {total.role_accuracy:.3f}  ({total.roles_right}/{total.roles_gold} gold roles)")
    if seed.documents:
        print(f"seed article   P {seed.precision:.3f}  R {seed.recall:.3f}")
    print(f"mention spans that are not their text: {total.bad_spans}")
    _throughput("these texts as they are", [g.document() for g in golds], rounds=10)
    for miss in total.misses:
        print(f"  {miss}")


def main() -> int:
    """Print the figures of the gold set (the rules were written looking at it), then of
    the unseen documents (written after the rules), then the throughput on documents of
    :data:`DOCUMENT_BYTES` (:func:`corpus`); exit 0."""
    golds = load()
    _print("gold set", golds)
    unseen = load(UNSEEN)
    if unseen:
        print()
        _print("unseen documents", unseen)
    print()
    _throughput("the gold texts joined into mixed English and Chinese documents",
                corpus(golds), rounds=15)
    return 0
