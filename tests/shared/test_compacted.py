"""The compacted-topic view (a global table) on the real broker: restored to the end at
start, then kept current; a tombstone deletes; an empty topic is loaded at once; a bad
record is handled as its user says and hides nothing else; a view that stopped following
catches up when asked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from devtools.testing import produce, wait_until
from shared.compacted import CompactedView
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS, SUBSCRIPTIONS

pytestmark = pytest.mark.kafka


def _view(settings: AntingSettings, **options: Any) -> CompactedView[int]:
    # the subscriptions topic: compacted, one partition; values here are integers
    return CompactedView(settings, settings.topic(SUBSCRIPTIONS), int, **options)


async def test_restores_follows_and_deletes(topics: AntingSettings) -> None:
    """Start reads every record up to the end (the latest value per key) before ``ready``;
    afterwards writes and tombstones of other clients show up, each batch's changed keys
    told to ``on_change``."""
    topic = topics.topic(SUBSCRIPTIONS)
    await produce(topics, topic, [b"1", b"2", b"10"], keys=[b"a", b"b", b"a"])
    changes: list[list[str]] = []

    def changed(keys: Sequence[str]) -> None:
        changes.append(list(keys))

    view = _view(topics, on_change=changed)
    assert not view.ready.is_set()
    await view.start()
    try:
        assert view.ready.is_set() and view.following
        assert view.items == {"b": 2, "a": 10}
        assert list(view.items) == ["b", "a"]  # in order of last write
        assert view.positions == {0: 3}
        assert [k for batch in changes for k in batch] == ["a", "b", "a"]

        changes.clear()
        await produce(topics, topic, [b"3", None, None], keys=[b"c", b"b", b"never-written"])
        await wait_until(lambda: "c" in view.items and "b" not in view.items, 20, "update and tombstone")
        assert view.items == {"a": 10, "c": 3}
        # the tombstone of a key the table never held changes nothing and is not told
        assert sorted(k for batch in changes for k in batch) == ["b", "c"]
        await wait_until(lambda: view.positions == {0: 6}, 10, "position at the end")
    finally:
        await view.stop()
    assert not view.following
    assert view.items == {"a": 10, "c": 3}  # the table stays as it was


async def test_empty_topic_is_loaded_at_once(topics: AntingSettings) -> None:
    view = _view(topics)
    await view.start(timeout=10)
    try:
        assert view.ready.is_set() and view.items == {}
        await view.catch_up(timeout=5)  # nothing to wait for
    finally:
        await view.stop()


async def test_bad_record_is_skipped_with_a_warning_by_default(
    topics: AntingSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """A value ``decode`` refuses leaves its key as it was, is counted and logged with its
    coordinates, and the records after it are read."""
    topic = topics.topic(SUBSCRIPTIONS)
    await produce(topics, topic, [b"1", b"not a number", b"2"], keys=[b"a", b"a", b"b"])
    caplog.set_level(logging.WARNING, logger="shared.compacted")
    view = _view(topics)
    await view.start()
    try:
        assert view.items == {"a": 1, "b": 2} and view.skipped == 1
        warned = [r for r in caplog.records if r.getMessage() == "unreadable record skipped"]
        assert len(warned) == 1
        assert (warned[0].topic, warned[0].offset, warned[0].key) == (topic, 1, "a")  # type: ignore[attr-defined]
    finally:
        await view.stop()


async def test_bad_record_goes_to_the_users_handler(topics: AntingSettings) -> None:
    """``on_invalid`` gets the record and the error; ``key_of`` puts a value under the key
    it names itself, and a tombstone deletes the record key's row."""
    topic = topics.topic(SUBSCRIPTIONS)
    await produce(topics, topic, [b"7", b"x", b"8", None], keys=[b"k1", b"k2", b"k3", b"id-8"])
    refused: list[tuple[int, bytes | None, str]] = []

    def on_invalid(record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
        refused.append((record.offset, record.value, type(exc).__name__))

    view = _view(topics, on_invalid=on_invalid, key_of=lambda key, value: f"id-{value}")
    await view.start()
    try:
        assert refused == [(1, b"x", "ValueError")]
        assert view.items == {"id-7": 7} and view.skipped == 1
    finally:
        await view.stop()


async def test_catch_up_reads_what_was_written_while_not_following(topics: AntingSettings) -> None:
    """A view that stopped following reads nothing until :meth:`catch_up`, which reads up
    to the end as of its call and leaves the view not following."""
    topic = topics.topic(SUBSCRIPTIONS)
    view = _view(topics)
    await view.start()
    try:
        view.set_following(False)
        await produce(topics, topic, [b"1"], keys=[b"a"])
        assert view.items == {}
        await view.catch_up(timeout=20)
        assert view.items == {"a": 1} and not view.following
        view.set_following(True)
        await produce(topics, topic, [b"2"], keys=[b"a"])
        await wait_until(lambda: view.items == {"a": 2}, 20, "followed again")
    finally:
        await view.stop()


async def test_every_partition_and_no_keyless_record(topics: AntingSettings) -> None:
    """Every partition is read (no consumer group: the whole table in every process), and a
    record without a key, which has no row, is dropped."""
    topic = topics.topic(ENRICHED_EVENTS)  # three partitions
    keys: list[bytes | None] = [f"k{i}".encode() for i in range(12)]
    await produce(topics, topic, [str(i).encode() for i in range(13)], keys=[*keys, None])
    view: CompactedView[int] = CompactedView(topics, topic, int)
    await view.start()
    try:
        assert view.items == {f"k{i}": i for i in range(12)}
        assert set(view.positions) == {0, 1, 2} and sum(view.positions.values()) == 13
    finally:
        await view.stop()
