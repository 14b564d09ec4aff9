"""Kill test: notify is SIGKILLed again and again mid-stream while delivering to a
webhook receiver, an SMTP server and a log file; every (event, subscription) pair
arrives at least once, every duplicate carries the same idempotency key, and the
distinct deliveries are exactly the expected set.

Suite size: 300 events × 3 subscriptions, 5 kills; ``ANTING_CHAOS_FULL=1``
(``make chaos``) runs the task's full size: 2,000 events × 3, 10 kills.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, produce
from services.notify.notification import idempotency_key
from services.notify.store import SubscriptionStore
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import SubscriptionRequest
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, Receiver, agreement, encode, smtp_server, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
FULL = os.environ.get("ANTING_CHAOS_FULL") == "1"
EVENTS, KILLS = (2000, 10) if FULL else (300, 5)


async def _subscribe(settings: AntingSettings, docs: list[dict[str, object]]) -> list[tuple[str, str | None]]:
    producer = make_producer(settings)
    await producer.start()
    store = SubscriptionStore(settings, producer)
    try:
        out = []
        for doc in docs:
            sub, secret = await store.create(SubscriptionRequest.model_validate_json(orjson.dumps(doc)))
            out.append((sub.id, secret))
        return out
    finally:
        await producer.stop()


def _log_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def test_sigkill_mid_stream_delivers_every_pair_with_stable_keys(topics: AntingSettings, tmp_path: Path) -> None:
    """SIGKILL notify repeatedly: every pair delivered ≥1, duplicates share webhook-id / Message-ID."""
    receiver = Receiver(script={"/hook": [(200, {}, 0.03)]})
    await receiver.start()
    log_path = tmp_path / "deliveries.jsonl"
    with smtp_server() as (smtp_port, mailbox):
        (hook_id, secret), (mail_id, _), (log_id, _) = await _subscribe(topics, [
            {"name": "hook", "channel": {"type": "webhook", "url": receiver.url("/hook")}},
            {"name": "mail", "channel": {"type": "email", "to": ["ops@example.com"]}},
            {"name": "log", "channel": {"type": "log", "path": log_path.name}},
        ])
        events = [agreement([ANTING_TOWN], event_id=f"kill-{i:05d}") for i in range(EVENTS)]
        await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(e) for e in events], [e.key for e in events])
        api_port = free_port()
        service = ServiceProcess(
            "notify", topics, tmp_path / "notify.log", ANTING_NOTIFY_LOG_DIR=str(tmp_path),
            ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_SMTP_HOST="127.0.0.1",
            ANTING_SMTP_PORT=str(smtp_port), ANTING_NOTIFY_PORT=str(api_port),
            ANTING_NOTIFY_CONCURRENCY="4", ANTING_NOTIFY_SESSION_TIMEOUT_MS="6000",
            ANTING_NOTIFY_COMMIT_INTERVAL_SECONDS="0.5", ANTING_NOTIFY_GROUP=f"kill-{topics.topic_prefix}",
        )

        def total() -> int:
            return len(receiver.received) + len(mailbox.messages) + len(_log_lines(log_path))

        expected = 3 * EVENTS
        step = expected // (KILLS + 2)
        kills = 0
        service.start()
        try:
            for _ in range(KILLS):
                target = total() + step
                await wait_until(lambda t=target: total() >= t, timeout=90, what=f"progress before kill {kills + 1}")  # type: ignore[misc]
                service.kill()
                kills += 1
                await asyncio.sleep(0.2)
                service.start()

            def complete() -> bool:
                return (len({r.headers["webhook-id"] for r in receiver.received}) >= EVENTS
                        and len({m["Message-ID"] for m in mailbox.messages}) >= EVENTS
                        and len({d["idempotency_key"] for d in _log_lines(log_path)}) >= EVENTS)

            await wait_until(complete, timeout=240 if FULL else 120, what="every pair delivered")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                for _ in range(40):  # the lag gauge is refreshed every few seconds
                    metrics = (await client.get("/metrics")).text
                    if "anting_consumer_lag{group=" in metrics:
                        break
                    await asyncio.sleep(0.5)
            assert "anting_consumer_lag{group=" in metrics
            assert 'anting_notify_deliveries_total{channel="webhook",outcome="delivered"}' in metrics
            assert "anting_end_to_end_seconds_count" in metrics
            t0 = time.monotonic()
            code = service.terminate(timeout=30)
            assert code == 0, f"graceful stop exited {code} after {time.monotonic() - t0:.1f}s"
        finally:
            service.kill()
            await receiver.stop()
        mails = list(mailbox.messages)
    assert kills == KILLS
    ids = {e.id for e in events}
    source = {e.id: e.source for e in events}

    # webhook: each event id maps to exactly one webhook-id, the expected one; signatures verify
    verifier = Webhook(secret or "")
    hook_keys: dict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        body = verifier.verify(r.body, r.headers)
        hook_keys[body["id"]].add(r.headers["webhook-id"])
    assert set(hook_keys) == ids
    assert all(keys == {idempotency_key(source[eid], eid, hook_id)} for eid, keys in hook_keys.items())

    # email: Message-ID <key@anting>, one per event, the same on every duplicate
    mail_keys: dict[str, set[str]] = defaultdict(set)
    for m in mails:
        mail_keys[m["X-Anting-Event-Id"]].add(m["Message-ID"])
    assert set(mail_keys) == ids
    assert all(keys == {f"<{idempotency_key(source[eid], eid, mail_id)}@anting>"} for eid, keys in mail_keys.items())

    # log: one idempotency key per event
    log_keys: dict[str, set[str]] = defaultdict(set)
    for d in _log_lines(log_path):
        log_keys[d["event"]["id"]].add(str(d["idempotency_key"]))  # type: ignore[index]
    assert set(log_keys) == ids
    assert all(keys == {idempotency_key(source[eid], eid, log_id)} for eid, keys in log_keys.items())

    distinct = len(hook_keys) + len(mail_keys) + len(log_keys)
    sent = len(receiver.received) + len(mails) + len(_log_lines(log_path))
    print(f"\nkill test: {EVENTS} events x 3 subscriptions, {kills} SIGKILLs: "
          f"{distinct} distinct deliveries (expected {3 * EVENTS}), {sent - distinct} duplicates")
    assert distinct == 3 * EVENTS
