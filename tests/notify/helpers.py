"""Test helpers for notify: enriched events built with the shared models, a real
local webhook receiver (aiohttp) with scripted answers, a real SMTP server
(aiosmtpd), and an in-process notifier on the test's topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from devtools.localkafka import free_port
from devtools.testing import wait_until as wait_until  # the notify tests import it from here
from services.notify.bootstrap import Notifier
from services.notify.settings import NotifySettings
from shared.events import (
    AnnouncementKind,
    EnrichedAgreementData,
    EnrichedAgreementEvent,
    EnrichedAnnouncementData,
    EnrichedAnnouncementEvent,
    Enrichment,
    Location,
    Match,
    MatchMethod,
    ResolvedMention,
    dump_event,
)
from shared.organizations import Organization, OrganizationKind
from shared.settings import AntingSettings

ANTING_TOWN = Organization(
    id="anting-town-government", name="Anting Town Government",
    names={"en": "Anting Town Government", "zh": "安亭镇人民政府"}, aliases=["Anting Town"],
    kind=OrganizationKind.government, sectors=["public administration"], country="CN", city="Shanghai",
)
ALLIANCE = Organization(
    id="shanghai-metaverse-alliance", name="Shanghai Metaverse Industry Innovation Alliance",
    aliases=["SMIIA"], kind=OrganizationKind.alliance, sectors=["metaverse"], country="CN", city="Shanghai",
)
ACME = Organization(
    id="acme-vr", name="ACME VR Ltd", kind=OrganizationKind.enterprise, sectors=["virtual reality"],
    country="CN", city="Hangzhou",
)


def _mention(org: Organization | None, name: str) -> ResolvedMention:
    if org is None:
        return ResolvedMention(name=name)
    return ResolvedMention(name=name, resolved=org, match=Match(method=MatchMethod.exact, score=100.0))


def _enrichment(orgs: list[Organization | None], names: list[str]) -> Enrichment:
    return Enrichment(
        resolved=[o.id for o in orgs if o], unresolved=[n for o, n in zip(orgs, names, strict=True) if o is None],
        catalog_version="test", enriched_at=datetime.now(UTC),
    )


def agreement(orgs: list[Organization | None], *, names: list[str] | None = None, sectors: list[str] | None = None,
              event_id: str | None = None, title: str = "Cooperation agreement") -> EnrichedAgreementEvent:
    names = names or [o.name if o else "Unknown Co" for o in orgs]
    return EnrichedAgreementEvent(
        specversion="1.0", id=event_id or f"agr-{uuid.uuid4().hex[:12]}", source="/test", type="agreement.signed",
        time=datetime.now(UTC), subject="anting",
        data=EnrichedAgreementData(
            title=title, organizations=[_mention(o, n) for o, n in zip(orgs, names, strict=True)],
            sectors=sectors or [], enrichment=_enrichment(orgs, names),
        ),
    )


def announcement(orgs: list[Organization | None], *, kind: str = "forum", city: str | None = None,
                 event_id: str | None = None, headline: str = "Forum opens") -> EnrichedAnnouncementEvent:
    names = [o.name if o else "Unknown Org" for o in orgs]
    return EnrichedAnnouncementEvent(
        specversion="1.0", id=event_id or f"ann-{uuid.uuid4().hex[:12]}", source="/test",
        type="conference.announcement", time=datetime.now(UTC),
        data=EnrichedAnnouncementData(
            headline=headline, kind=AnnouncementKind(kind), location=Location(city=city) if city else None,
            organizations=[_mention(o, n) for o, n in zip(orgs, names, strict=True)],
            enrichment=_enrichment(orgs, names),
        ),
    )


def encode(event: Any) -> bytes:
    return dump_event(event)


# --- a real webhook receiver ---------------------------------------------------------

Answer = tuple[int, dict[str, str], float]  # status, headers, delay seconds


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1; ``script[path]`` lists the answers in turn (the last repeats)."""

    script: dict[str, list[Answer]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        seen = len(self.on(path))
        self.received.append(Received(path, dict(request.headers), body, time.time()))
        answers = self.script.get(path) or [(200, {}, 0.0)]
        status, headers, delay = answers[min(seen, len(answers) - 1)]
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, headers=headers)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


# --- a real SMTP server ---------------------------------------------------------------


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.envelopes: list[tuple[str, list[str]]] = []  # (MAIL FROM, RCPT TO) of each message
        self.raw: list[bytes] = []  # each message's bytes as the relay got them

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        self.messages.append(message_from_bytes(raw))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.raw.append(raw)
        return "250 OK"


@contextlib.contextmanager
def smtp_server(*, smtputf8: bool = False) -> Any:
    """aiosmtpd on a free port (offering SMTPUTF8 only when ``smtputf8``); yields (port, mailbox)."""
    box = _Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    try:
        yield port, box
    finally:
        controller.stop()


# --- the notifier in this process ------------------------------------------------------


def notify_settings(base: AntingSettings, **overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {
        "kafka": base.kafka, "topic_prefix": base.topic_prefix, "allow_networks": "127.0.0.0/8",
        # 5 quick retries: 0.1, 0.2, 0.4, 0.5, 0.5 s (the schedule run 10 times faster)
        "retry_schedule": "1,2,4,5,5", "retry_time_scale": 10, "commit_interval_seconds": 0.5,
        "timeout_seconds": 5.0, "group": f"notify-{uuid.uuid4().hex[:6]}",
    }
    values.update(overrides)
    return NotifySettings(**values)


@contextlib.asynccontextmanager
async def running(settings: NotifySettings, **kw: Any) -> AsyncIterator[Notifier]:
    notifier = Notifier(settings, **kw)
    await notifier.start()
    stop = asyncio.Event()
    task = asyncio.create_task(notifier.run(stop))
    try:
        yield notifier
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await notifier.close()


