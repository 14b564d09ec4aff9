"""The retry schedule, the ledger's one suppression rule, and the failing state it folds
from the delivery log, without a broker: presets, bounds, jitter and scale; which
attempts the ledger stops; since when a subscription has been failing, what waits,
and when a failure disables it (Svix's rule)."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from devtools.testing import settings_for
from services.notify.channels import Result
from services.notify.delivery import Deliverer, next_delay, notification_record
from services.notify.ledger import SUPERSEDED, Ledger
from services.notify.notification import Delivery
from services.notify.settings import NotifySettings, parse_schedule
from services.notify.store import SubscriptionStore, public_view
from shared.subscriptions import RETRY_PRESETS, DeliveryOutcome, Subscription, SubscriptionRequest
from shared.topics import LEDGER_RETENTION_MS

HOUR = 3600


def request(**retry: object) -> SubscriptionRequest:
    return SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": "r", "channel": {"type": "webhook", "url": "https://hooks.example.org/x"}, "retry": retry}))


def test_presets_are_the_published_schedules() -> None:
    """standard-webhooks ends 75:35:05 after the first attempt (10 attempts), svix 27:35:05 (8)."""
    sw, svix = RETRY_PRESETS["standard-webhooks"], RETRY_PRESETS["svix"]
    assert (len(sw) + 1, sum(sw)) == (10, 75 * HOUR + 35 * 60 + 5)
    assert (len(svix) + 1, sum(svix)) == (8, 27 * HOUR + 35 * 60 + 5)
    assert NotifySettings().default_retry().delays() == sw


def test_retry_policy_bounds() -> None:
    """A preset or delays (exactly one); at most 20 retries of 1 s to 24 h, 4 days in all."""
    assert request(preset="svix").retry.delays() == RETRY_PRESETS["svix"]  # type: ignore[union-attr]
    assert request(delays_seconds=[10, 600, 7200]).retry.delays() == (10, 600, 7200)  # type: ignore[union-attr]
    assert request(delays_seconds=[]).retry.delays() == ()  # type: ignore[union-attr]
    assert request(delays_seconds=[24 * HOUR] * 4).retry.delays() == (24 * HOUR,) * 4  # type: ignore[union-attr]
    for bad in ({}, {"preset": "svix", "delays_seconds": [5]}, {"preset": "hourly"},
                {"delays_seconds": [0]}, {"delays_seconds": [24 * HOUR + 1]}, {"delays_seconds": [1] * 21},
                {"delays_seconds": [24 * HOUR] * 4 + [1]}, {"delays_seconds": [1.5]}):
        with pytest.raises(ValidationError):
            request(**bad)


def test_schedule_setting_and_replaced_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """ANTING_NOTIFY_RETRY_SCHEDULE reads presets, none and delays with units; the settings it
    replaced stop notify with a message naming it instead of being ignored."""
    assert parse_schedule("svix").preset == "svix"
    assert parse_schedule(" Standard-Webhooks ").delays() == RETRY_PRESETS["standard-webhooks"]
    assert parse_schedule("none").delays() == ()
    assert parse_schedule("5s, 5m,30m,2h,1d").delays() == (5, 300, 1800, 7200, 86400)
    assert parse_schedule("7").delays() == (7,)
    for bad, says in (("5x", "not a delay"), ("25h", "less than or equal to 86400"),
                      ("24h,24h,24h,24h,24h", "4 days")):
        with pytest.raises(ValueError, match=says):
            parse_schedule(bad)
    with pytest.raises(ValidationError, match="ANTING_NOTIFY_MAX_ATTEMPTS is no longer read"):
        NotifySettings(max_attempts=3)
    monkeypatch.setenv("ANTING_NOTIFY_BACKOFF_BASE_SECONDS", "2")
    with pytest.raises(ValidationError, match="ANTING_NOTIFY_RETRY_SCHEDULE"):
        NotifySettings()
    monkeypatch.delenv("ANTING_NOTIFY_BACKOFF_BASE_SECONDS")
    with pytest.raises(ValidationError, match="less than or equal to 6"):
        NotifySettings(disable_after_days=7)


def test_next_delay_jitter_scale_and_end() -> None:
    """Each delay within ±jitter of the schedule's, spread, divided by the scale; None once used up."""
    delays = RETRY_PRESETS["svix"]
    assert next_delay(delays, 1) == 5 and next_delay(delays, 7) == 10 * HOUR
    assert next_delay(delays, 8) is None and next_delay((), 1) is None
    samples = [next_delay(delays, 4, 0.1) or 0 for _ in range(2000)]
    assert 0.9 * 2 * HOUR <= min(samples) < max(samples) <= 1.1 * 2 * HOUR
    assert statistics.pstdev(samples) > 0.04 * 2 * HOUR  # spread, not a fixed offset
    assert next_delay(delays, 4, 0, scale=3600) == 2.0  # two hours in two seconds


