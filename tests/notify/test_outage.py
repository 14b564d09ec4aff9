"""Retries that outlast an outage, against a real broker and a real receiver, on a
time-scaled schedule (``retry_time_scale``: the same code, its delays divided): a
receiver down for an hour gets every event once it is back, across a restart of notify,
with the webhook-id of the first attempt; a subscription failing for days is disabled
with a record, shows it, and delivers what was waiting once enabled again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from devtools.testing import produce, read_topic
from services.notify.api import create_app
from services.notify.bootstrap import Notifier
from services.notify.settings import NotifySettings
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import (
    ANTING_TOWN,
    Received,
    Receiver,
    agreement,
    encode,
    notify_settings,
    running,
    wait_until,
)

pytestmark = pytest.mark.kafka


@dataclass
class Outage(Receiver):
    """A receiver that answers 503 while ``down``, 204 after; ``answers`` keeps each status."""

    down: bool = True
    answers: list[tuple[Received, int]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        got = Received(request.path, dict(request.headers), await request.read(), time.time())
        self.received.append(got)
        status = 503 if self.down else 204
        self.answers.append((got, status))
        return web.Response(status=status)

    def by_event(self) -> dict[str, list[tuple[Received, int]]]:
        out: dict[str, list[tuple[Received, int]]] = {}
        for got, status in self.answers:
            out.setdefault(orjson.loads(got.body)["id"], []).append((got, status))
        return out

    def delivered(self) -> set[str]:
        return {event for event, answers in self.by_event().items() if any(s == 204 for _, s in answers)}


@asynccontextmanager
async def api(settings: NotifySettings, notifier: Notifier) -> AsyncIterator[httpx.AsyncClient]:
    """The notify API of this notifier, called in process."""
    app = create_app(settings, notifier.store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify") as client:
        yield client


async def webhook(notifier: Notifier, receiver: Receiver, **extra: Any) -> str:
    sub, _ = await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": "outage", "channel": {"type": "webhook", "url": receiver.url("/hook")}, **extra})))
    return sub.id


async def test_receiver_down_for_an_hour_gets_everything_once_across_a_restart(topics: AntingSettings) -> None:
    """Down for an hour (a second at 3600×): attempts at 0, 5 s, 5 min, 30 min fail; notify
    restarts while the 2 h one waits; that one is made on time by the new instance and
    delivers each event once, with the webhook-id of its first attempt."""
    receiver = Outage()
    await receiver.start()
    # the default schedule (Standard Webhooks'), an hour in a second; one settings object, so
    # the second notifier joins the first one's consumer groups
    settings = notify_settings(topics, retry_schedule="standard-webhooks", retry_time_scale=3600)
    events = [agreement([ANTING_TOWN]) for _ in range(5)]
    try:
        async with running(settings) as first:
            sub_id = await webhook(first, receiver)
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])
            # four failed attempts each: attempt 5 (2 h after the 4th) scheduled
            await wait_until(lambda: len(receiver.answers) == 20 and all(
                (first.ledger.state(k) or {}).get("attempt") == 5
                for k in {r.headers["webhook-id"] for r, _ in receiver.answers}), 30, "four failures each")
            health = first.store.views()[0]["delivery"]
            assert health["failing_since"] and health["last_error"] == "HTTP 503" and health["waiting"] == 5
            async with api(settings, first) as client:
                shown = (await client.get(f"/v1/subscriptions/{sub_id}")).json()["delivery"]
            assert shown["waiting"] == 5 and shown["next_attempt_at"] is not None
            assert datetime.fromisoformat(shown["next_attempt_at"]).timestamp() > time.time()
        receiver.down = False  # back after about an hour of scaled time
        async with running(settings) as second:
            await wait_until(lambda: receiver.delivered() == {e.id for e in events}, 30, "delivered after the restart")
            await asyncio.sleep(0.5)  # nothing more comes
            assert second.store.views()[0]["delivery"] == {
                "failing_since": None, "last_failure_at": None, "last_error": None,
                "waiting": 0, "next_attempt_at": None}
        notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=25, timeout=20)
    finally:
        await receiver.stop()

    due = {}  # key -> when attempt 5 was due, from the 4th attempt's line
    for r in notes:
        line = orjson.loads(r.value or b"")
        if line["outcome"] == "retried" and line["attempt"] == 4:
            due[line["idempotency_key"]] = datetime.fromisoformat(line["next_attempt_at"]).timestamp()
    for event in events:
        answers = receiver.by_event()[event.id]
        assert [s for _, s in answers] == [503, 503, 503, 503, 204]  # once, and no attempt twice
        assert len({r.headers["webhook-id"] for r, _ in answers}) == 1
        key = answers[0][0].headers["webhook-id"]
        assert answers[-1][0].at >= due[key] - 0.05  # made when due, not early after the restart
    outcomes = sorted((orjson.loads(r.value or b"")["attempt"], orjson.loads(r.value or b"")["outcome"])
                      for r in notes)
    assert outcomes == sorted([(a, "retried") for a in range(1, 5)] * 5 + [(5, "delivered")] * 5)


async def test_failing_for_days_disables_and_enabling_delivers_what_waits(
        topics: AntingSettings, caplog: pytest.LogCaptureFixture) -> None:
    """At 86400× (a day a second) events keep failing for 5 days: the subscription is disabled
    with a record (its line, disabled_reason, a warning); what waits is shown and waits;
    enabled again, it is delivered with its first webhook-id, and new events flow."""
    caplog.set_level(logging.WARNING, logger="services.notify.delivery")
    receiver = Outage()
    await receiver.start()
    settings = notify_settings(topics, retry_schedule="standard-webhooks", retry_time_scale=86400)
    produced: list[str] = []
    try:
        async with running(settings) as notifier:
            sub_id = await webhook(notifier, receiver)

            async def publish(n: int = 1) -> None:
                for _ in range(n):
                    event = agreement([ANTING_TOWN])
                    produced.append(event.id)
                    await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(event)], [event.key])

            deadline = time.monotonic() + 30
            while not notifier.store.get(sub_id).disabled:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "not disabled after 5 scaled days"
                await publish()
                await asyncio.sleep(0.4)
            sub = notifier.store.get(sub_id)
            assert sub is not None and sub.disabled_at is not None
            assert (sub.disabled_reason or "").startswith("no delivery succeeded for 5 days (time scaled")
            assert "last error: HTTP 503" in (sub.disabled_reason or "")
            assert any(r.levelno == logging.WARNING and f"subscription {sub_id} disabled" in r.getMessage()
                       for r in caplog.records)
            # what still waits, as the API shows it: no next attempt until it is enabled
            waiting = {k for k, (s, _) in notifier.ledger.view.scheduled.items() if s == sub_id}
            assert waiting
            async with api(settings, notifier) as client:
                shown = (await client.get("/v1/subscriptions")).json()["subscriptions"][0]
                assert shown["disabled"] and shown["delivery"]["failing_since"]
                assert shown["delivery"]["waiting"] == len(waiting) and shown["delivery"]["next_attempt_at"] is None
                await asyncio.sleep(1.5)  # a scaled day and a half: nothing is attempted meanwhile
                attempts = len(receiver.answers)
                await publish()  # not matched while disabled
                missed = produced[-1]
                await asyncio.sleep(1.0)
                assert len(receiver.answers) == attempts
                receiver.down = False
                enabled = await client.post(f"/v1/subscriptions/{sub_id}/enable")
                assert enabled.status_code == 200 and not enabled.json()["disabled"]
                assert enabled.json()["disabled_reason"] is None and enabled.json()["enabled_at"]
                assert (await client.post("/v1/subscriptions/sub_nope/enable")).status_code == 404
            await wait_until(lambda: all(notifier.ledger.is_final(k) for k in waiting), 20, "waiting ones delivered")
            await publish()  # and new events flow again
            await wait_until(lambda: produced[-1] in receiver.delivered(), 20, "a new event")
        notes = await read_topic(topics, topics.topic(NOTIFICATIONS), idle=2.0, timeout=30)
    finally:
        await receiver.stop()

    lines = [orjson.loads(r.value or b"") for r in notes]
    marked = [line for line in lines if line.get("subscription_disabled")]
    assert len(marked) == 1 and marked[0]["subscription_disabled"] == sub.disabled_reason
    assert marked[0]["outcome"] in ("retried", "dead")
    by_event = receiver.by_event()
    assert missed not in by_event  # an event published while disabled was never matched
    for key in waiting:
        answers = [a for a in receiver.answers if a[0].headers["webhook-id"] == key]
        assert answers[0][1] == 503 and answers[-1][1] == 204  # first failed, finally delivered …
        assert [s for _, s in answers].count(204) == 1  # … once, under the same webhook-id
