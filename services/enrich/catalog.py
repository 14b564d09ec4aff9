"""The organization catalog in memory, fed by a plain reader of the compacted
``organizations`` topic and kept current while the service runs.

Every worker reads the whole topic (no consumer group, no commits): the catalog
is small, and each worker needs all of it. :meth:`Catalog.catch_up` lets the
pipeline wait, before a batch of events, until every catalog update already on
the topic is applied — so an event published after an update was acknowledged
is resolved against it.

``catalog_version`` is the reader's position on the topic ("<partition>:<next
offset>", e.g. ``0:137``): two events with the same version were resolved
against the same catalog, and a later version means a later catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from pydantic import ValidationError

from services.enrich.resolve import DEFAULT_THRESHOLD, CatalogIndex
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.organizations import Organization, RecordTooLarge, parse_organization
from shared.settings import AntingSettings
from shared.topics import ORGANIZATIONS

log = logging.getLogger(__name__)


class Catalog:
    """Organizations by id, their lookup index, and the position they were read up to."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self.organizations: dict[str, Organization] = {}
        self.positions: dict[int, int] = {}
        self.index = CatalogIndex({}, threshold)
        self.skipped = 0

    @property
    def version(self) -> str:
        return ",".join(f"{p}:{o}" for p, o in sorted(self.positions.items())) or "0:0"

    def apply(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        """One record of the topic: an upsert, or (null value) a delete. Call :meth:`rebuild` after."""
        self.positions[partition] = offset + 1
        if value is None:
            if key is not None:
                self.organizations.pop(key.decode(errors="replace"), None)
            return
        try:
            org = parse_organization(value)
        except (ValidationError, RecordTooLarge) as exc:
            # the catalog reader commits nothing, so a dead letter would repeat on
            # every start: log it; `anting orgs put` validates before writing
            self.skipped += 1
            log.warning("invalid organization record skipped",
                        extra={"offset": offset, "error": str(exc)[:300]})
            return
        if key is not None and key.decode(errors="replace") != org.id:
            log.warning("organization key differs from its id; the id wins",
                        extra={"offset": offset, "id": org.id})
        self.organizations[org.id] = org

    def rebuild(self) -> None:
        self.index = CatalogIndex(dict(self.organizations), self.threshold)


class CatalogReader:
    """Reads ``organizations`` from the beginning, then follows it, applying each batch."""

    def __init__(self, settings: AntingSettings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.topic = settings.topic(ORGANIZATIONS)
        self.consumer: Any = None
        # end offsets are asked on a client of their own: on the follower's connection
        # the request would queue behind its long-poll fetch (~fetch_max_wait_ms per batch)
        self.probe: Any = None
        self.partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Condition()
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        # the catalog is written by plain producers; read_committed costs nothing here
        self.consumer = make_consumer(self.settings, group_id=None, fetch_max_wait_ms=100)
        await self.consumer.start()
        parts = self.consumer.partitions_for_topic(self.topic)
        for _ in range(100):
            if parts:
                break
            await asyncio.sleep(0.1)
            await self.consumer._client.force_metadata_update()  # topic just created
            parts = self.consumer.partitions_for_topic(self.topic)
        if not parts:
            await self.consumer.stop()
            raise RuntimeError(f"topic {self.topic} not found")
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.partitions)
        await self.consumer.seek_to_beginning(*self.partitions)
        self.probe = make_consumer(self.settings, group_id=None)
        await self.probe.start()
        await self.catch_up(timeout=120.0, initial=True)
        self.loaded.set()
        self._task = asyncio.create_task(self._follow(), name="catalog-reader")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in (self.probe, self.consumer):
            if client:
                await client.stop()

    async def _read_once(self, timeout_ms: int) -> None:
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=5000)
        if not batch:
            return
        for tp, records in batch.items():
            for r in records:
                self.catalog.apply(r.key, r.value, tp.partition, r.offset)
        self.catalog.rebuild()
        log.info("catalog updated", extra={
            "organizations": len(self.catalog.organizations), "version": self.catalog.version})

    async def _follow(self) -> None:
        while True:
            try:
                await self._read_once(500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalog read failed; retrying")
                await asyncio.sleep(1.0)
            async with self._progress:
                self._progress.notify_all()

    async def catch_up(self, timeout: float = 10.0, initial: bool = False) -> None:
        """Return once every record now on the topic is applied (bounded by ``timeout``)."""
        ends = await self.probe.end_offsets(self.partitions)
        deadline = asyncio.get_running_loop().time() + timeout

        def done() -> bool:
            return all(self.catalog.positions.get(tp.partition, 0) >= end
                       or end == 0 for tp, end in ends.items())

        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("catalog behind its topic; going on", extra={"version": self.catalog.version})
                return
            if initial:
                await self._read_once(200)
                # a compacted topic's end may be a transaction marker or a removed record
                if not done():
                    positions = {tp: await self.consumer.position(tp) for tp in self.partitions}
                    for tp, pos in positions.items():
                        if pos >= ends[tp]:
                            self.catalog.positions[tp.partition] = max(
                                self.catalog.positions.get(tp.partition, 0), pos)
                continue
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), timeout=min(left, 0.5))
            for tp in self.partitions:
                pos = await self.consumer.position(tp)
                if pos >= ends[tp]:
                    self.catalog.positions[tp.partition] = max(
                        self.catalog.positions.get(tp.partition, 0), pos)


