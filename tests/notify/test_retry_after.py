"""``Retry-After`` may postpone a retry, never hasten it: the next delay is the larger of
the schedule's and the receiver's (capped); odd header values are read without raising;
end to end, a receiver answering 503 with ``Retry-After: 0`` or a past date is retried
on the schedule, not at once."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from devtools.testing import produce, settings_for
from services.notify.channels.webhook import retry_after_seconds
from services.notify.delivery import Deliverer
from services.notify.ledger import Ledger
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore
from shared.settings import AntingSettings
from shared.subscriptions import Subscription, SubscriptionRequest
from shared.topics import ENRICHED_EVENTS

from .helpers import ANTING_TOWN, Receiver, agreement, encode, notify_settings, running, wait_until

PAST = "Wed, 21 Oct 2015 07:28:00 GMT"


def test_retry_after_odd_values_never_raise() -> None:
    """Digits and HTTP dates are read; ², negatives, fractions, garbage and impossible dates are
    None; a huge number is inf; a past date is 0 — and nothing raises."""
    assert retry_after_seconds("0") == 0.0 and retry_after_seconds(" 120 ") == 120.0
    assert retry_after_seconds(PAST) == 0.0
    later = (datetime.now(UTC) + timedelta(hours=2)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 7100 < (retry_after_seconds(later) or 0) <= 7200
    assert retry_after_seconds("9" * 400) == math.inf
    odd = ["²", "٣", "-5", "-0", "1.5", "1e3", "0x10", "soon", "", "   ", "\x00", "+5",
           "Mon, 99 Foo 99999999999 99:99:99 GMT", "Fri, 31 Dec 9999 23:59:59 +9999",
           "Thu, 01 Jan 0000 00:00:00 GMT", "Sun, 06 Nov 1994 08:49:37", "1" * 10_000 + "x", "GMT",
           ", , , ,"]
    for value in odd:
        seconds = retry_after_seconds(value)  # must not raise
        assert seconds is None or seconds >= 0, (value, seconds)
    for value in ("²", "-5", "1.5", "soon", "", "+5", "Mon, 99 Foo 99999999999 99:99:99 GMT"):
        assert retry_after_seconds(value) is None, value


def _deliverer(**settings: object) -> Deliverer:
    base = NotifySettings(kafka=settings_for("127.0.0.1:9").kafka, retry_jitter=0, **settings)  # type: ignore[arg-type]
    return Deliverer(base, None, SubscriptionStore(base, None), Ledger(base, None), {})  # type: ignore[arg-type]


def _sub(delays: list[int]) -> Subscription:
    request = SubscriptionRequest.model_validate_json(orjson.dumps({
        "name": "r", "channel": {"type": "webhook", "url": "https://hooks.example.org/x"},
        "retry": {"delays_seconds": delays}}))
    return Subscription(**request.model_dump(), id="sub_1", created_at=datetime.now(UTC))


@pytest.mark.parametrize(("retry_after", "expected"), [
    (None, 60.0),  # the schedule
    (0.0, 60.0),  # Retry-After: 0 or a past date: the schedule still applies
    (30.0, 60.0),  # sooner than the schedule: ignored
    (90.0, 90.0),  # later: postpones
    (10 * 3600.0, 3600.0),  # capped at retry_after_max_seconds
    (math.inf, 3600.0),
])
def test_retry_after_postpones_never_hastens(retry_after: float | None, expected: float) -> None:
    """The next delay is max(schedule, min(Retry-After, 1 h))."""
    assert _deliverer().retry_delay(_sub([60, 60]), 1, retry_after) == expected


def test_retry_after_does_not_extend_a_used_up_schedule() -> None:
    """After the last scheduled attempt a Retry-After adds no attempt."""
    assert _deliverer().retry_delay(_sub([60]), 2, 5.0) is None
    assert _deliverer().retry_delay(_sub([]), 1, 5.0) is None


@pytest.mark.kafka
async def test_retry_after_zero_and_past_date_keep_the_schedule(topics: AntingSettings) -> None:
    """A receiver answering 503 with Retry-After: 0 (or a date in the past) gets its 4 attempts
    on the schedule (0.5 s apart at this time scale), not within a fraction of a second."""
    receiver = Receiver(script={"/zero": [(503, {"Retry-After": "0"}, 0.0)],
                                "/past": [(503, {"Retry-After": PAST}, 0.0)],
                                "/odd": [(503, {"Retry-After": "²"}, 0.0)]})
    await receiver.start()
    # 5 s, 5 s, 5 s run 10 times faster, no jitter: 0.5 s between attempts
    settings = notify_settings(topics, retry_schedule="5,5,5", retry_time_scale=10, retry_jitter=0)
    try:
        async with running(settings) as notifier:
            for path in ("/zero", "/past", "/odd"):
                await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps({
                    "name": path, "channel": {"type": "webhook", "url": receiver.url(path)}})))
            event = agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(event)], [event.key])
            await wait_until(lambda: all(len(receiver.on(p)) >= 4 for p in ("/zero", "/past", "/odd")),
                             timeout=30, what="4 attempts each")
    finally:
        await receiver.stop()
    for path in ("/zero", "/past", "/odd"):
        at = [r.at for r in receiver.on(path)]
        gaps = [b - a for a, b in itertools.pairwise(at)]
        assert len(at) == 4 and all(gap >= 0.45 for gap in gaps), (path, gaps)
