"""Fixtures of the ingest tests: the app wired to the real test broker, sample events."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.ingest.api import create_app
from services.ingest.main import make_publisher
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from shared.settings import AntingSettings

ANNOUNCEMENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "wmc-test-opening",
    "source": "/press/shine.cn/world-metaverse-conference",
    "type": "conference.announcement",
    "subject": "world-metaverse-conference-2023",
    "time": "2023-07-05T09:00:00+08:00",
    "data": {
        "headline": "World Metaverse Conference begins in Jiading District",
        "kind": "conference_opened",
        "organizations": [{"name": "Beijing Institute of Technology", "role": "host"}],
        "figures": {"experts": 110},
    },
}
AGREEMENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "wmc-test-agreements",
    "source": "/press/shine.cn/world-metaverse-conference",
    "type": "agreement.signed",
    "data": {
        "title": "Cooperation agreements with Anting Town",
        "organizations": [{"name": "安亭镇人民政府", "role": "party"}],
        "party_count": 21,
    },
}


def announcement(i: int | str, **data: Any) -> dict[str, Any]:
    ev = copy.deepcopy(ANNOUNCEMENT)
    ev["id"] = f"ann-{i}"
    ev["data"].update(data)
    return ev


def agreement(i: int | str) -> dict[str, Any]:
    ev = copy.deepcopy(AGREEMENT)
    ev["id"] = f"agr-{i}"
    return ev


def ingest_settings(base: AntingSettings, **kw: Any) -> IngestSettings:
    return IngestSettings(kafka=base.kafka, topic_prefix=base.topic_prefix, **kw)


@pytest.fixture
async def publisher(topics: AntingSettings) -> AsyncIterator[Publisher]:
    pub = make_publisher(ingest_settings(topics))
    async with pub:
        yield pub


async def make_client(
    settings: IngestSettings, publisher: Publisher, documents: Publisher | None = None
) -> httpx.AsyncClient:
    app = create_app(settings, publisher, documents)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest")


@pytest.fixture
async def client(topics: AntingSettings, publisher: Publisher) -> AsyncIterator[httpx.AsyncClient]:
    async with await make_client(ingest_settings(topics, max_body_bytes=64 * 1024),
                                 publisher) as c:
        yield c
