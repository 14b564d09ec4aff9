"""`anting subscriptions add --retry`, `list` showing each subscription's failing state
(folded from the notifications log by the running notify) and `enable`, through notify's
API on a real broker."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devtools import REPO_ROOT
from devtools.testing import create_topics, env_for, produce
from services.notify.channels import Result
from services.notify.delivery import notification_record
from services.notify.notification import Delivery, idempotency_key
from services.notify.store import SubscriptionStore
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import DeliveryOutcome
from shared.topics import NOTIFICATIONS

from .tenancy import notify_in_thread, write_keys
from .test_cli import ANTING

pytestmark = pytest.mark.kafka


def _poll(check: Any, what: str, timeout: float = 20.0) -> Any:  # Any: what check returns
    """``check()`` again until it returns something truthy (notify follows the topics)."""
    import time

    deadline = time.monotonic() + timeout
    while (got := check()) is None or got is False:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return got


async def _disable(settings: AntingSettings, sub_id: str, why: str) -> None:
    """As notify disables a subscription failing for days: on the topic, not through the API."""
    store = SubscriptionStore(settings, make_producer(settings))
    await store.producer.start()
    try:
        await store.start()
        assert await store.disable(sub_id, why)
    finally:
        await store.stop()
        await store.producer.stop()


def test_list_shows_failing_state_and_enable_enables(settings: AntingSettings, tmp_path: Path) -> None:
    """list shows since when a subscription fails, its last error, what waits and when; a
    disabled one says why and that its retries wait; enable makes it active again."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    with notify_in_thread(settings, tmp_path / "keys", keys.admin, health=True) as (url, _):
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            # on a terminal wide enough that no table cell wraps
            env = env_for(settings, COLUMNS="300", ANTING_NOTIFY_URL=url, ANTING_API_KEY=keys.a)
            return subprocess.run([ANTING, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=60)

        def listed() -> dict[str, Any]:
            out = cli("subscriptions", "list", "--format", "json")
            assert out.returncode == 0, out.stderr
            return dict(orjson.loads(out.stdout))

        added = cli("subscriptions", "add", "--name", "ops mail", "--email", "ops@example.org",
                    "--retry", "5m,1h,1d")
        assert added.returncode == 0, added.stderr
        sub_id = orjson.loads(added.stdout)["id"]
        assert orjson.loads(added.stdout)["retry"] == {"preset": None, "delays_seconds": [300, 3600, 86400]}
        bad = cli("subscriptions", "add", "--name", "x", "--log", "-", "--retry", "25h")
        assert bad.returncode == 2 and "--retry" in bad.stderr and "86400" in bad.stderr

        now = datetime.now(UTC).replace(microsecond=0)
        since, nxt = now - timedelta(hours=3), now + timedelta(minutes=40)
        lines: list[bytes] = []
        for n, (outcome, at, next_at, error) in enumerate([
            (DeliveryOutcome.retried, since, since + timedelta(minutes=5), "SMTPConnectError: refused"),
            (DeliveryOutcome.delivered, since + timedelta(minutes=30), None, None),  # the first one's retry
            (DeliveryOutcome.dead, since + timedelta(hours=1), None, "SMTP 550: 'no such user'"),
            (DeliveryOutcome.retried, now - timedelta(minutes=20), nxt, "SMTP 451: 'try later'"),
        ]):
            key = idempotency_key("/test", "ev-0" if n < 2 else f"ev-{n}", sub_id)  # 0 and 1: one delivery
            result = Result("ok", 250) if outcome is DeliveryOutcome.delivered else Result("retry", None, error)
            delivery = Delivery(key, sub_id, [{"id": "ev", "source": "/test"}], [[]], n + 1)
            lines.append(notification_record(delivery, "email", outcome, result, next_at, at=at))
        asyncio.run(produce(settings, settings.topic(NOTIFICATIONS), lines, [sub_id.encode()] * len(lines)))

        expected = {
            "failing_since": (since + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            "last_failure_at": (now - timedelta(minutes=20)).isoformat().replace("+00:00", "Z"),
            "last_error": "SMTP 451: 'try later'", "waiting": 1,
            "next_attempt_at": nxt.isoformat().replace("+00:00", "Z")}
        _poll(lambda: listed()["delivery"] == expected, "the failing state")
        table = cli("subscriptions", "list")
        assert table.returncode == 0, table.stderr
        text = " ".join(table.stdout.split())
        assert f"failing since {(since + timedelta(hours=1)):%Y-%m-%d %H:%M:%S} UTC (SMTP 451: 'try later')" in text
        assert f"1 waiting, next {nxt:%Y-%m-%d %H:%M:%S} UTC" in text and " 5m,1h,1d " in text

        asyncio.run(_disable(settings, sub_id, "no delivery succeeded for 5 days"))
        disabled = _poll(lambda: (d := listed())["disabled"] and d, "the subscription disabled")
        assert disabled["delivery"]["waiting"] == 1
        assert disabled["delivery"]["next_attempt_at"] is None  # waits to be enabled
        shown = " ".join(cli("subscriptions", "list").stdout.split())
        assert "disabled since" in shown and "until enabled" in shown

        enabled = cli("subscriptions", "enable", sub_id)
        assert enabled.returncode == 0 and f"enabled {sub_id}" in enabled.stderr
        assert "no delivery succeeded for 5 days" in enabled.stderr
        after = listed()
        assert not after["disabled"] and after["disabled_reason"] is None and after["enabled_at"]
        again = cli("subscriptions", "enable", sub_id)
        assert again.returncode == 0 and "not disabled" in again.stderr
        missing = cli("subscriptions", "enable", "sub_nope")
        assert missing.returncode == 2 and "no subscription sub_nope" in missing.stderr