def _delivery(key: str, attempt: int = 1, sub: str = "sub_1") -> Delivery:
    return Delivery(key, sub, [{"id": f"ev-{key}", "source": "/test"}], [[]], attempt)


def _fold(ledger: Ledger, key: str, outcome: DeliveryOutcome, attempt: int, at: datetime,
          next_at: datetime | None = None, sub: str = "sub_1", error: str | None = "HTTP 503") -> None:
    """Apply the line notify would write, read from the log."""
    result = Result("ok", 200) if outcome is DeliveryOutcome.delivered else Result("retry", 503, error)
    ledger.view.apply(sub, notification_record(_delivery(key, attempt, sub), "email", outcome, result,
                                               next_at, at=at))


def test_one_rule_stops_attempts() -> None:
    """First attempts stop at any entry; retry records at a finished delivery (counted) or a
    later attempt (superseded, not counted); a replayed dead letter goes ahead."""
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    now = datetime.now(UTC)
    _fold(ledger, "msg_s", DeliveryOutcome.retried, 3, now, now)  # attempt 4 scheduled
    _fold(ledger, "msg_d", DeliveryOutcome.delivered, 4, now)
    _fold(ledger, "msg_x", DeliveryOutcome.dead, 6, now)
    assert [ledger.suppresses(k) for k in ("msg_s", "msg_d", "msg_x", "msg_new")] == \
        ["scheduled", "delivered", "dead", None]
    assert ledger.suppresses("msg_s", 4, retry=True) is None  # the record of the attempt scheduled
    assert ledger.suppresses("msg_s", 3, retry=True) == SUPERSEDED
    assert ledger.suppresses("msg_s", 5, retry=True) is None  # the ledger has not read its line yet
    assert ledger.suppresses("msg_d", 4, retry=True) == "delivered"  # its own record, read again
    assert ledger.suppresses("msg_d", 2, retry=True) == SUPERSEDED
    assert ledger.suppresses("msg_x", 6, retry=True) == "dead"
    assert ledger.suppresses("msg_x", 1, retry=True) is None  # a dead letter replayed
    assert ledger.suppresses("msg_new", 2, retry=True) is None


