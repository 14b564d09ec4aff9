"""The delivered-ledger is folded from the delivery log (``notifications``); it forgets
what is older than its retention, in order of last write, so a long-running notify
does not grow with every delivery it ever made; and it follows the log only while
another instance may be writing it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from devtools.testing import settings_for
from services.notify.channels import Result
from services.notify.delivery import notification_record
from services.notify.ledger import Ledger
from services.notify.notification import Delivery, idempotency_key
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import DeliveryOutcome
from shared.topics import LEDGER_RETENTION_MS, NOTIFICATIONS

from .helpers import wait_until

OUTCOME_RESULT = {DeliveryOutcome.delivered: Result("ok", 200), DeliveryOutcome.retried: Result("retry", 503),
                  DeliveryOutcome.dead: Result("permanent", 400), DeliveryOutcome.suppressed: Result("permanent")}


def _one(key: str, attempt: int = 1) -> Delivery:
    return Delivery(key, "sub_1", [{"id": f"ev-{key}", "source": "/test"}], [[]], attempt)


def _line(delivery: Delivery, outcome: DeliveryOutcome, at: datetime) -> bytes:
    return notification_record(delivery, "webhook", outcome, OUTCOME_RESULT[outcome], at=at)


def test_ledger_is_the_fold_of_the_delivery_log() -> None:
    """Each outcome line read sets its key's state; a retried line schedules the next
    attempt; suppressed changes nothing; a digest's line marks each of its events."""
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    at = datetime.now(UTC)
    ledger.view.apply("sub_1", _line(_one("msg_a", 2), DeliveryOutcome.retried, at))
    assert ledger.state("msg_a") == {"state": "scheduled", "attempt": 3, "at_ms": at.timestamp() * 1000}
    assert not ledger.is_final("msg_a")
    ledger.view.apply("sub_1", _line(_one("msg_a", 3), DeliveryOutcome.delivered, at))
    assert ledger.is_final("msg_a") and ledger.state("msg_a")["attempt"] == 3  # type: ignore[index]
    ledger.view.apply("sub_1", _line(_one("msg_b"), DeliveryOutcome.suppressed, at))
    assert ledger.state("msg_b") is None
    ledger.view.apply("sub_1", _line(_one("msg_c", 5), DeliveryOutcome.dead, at))
    assert ledger.state("msg_c")["state"] == "dead"  # type: ignore[index]
    digest = Delivery("msg_d", "sub_1", [{"id": "e1", "source": "/a"}, {"id": "e2", "source": "/a"}],
                      [[], []], 1, digest=True)
    ledger.view.apply("sub_1", _line(digest, DeliveryOutcome.retried, at))
    assert ledger.state("msg_d")["state"] == "scheduled"  # type: ignore[index]
    assert all(ledger.state(idempotency_key("/a", e, "sub_1"))["state"] == "digested"  # type: ignore[index]
               for e in ("e1", "e2"))
    ledger.view.apply("sub_1", b"{not json")  # skipped, the rest stands
    assert len(ledger.view.items) == 5


def test_one_id_from_two_sources_is_two_entries() -> None:
    """Two publishers' events with one id are two keys: delivering one leaves the other to
    deliver; a digest of both marks both; a digest line without sources marks neither."""
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    at = datetime.now(UTC)
    a, b = {"id": "same-1", "source": "/press/a"}, {"id": "same-1", "source": "/district/b"}
    key_a, key_b = idempotency_key("/press/a", "same-1", "sub_1"), idempotency_key("/district/b", "same-1", "sub_1")
    assert key_a != key_b
    ledger.view.apply("sub_1", _line(Delivery(key_a, "sub_1", [a], [[]]), DeliveryOutcome.delivered, at))
    assert ledger.is_final(key_a) and ledger.state(key_b) is None
    ledger.view.apply("sub_1", _line(Delivery(key_b, "sub_1", [b], [[]], 2), DeliveryOutcome.retried, at))
    assert ledger.state(key_a)["state"] == "delivered"  # type: ignore[index]
    assert ledger.state(key_b) == {"state": "scheduled", "attempt": 3, "at_ms": at.timestamp() * 1000}
    line = orjson.loads(_line(Delivery(key_b, "sub_1", [b], [[]]), DeliveryOutcome.delivered, at))
    assert (line["event_source"], line["event_id"], line["event_sources"]) == ("/district/b", "same-1", ["/district/b"])

    other = Ledger(settings_for("127.0.0.1:9"), producer=None)
    digest = Delivery("msg_d", "sub_2", [a, b], [[], []], digest=True)
    other.view.apply("sub_2", _line(digest, DeliveryOutcome.delivered, at))
    assert other.state(idempotency_key("/press/a", "same-1", "sub_2"))["state"] == "digested"  # type: ignore[index]
    assert other.state(idempotency_key("/district/b", "same-1", "sub_2"))["state"] == "digested"  # type: ignore[index]
    # a digest line written before lines named the sources: its own key only
    old = orjson.loads(_line(Delivery("msg_old", "sub_3", [a], [[]], digest=True), DeliveryOutcome.delivered, at))
    del old["event_sources"], old["event_source"]
    other.view.apply("sub_3", orjson.dumps(old))
    assert other.is_final("msg_old") and len(other.view.items) == 4


