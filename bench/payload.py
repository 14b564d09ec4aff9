"""The benchmark payload: typical CloudEvents from the seed story (~700–1000 bytes each).

Every generated event gets a unique ``id`` of the form ``bench-<run>-<seq>`` so that
a receiver can find it in whatever body a stage delivers (:data:`ID_PATTERN`), and
notify's idempotency key (event id, subscription id) never suppresses a repeat.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shared.events import dump_event, parse_enriched, parse_event

ID_PATTERN = re.compile(rb"bench-[0-9a-f]{8}-[a-z0-9]+-\d+")

_LOCATION = {
    "venue": "Anting Town",
    "town": "Anting",
    "district": "Jiading",
    "city": "Shanghai",
    "country": "CN",
}

TEMPLATES: list[dict[str, Any]] = [
    {
        "specversion": "1.0",
        "type": "conference.announcement",
        "source": "https://www.jiading.gov.cn/news",
        "subject": "world-metaverse-conference-2023",
        "time": "2023-08-23T09:00:00+08:00",
        "datacontenttype": "application/json",
        "data": {
            "headline": "World Metaverse Conference begins in Jiading District",
            "kind": "conference_opened",
            "conference": "World Metaverse Conference 2023",
            "summary": "The second World Metaverse Conference started in Anting Town, "
            "gathering more than 110 experts, academics and enterprises.",
            "location": _LOCATION,
            "starts_at": "2023-08-23T09:00:00+08:00",
            "ends_at": "2023-08-25T18:00:00+08:00",
            "organizations": [
                {"name": "Jiading District Government", "role": "host"},
                {"name": "安亭镇人民政府", "role": "organizer"},
                {"name": "Shanghai International Circuit", "role": "venue"},
            ],
            "people": [
                {"name": "Gao Xiang", "role": "director", "affiliation": "Jiading District"},
            ],
            "figures": {"experts": 110, "sub_forums": 9, "experiences": 50, "enterprises": 30},
            "language": "en",
        },
    },
    {
        "specversion": "1.0",
        "type": "conference.announcement",
        "source": "https://www.shanghai.gov.cn/alliances",
        "subject": "shanghai-metaverse-alliance",
        "time": "2023-08-23T10:30:00+08:00",
        "datacontenttype": "application/json",
        "data": {
            "headline": "Shanghai Metaverse Industry Innovation Alliance is established",
            "kind": "alliance_established",
            "conference": "World Metaverse Conference 2023",
            "summary": "The alliance will gather scholars and agencies in the research field of "
            "the metaverse to create a science, technology and industry exchange platform.",
            "location": _LOCATION,
            "organizations": [
                {"name": "Shanghai Metaverse Industry Innovation Alliance", "role": "founded"},
                {"name": "Tongji University", "role": "member"},
                {"name": "Anting Town Government", "role": "member"},
            ],
            "figures": {"founding_members": 42},
            "language": "en",
        },
    },
    {
        "specversion": "1.0",
        "type": "agreement.signed",
        "source": "https://www.anting.gov.cn/investment",
        "subject": "anting-metaverse-agreements",
        "time": "2023-08-23T15:00:00+08:00",
        "datacontenttype": "application/json",
        "data": {
            "title": "About 20 companies sign agreements with Anting Town",
            "organizations": [
                {"name": "Anting Town Government", "role": "party"},
                {"name": "SAIC Volkswagen", "role": "party"},
                {"name": "Shanghai International Automobile City", "role": "party"},
                {"name": "NIO", "role": "party"},
            ],
            "party_count": 20,
            "signed_at": "2023-08-23T15:00:00+08:00",
            "location": _LOCATION,
            "value": {"amount": 1200000000, "currency": "CNY"},
            "sectors": ["metaverse", "intelligent connected vehicles", "digital economy"],
            "summary": "Projects on metaverse applications in auto research, testing and sales.",
            "language": "en",
        },
    },
    {
        "specversion": "1.0",
        "type": "conference.announcement",
        "source": "https://www.jiading.gov.cn/news",
        "subject": "metaverse-whitepaper-2023",
        "time": "2023-08-24T11:00:00+08:00",
        "datacontenttype": "application/json",
        "data": {
            "headline": "Whitepaper on metaverse development in the auto industry released",
            "kind": "whitepaper_released",
            "conference": "World Metaverse Conference 2023",
            "summary": "Anting, home of about 1,000 auto plants, parts makers and related "
            "companies, publishes a whitepaper on metaverse use in automobiles.",
            "location": _LOCATION,
            "organizations": [
                {"name": "上海国际汽车城", "role": "publisher"},
                {"name": "Shanghai Academy of Social Sciences", "role": "author"},
            ],
            "figures": {"auto_companies": 1000},
            "language": "en",
        },
    },
]


def new_run() -> str:
    """A fresh run tag for event ids (8 hex digits)."""
    return uuid.uuid4().hex[:8]


def event(run: str, seq: int, tag: str = "e") -> dict[str, Any]:
    """The ``seq``-th event of a run: a template with a unique id and a spread subject."""
    ev = copy.deepcopy(TEMPLATES[seq % len(TEMPLATES)])
    ev["id"] = f"bench-{run}-{tag}-{seq}"
    # a subject per 64 events: keys spread over the partitions as real traffic would
    ev["subject"] = f"{ev['subject']}-{seq // len(TEMPLATES) % 64}"
    return ev


def events(n: int, run: str, tag: str = "e") -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield event(run, i, tag)


def event_bytes(n: int, run: str, tag: str = "e") -> list[bytes]:
    return [orjson.dumps(e) for e in events(n, run, tag)]


def key_of(ev: dict[str, Any]) -> bytes:
    """The key ingest uses (DESIGN.md): ``subject``, else ``id``."""
    return str(ev.get("subject") or ev["id"]).encode()


def enriched(ev: dict[str, Any]) -> dict[str, Any]:
    """What enrich would emit for ``ev`` (every organization left unresolved)."""
    out = copy.deepcopy(ev)
    data = out["data"]
    for org in data.get("organizations", []):
        org["resolved"] = None
        org["match"] = None
    data["enrichment"] = {
        "resolved": [],
        "unresolved": [o["name"] for o in data.get("organizations", [])],
        "catalog_version": "bench",
        "enriched_at": datetime.now(UTC).isoformat(),
    }
    return out


def check_templates() -> None:
    """Fail early if the payload drifts from the shared models."""
    for i, _ in enumerate(TEMPLATES):
        ev = event("00000000", i)
        dump_event(parse_event(orjson.dumps(ev)))
        parse_enriched(orjson.dumps(enriched(ev)))


def write_payload_file(path: Path, run: str, n: int = 16) -> Path:
    """A payload file for ProducerPerformance: one event per line (it splits on newlines)."""
    path.write_bytes(b"\n".join(event_bytes(n, run, "perf")))
    return path


def sizes() -> list[int]:
    return [len(orjson.dumps(event("00000000", i))) for i in range(len(TEMPLATES))]