# --- the shipped catalog and writing it to the topic -----------------------------------

DATA_FILE = Path(__file__).parent / "data" / "organizations.json"


def shipped() -> list[Organization]:
    """The catalog shipped with the service (``data/organizations.json``)."""
    return read_file(DATA_FILE)


def read_file(path: Path) -> list[Organization]:
    # JSON mode: the strict model takes "association" for its enum from JSON text
    return [parse_organization(orjson.dumps(o)) for o in orjson.loads(path.read_bytes())]


def encode(org: Organization) -> bytes:
    """The canonical bytes of a record on the topic (so equal records compare equal)."""
    return orjson.dumps(org.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)


async def current(settings: AntingSettings) -> dict[str, bytes]:
    """What the topic holds now: the latest value bytes by organization id."""
    catalog = Catalog()
    reader = CatalogReader(settings, catalog)
    raw: dict[str, bytes] = {}
    original_apply = catalog.apply

    def apply(key: bytes | None, value: bytes | None, partition: int, offset: int) -> None:
        original_apply(key, value, partition, offset)
        if key is not None:
            if value is None:
                raw.pop(key.decode(errors="replace"), None)
            else:
                raw[key.decode(errors="replace")] = value

    catalog.apply = apply  # type: ignore[method-assign]
    await ensure_topics(settings, [ORGANIZATIONS])
    await reader.start()
    await reader.stop()
    return raw


async def write(
    settings: AntingSettings,
    upserts: Sequence[Organization] = (),
    deletes: Sequence[str] = (),
    only_changed: bool = True,
) -> tuple[int, int]:
    """Upsert and delete (tombstone) records; with ``only_changed``, a record the topic
    already holds byte for byte is not written again. Returns (written, unchanged)."""
    existing = await current(settings) if only_changed else {}
    topic = settings.topic(ORGANIZATIONS)
    producer = make_producer(settings)
    await producer.start()
    written = unchanged = 0
    try:
        for org in upserts:
            value = encode(org)
            if existing.get(org.id) == value:
                unchanged += 1
                continue
            await producer.send(topic, key=org.id.encode(), value=value)
            written += 1
        for oid in deletes:
            if only_changed and oid not in existing:
                unchanged += 1
                continue
            await producer.send(topic, key=oid.encode(), value=None)
            written += 1
        await producer.flush()
    finally:
        await producer.stop()
    return written, unchanged