def test_prune_forgets_only_entries_past_retention() -> None:
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    week = timedelta(milliseconds=LEDGER_RETENTION_MS)
    view = ledger.view

    def fold(key: str, outcome: DeliveryOutcome, at: datetime) -> None:  # as if applied back then
        view.fold(key, "sub_1", outcome.value, 1, None, at.timestamp() * 1000)

    fold("msg_old1", DeliveryOutcome.delivered, now - week - timedelta(days=2))
    fold("msg_old2", DeliveryOutcome.dead, now - week - timedelta(minutes=1))
    fold("msg_rewritten", DeliveryOutcome.retried, now - week - timedelta(days=1))
    fold("msg_new", DeliveryOutcome.delivered, now - timedelta(days=1))
    # written again lately: moves behind the newer entry and is kept
    fold("msg_rewritten", DeliveryOutcome.delivered, now - timedelta(hours=1))

    assert ledger.prune(now.timestamp() * 1000) == 2
    assert list(view.items) == ["msg_new", "msg_rewritten"]
    assert ledger.is_final("msg_rewritten") and ledger.is_final("msg_new")
    assert ledger.state("msg_old1") is None
    assert ledger.prune(now.timestamp() * 1000) == 0
    # a week later everything has gone
    assert ledger.prune((now + week).timestamp() * 1000) == 2 and not view.items


def test_lines_past_retention_are_not_read_into_memory() -> None:
    """A log kept longer than the ledger's retention (for audit) does not grow the ledger."""
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    now = datetime.now(UTC)
    week = timedelta(milliseconds=LEDGER_RETENTION_MS)
    ledger.view.apply("sub_1", _line(_one("msg_old"), DeliveryOutcome.delivered, now - week - timedelta(hours=1)))
    ledger.view.apply("sub_1", _line(_one("msg_new"), DeliveryOutcome.delivered, now - week + timedelta(hours=1)))
    assert list(ledger.view.items) == ["msg_new"]


@pytest.mark.kafka
async def test_follows_only_while_another_instance_may_write(topics: AntingSettings) -> None:
    """An instance holding every partition of all three groups stops following the ledger;
    after a rebalance it reads what others wrote; holding only some, it follows again."""
    producer = make_producer(topics)
    await producer.start()
    alone, other = Ledger(topics, producer), Ledger(topics, producer)
    await alone.start()
    await other.start()
    try:
        assert alone.view.following  # from the start, as before any assignment
        await alone.assigned("events", 6, 6)
        assert alone.view.following  # the retries group is not known yet
        await alone.assigned("retries", 6, 6)
        assert alone.view.following  # nor the digests group
        await alone.assigned("digests", 6, 6)
        assert not alone.view.following

        now = datetime.now(UTC)
        await (await other.record(_one("msg_a"), DeliveryOutcome.delivered,
                                  _line(_one("msg_a"), DeliveryOutcome.delivered, now)))
        await asyncio.sleep(1.5)
        assert alone.state("msg_a") is None  # not followed ...
        await alone.assigned("events", 6, 6)  # ... until the next rebalance
        assert alone.is_final("msg_a") and not alone.view.following

        await alone.assigned("events", 3, 6)  # another instance took half the partitions
        assert alone.view.following
        await (await other.record(_one("msg_b", 5), DeliveryOutcome.dead,
                                  _line(_one("msg_b", 5), DeliveryOutcome.dead, now)))
        await wait_until(lambda: alone.is_final("msg_b"), 20, "msg_b followed")
    finally:
        await alone.stop()
        await other.stop()
        await other.batches.flush()
        await producer.stop()


@pytest.mark.kafka
async def test_start_fetches_only_the_retention_period(topics: AntingSettings) -> None:
    """At start the ledger seeks by Kafka timestamp to the start of its retention: a line
    written (by the record's timestamp) before that is not even read, however long the
    log is kept; the lines after it are."""
    producer = make_producer(topics)
    await producer.start()
    week_ms = LEDGER_RETENTION_MS
    now = datetime.now(UTC)
    try:
        topic = topics.topic(NOTIFICATIONS)
        # the line's own time is recent, so only the seek can keep it out
        for key, ts in (("msg_before", now.timestamp() * 1000 - week_ms - 3_600_000),
                        ("msg_after", now.timestamp() * 1000 - week_ms + 3_600_000),
                        ("msg_now", None)):
            await producer.send_and_wait(topic, key=b"sub_1", timestamp_ms=None if ts is None else int(ts),
                                         value=_line(_one(key), DeliveryOutcome.delivered, now))
    finally:
        await producer.stop()
    ledger = Ledger(topics, producer=None)
    await ledger.start()
    try:
        assert set(ledger.view.items) == {"msg_after", "msg_now"}
    finally:
        await ledger.stop()
