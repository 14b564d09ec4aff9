"""The delivered-ledger forgets what is older than its retention, in order of last
write, so a long-running notify does not grow with every delivery it ever made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from services.notify.ledger import Ledger
from shared.testing import settings_for
from shared.topics import LEDGER_RETENTION_MS


def _entry(state: str, at: datetime) -> bytes:
    return orjson.dumps({"state": state, "subscription": "sub_1", "attempt": 1, "at": at.isoformat()})


def test_prune_forgets_only_entries_past_retention() -> None:
    ledger = Ledger(settings_for("127.0.0.1:9"), producer=None)
    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    week = timedelta(milliseconds=LEDGER_RETENTION_MS)
    view = ledger.view
    view.apply("msg_old1", _entry("delivered", now - week - timedelta(days=2)))
    view.apply("msg_old2", _entry("dead", now - week - timedelta(minutes=1)))
    view.apply("msg_rewritten", _entry("scheduled", now - week - timedelta(days=1)))
    view.apply("msg_new", _entry("delivered", now - timedelta(days=1)))
    # written again lately: moves behind the newer entry and is kept
    view.apply("msg_rewritten", _entry("delivered", now - timedelta(hours=1)))

    assert ledger.prune(now.timestamp() * 1000) == 2
    assert list(view.items) == ["msg_new", "msg_rewritten"]
    assert ledger.is_final("msg_rewritten") and ledger.is_final("msg_new")
    assert ledger.state("msg_old1") is None
    assert ledger.prune(now.timestamp() * 1000) == 0
    # a week later everything has gone
    assert ledger.prune((now + week).timestamp() * 1000) == 2 and not view.items
