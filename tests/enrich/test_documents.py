"""enrich's documents stage: what a text reports, read offline (organizations, mentions,
roles, events), then the stage on the real broker (documents in, events out with
documentid, a record that is not a document dead-lettered, an alias added to the live
catalog used for the next document)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from devtools.testing import read_topic, wait_until
from services.enrich import catalog as catalog_mod
from services.enrich.catalog import Catalog, shipped
from services.enrich.documents import DocumentStage, events_of
from services.enrich.extract import find_organizations
from services.enrich.gazetteer import Gazetteer
from services.enrich.reports import read_document
from services.enrich.settings import EnrichSettings
from shared.documents import Document, dump_document
from shared.events import parse_event
from shared.kafka import make_producer
from shared.organizations import Organization, OrganizationKind
from shared.settings import AntingSettings
from shared.topics import AGREEMENTS, ANNOUNCEMENTS, DEAD_LETTERS, DOCUMENTS

SEED = (Path(__file__).resolve().parents[2] / "docs" / "seed" / "world-metaverse-conference.txt").read_text()
GAZETTEER = Gazetteer(shipped())


def doc(text: str, doc_id: str = "doc-1") -> Document:
    return Document(id=doc_id, source="/press/test", media_type="text/plain", text=text,
                    received_at=datetime(2023, 7, 5, 9, tzinfo=UTC))


def test_every_mention_of_the_seed_is_where_it_says() -> None:
    """Each mention's offsets give its text; the hosts, co-hosts and the party are found."""
    report = read_document(doc(SEED), GAZETTEER)
    for event in report.events:
        parse_event(orjson.dumps(event))
        for org in event["data"]["organizations"]:
            assert org["mentions"], org
            for m in org["mentions"]:
                assert SEED[m["start"]:m["end"]] == m["text"]
    roles = {o["name"]: o.get("role") for e in report.events for o in e["data"]["organizations"]}
    assert roles["China Simulation Federation"] == "host"
    assert roles["Beijing Institute of Technology"] == "host"
    assert roles["metaverse committee of the China Simulation Federation"] == "co-host"
    [agreement] = [e for e in report.events if e["type"] == "agreement.signed"]
    assert [(o["name"], o["role"]) for o in agreement["data"]["organizations"]] == [
        ("Anting Town Government of Jiading District", "party")]
    assert report.kind == "conference_opened"
    kinds = [e["data"].get("kind") for e in report.events if e["type"] == "conference.announcement"]
    assert {"alliance_established", "whitepaper_released", "industry_base_unveiled"} <= set(kinds)
    # "in Anting Town", "in Jiading District": places, not mentions
    anting = next(o for o in report.organizations if o.org_id == "anting-town-government")
    assert [m.text for m in anting.mentions] == ["Anting Town", "Anting Town Government of Jiading District"]


def test_short_forms_and_descriptions_are_mentions_of_one_organization() -> None:
    """A defined short form, a name without its legal suffix and "the federation" are the
    organization they stand for; Traditional Chinese is read too."""
    text = ("上海汽车集团股份有限公司（以下简称“上汽集团”）与安亭镇人民政府签署战略合作协议。上汽集团表示将加大投入。\n"
            "The forum is hosted by the China Simulation Federation. The federation said "
            "Pony.ai Inc. signed with Tongji University. Pony.ai will open a lab.\n"
            "華為技術有限公司與長安汽車在重慶簽署投資合作備忘錄。")
    found = {f.name: f for f in find_organizations(text, GAZETTEER)}
    assert [m.text for m in found["上海汽车集团股份有限公司"].mentions] == [
        "上海汽车集团股份有限公司", "上汽集团", "上汽集团"]
    assert [m.text for m in found["China Simulation Federation"].mentions] == [
        "China Simulation Federation", "The federation"]
    assert [m.text for m in found["Pony.ai Inc."].mentions] == ["Pony.ai Inc.", "Pony.ai"]
    assert found["華為技術有限公司"].org_id == "huawei" and found["華為技術有限公司"].role == "party"
    assert found["長安汽車"].role == "party"
    for f in found.values():
        assert all(text[m.start:m.end] == m.text for m in f.mentions)


