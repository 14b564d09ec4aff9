"""The shipped sample events: valid, stable, and covering every announcement of the seed story."""

from __future__ import annotations

from pathlib import Path

from services.ingest.codec import to_record
from shared.events import AgreementEvent, AnnouncementEvent, parse_event
from shared.settings import AntingSettings

SAMPLES = Path(__file__).resolve().parents[2] / "services" / "ingest" / "samples"


def test_samples_are_valid_and_cover_the_story() -> None:
    """Every line is a valid event with a unique id; every kind of the story and the signing are there."""
    lines = (SAMPLES / "world-metaverse-conference.ndjson").read_bytes().splitlines()
    events = [parse_event(line) for line in lines if line.strip()]
    assert len({e.id for e in events}) == len(events)
    assert all(e.source == "/press/shine.cn/world-metaverse-conference" and e.subject for e in events)
    kinds = {e.data.kind.value for e in events if isinstance(e, AnnouncementEvent)}
    assert kinds >= {"conference_opened", "alliance_established", "whitepaper_released",
                     "industry_base_unveiled", "forum", "exhibition", "speech"}
    [opening] = [e for e in events if isinstance(e, AnnouncementEvent)
                 and e.data.kind.value == "conference_opened"]
    assert {k: opening.data.figures[k] for k in ("experts", "main_forums", "sub_forums",
            "experiences", "enterprises", "days")} == {
        "experts": 110, "main_forums": 1, "sub_forums": 9, "experiences": 50,
        "enterprises": 30, "days": 3}
    assert [o.role for o in opening.data.organizations].count("host") == 3
    assert [o.role for o in opening.data.organizations].count("co-host") == 2
    [signing] = [e for e in events if isinstance(e, AgreementEvent)]
    assert signing.data.party_count in (20, 21)
    assert "安亭镇人民政府" in {o.name for o in signing.data.organizations}
    # every organization named in the events is listed in the samples README
    readme = (SAMPLES / "README.md").read_text()
    for e in events:
        for org in e.data.organizations:
            assert org.name in readme, org.name
    # keys: the subject
    rec = to_record(signing, AntingSettings(topic_prefix="x."))
    assert (rec.topic, rec.key) == ("x.agreements", b"anting-metaverse-agreements")