def test_failing_state_is_folded_from_the_log() -> None:
    """Failing since the first failure after the last success; a success ends it; lines read
    twice or late change nothing; waiting deliveries and the next attempt; prune forgets."""
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    t0 = datetime.now(UTC) - timedelta(days=2)
    _fold(ledger, "msg_a", DeliveryOutcome.delivered, 1, t0)
    assert ledger.failing_since("sub_1") is None and ledger.health(["sub_1"])["sub_1"].waiting == 0
    _fold(ledger, "msg_b", DeliveryOutcome.retried, 1, t0 + timedelta(hours=1), t0 + timedelta(hours=2))
    _fold(ledger, "msg_c", DeliveryOutcome.retried, 1, t0 + timedelta(hours=3), t0 + timedelta(hours=9))
    _fold(ledger, "msg_b", DeliveryOutcome.retried, 2, t0 + timedelta(hours=2), t0 + timedelta(hours=7),
          error="timeout")
    since = (t0 + timedelta(hours=1)).timestamp() * 1000
    health = ledger.health(["sub_1", "sub_2"])
    assert health["sub_1"].failing_since_ms == since and health["sub_1"].waiting == 2
    assert health["sub_1"].next_attempt_ms == (t0 + timedelta(hours=7)).timestamp() * 1000
    assert health["sub_1"].last_error == "HTTP 503"  # the latest failure's (at +3 h)
    assert health["sub_2"].waiting == 0 and health["sub_2"].failing_since_ms is None
    assert ledger.channel_of("sub_1") == "email" and ledger.channel_of("sub_2") is None
    # the first line, read again (as when following the log), changes nothing
    _fold(ledger, "msg_a", DeliveryOutcome.delivered, 1, t0)
    assert ledger.failing_since("sub_1") == since
    # a success ends the run; a failure older than it, read late, does not start one again
    _fold(ledger, "msg_b", DeliveryOutcome.delivered, 3, t0 + timedelta(hours=7))
    _fold(ledger, "msg_old", DeliveryOutcome.dead, 2, t0 + timedelta(hours=4))
    assert ledger.failing_since("sub_1") is None
    assert ledger.health(["sub_1"])["sub_1"].waiting == 1  # msg_c still waits
    view = public_view(Subscription(**request(preset="svix").model_dump(), id="sub_1",
                                    created_at=t0, disabled=True), ledger.health(["sub_1"])["sub_1"])
    assert view["delivery"] == {"failing_since": None, "last_failure_at": None, "last_error": None,
                                "waiting": 1, "next_attempt_at": None}  # disabled: waits for enabling
    _fold(ledger, "msg_d", DeliveryOutcome.dead, 1, t0 + timedelta(hours=8), error="HTTP 404")
    assert ledger.failing_since("sub_1") == (t0 + timedelta(hours=8)).timestamp() * 1000
    # a week after msg_c's line, pruning forgets it, waiting included
    ledger.prune((t0 + timedelta(hours=3)).timestamp() * 1000 + LEDGER_RETENTION_MS + 1)
    assert ledger.health(["sub_1"])["sub_1"].waiting == 0


def test_failing_for_days_disables() -> None:
    """A failure disables the subscription once no delivery succeeded for disable_after_days
    since its failures began, or since it was last enabled; a 410 at once; 0 never."""
    settings = NotifySettings(kafka=settings_for("127.0.0.1:9").kafka)
    ledger = Ledger(settings, producer=None)
    store = SubscriptionStore(settings, None)
    deliverer = Deliverer(settings, None, store, ledger, {})
    now = datetime.now(UTC)
    sub = Subscription(**request(preset="svix").model_dump(), id="sub_1", created_at=now - timedelta(days=30))
    store.view.items[sub.id] = sub
    down = Result("retry", 503, "HTTP 503")
    assert deliverer.disable_reason(sub, down) is None  # the first failure starts the run
    _fold(ledger, "msg_a", DeliveryOutcome.retried, 1, now - timedelta(days=4), now)
    assert deliverer.disable_reason(sub, down) is None  # four days
    _fold(ledger, "msg_b", DeliveryOutcome.dead, 1, now - timedelta(days=5, minutes=1))
    why = deliverer.disable_reason(sub, down)
    assert why is not None and why.startswith("no delivery succeeded for 5 days, failing since ")
    assert why.endswith("; last error: HTTP 503")
    store.view.items[sub.id] = sub.model_copy(update={"enabled_at": now - timedelta(days=1)})
    assert deliverer.disable_reason(sub, down) is None  # enabled again a day ago
    store.view.items[sub.id] = sub
    assert deliverer.disable_reason(sub, Result("gone", 410, "HTTP 410")) == "HTTP 410"
    store.view.items[sub.id] = sub.model_copy(update={"disabled": True})
    assert deliverer.disable_reason(sub, down) is None  # disabled already (sub: as read before)
    store.view.items[sub.id] = sub
    _fold(ledger, "msg_a", DeliveryOutcome.delivered, 2, now - timedelta(hours=1))
    assert deliverer.disable_reason(sub, down) is None  # a success lately
    never = Deliverer(settings.model_copy(update={"disable_after_days": 0}), None, store, ledger, {})
    _fold(ledger, "msg_c", DeliveryOutcome.dead, 1, now - timedelta(minutes=30))
    _fold(ledger, "msg_a", DeliveryOutcome.delivered, 2, now - timedelta(days=6))  # late: no effect
    assert never.disable_reason(sub, down) is None
    scaled = Deliverer(settings.model_copy(update={"retry_time_scale": 86400.0}), None, store, ledger, {})
    assert "(time scaled 1/86400)" in (scaled.disable_reason(sub, down) or "")  # 30 min > 5 scaled days
