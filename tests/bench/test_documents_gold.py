"""The documents gold set, read offline: every mention of every event is where it says
(``text[start:end] == text``), every event is valid for the contract, and the seed
article's organizations are all found with nothing extra."""

from __future__ import annotations

import orjson

from bench.documents import SEED, load, score_one
from services.enrich.catalog import shipped
from services.enrich.gazetteer import Gazetteer
from services.enrich.reports import read_document
from services.enrich.resolve import build_index
from shared.events import parse_event


def test_every_mention_span_is_its_text_and_every_event_is_valid() -> None:
    """For each gold document, each event parses and each mention's offsets give its text."""
    gazetteer = Gazetteer(shipped())
    golds = load()
    assert len(golds) >= 21
    spans = 0
    for gold in golds:
        report = read_document(gold.document(), gazetteer)
        assert report.events, gold.name
        for event in report.events:
            parsed = parse_event(orjson.dumps(event))
            assert parsed.model_extra is not None and event["documentid"] == gold.name
            for org in event["data"]["organizations"]:
                for m in org["mentions"]:
                    assert gold.text[m["start"]:m["end"]] == m["text"], (gold.name, m)
                    spans += 1
    assert spans > 100


def test_the_seed_article_is_read_whole() -> None:
    """The seed article: organization precision and recall both at least 0.9."""
    [seed] = [g for g in load() if g.name == SEED]
    catalog = shipped()
    scores = score_one(seed, read_document(seed.document(), Gazetteer(catalog)), build_index(catalog))
    assert scores.precision >= 0.9 and scores.recall >= 0.9, scores.misses
    assert scores.bad_spans == 0