def test_one_agreement_per_signing_and_ids_from_the_document() -> None:
    """Two signings between different parties are two events, ids `<doc>:<n>`, with documentid."""
    text = ("SAIC Motor and Huawei signed a strategic cooperation agreement on Monday.\n"
            "Separately, Tongji University signed a memorandum of understanding with NIO.")
    report = read_document(doc(text, "doc-two"), GAZETTEER)
    agreements = [e for e in report.events if e["type"] == "agreement.signed"]
    assert [e["id"] for e in report.events] == ["doc-two:1", "doc-two:2"]
    assert [sorted(o["name"] for o in e["data"]["organizations"]) for e in agreements] == [
        ["Huawei", "SAIC Motor"], ["NIO", "Tongji University"]]
    assert all(e["documentid"] == "doc-two" and e["source"] == "/press/test" for e in report.events)


def test_an_alias_added_to_the_catalog_is_found() -> None:
    """A name the catalog lacks becomes one once an alias names it (a new gazetteer)."""
    text = "The Anting Metaverse Lab signed with SAIC Motor."
    before = {f.org_id for f in find_organizations(text, GAZETTEER)}
    assert "saic-motor" in before
    extra = Organization(id="anting-metaverse-lab", name="Anting Metaverse Laboratory",
                         aliases=["Anting Metaverse Lab"], kind=OrganizationKind.academic)
    after = {f.org_id for f in find_organizations(text, Gazetteer([*shipped(), extra]))}
    assert "anting-metaverse-lab" in after


async def _produce(settings: AntingSettings, values: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings, compression_type="gzip", max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        for key, value in values:
            await producer.send_and_wait(settings.topic(DOCUMENTS), value=value, key=key)
    finally:
        await producer.stop()


async def test_the_stage_writes_events_and_dead_letters_on_the_broker(topics: AntingSettings) -> None:
    """A document's events reach announcements/agreements with documentid and source; a
    record that is not a document goes to dead-letters; an alias put into the catalog is
    used for the next document without a restart."""
    settings = EnrichSettings(kafka=topics.kafka, topic_prefix=topics.topic_prefix)
    await catalog_mod.write(settings, upserts=shipped())
    catalog = Catalog(settings)
    await catalog.start()
    stage = DocumentStage(settings, catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(stage.run(stop))
    try:
        await _produce(topics, [(b"wmc", dump_document(doc(SEED, "wmc"))), (b"bad", b"not a document")])
        ann = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=5, timeout=60)
        agr = await read_topic(topics, topics.topic(AGREEMENTS), expect=1, timeout=30)
        events = [parse_event(r.value or b"") for r in ann + agr]
        assert {e.documentid for e in events} == {"wmc"} and {e.source for e in events} == {"/press/test"}
        assert sorted(e.id for e in events) == sorted(f"wmc:{n}" for n in range(1, len(events) + 1))
        letters = await read_topic(topics, topics.topic(DEAD_LETTERS), expect=1, timeout=30)
        headers = dict(letters[0].headers)
        assert headers["dlq.stage"] == b"documents" and letters[0].value == b"not a document"
        # a new alias, then a document naming it
        lab = Organization(id="anting-metaverse-lab", name="Anting Metaverse Laboratory",
                           aliases=["AML"], kind=OrganizationKind.academic)
        t0 = time.monotonic()
        await catalog_mod.write(settings, upserts=[lab])
        # the catalog is live: the next document sees the alias within 2 s of the write
        await wait_until(lambda: "anting-metaverse-lab" in catalog.organizations, 10, "the alias")
        assert time.monotonic() - t0 < 2.0
        await _produce(topics, [(b"aml", dump_document(doc("AML signed with SAIC Motor.", "aml")))])
        more = await read_topic(topics, topics.topic(AGREEMENTS), expect=2, timeout=30)
        last = parse_event(next(r.value for r in more if r.key == b"aml") or b"")
        names = {o.name for o in last.data.organizations}
        assert names == {"AML", "SAIC Motor"}
        assert events_of(dump_document(doc("AML signed with SAIC Motor.", "aml")),
                         stage.gazetteer())[1][0][1] == b"aml"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await catalog.stop()
