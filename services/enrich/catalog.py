"""The organization catalog in memory: the compacted ``organizations`` topic held as a
global table (:class:`shared.compacted.CompactedView`: every worker reads all of it, no
consumer group, no commits), restored at start and kept current while the service runs.

:meth:`Catalog.catch_up` lets the pipeline wait, before a batch of events, until every
catalog update already on the topic is applied — so an event published after an update
was acknowledged is resolved against it.

``catalog_version`` is the table's position on the topic ("<partition>:<next
offset>", e.g. ``0:137``): two events with the same version were resolved
against the same catalog, and a later version means a later catalog.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiokafka import ConsumerRecord

from services.enrich.resolve import DEFAULT_THRESHOLD, CatalogIndex
from shared.compacted import CompactedView
from shared.kafka import ensure_topics, make_producer
from shared.organizations import Organization, parse_organization
from shared.settings import AntingSettings
from shared.topics import ORGANIZATIONS
from shared.topology import ENRICH_CATALOG

log = logging.getLogger(__name__)


class Catalog:
    """Organizations by id (``organizations``), their lookup index (``index``, rebuilt
    after every batch read) and the position they were read up to (``version``).

    ``table`` is the view of the topic: :meth:`start` restores it (``table.ready`` is
    set then), :meth:`stop` closes it. A record that is not a valid organization is
    skipped with a warning (the catalog commits nothing, so a dead letter would repeat on
    every start; ``anting orgs put`` validates before writing); a record whose key is
    not its organization's id is kept under the id."""

    def __init__(self, settings: AntingSettings, threshold: float = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self.index = CatalogIndex({}, threshold)
        self.table: CompactedView[Organization] = CompactedView(
            settings, ENRICH_CATALOG.input(settings.topic_prefix), parse_organization,
            key_of=_own_id, on_change=self._rebuild, on_invalid=_invalid,
            # the catalog is written by plain producers; read_committed costs nothing here
            fetch_max_wait_ms=100,
        )

    @property
    def organizations(self) -> dict[str, Organization]:
        return self.table.items

    @property
    def version(self) -> str:
        return ",".join(f"{p}:{o}" for p, o in sorted(self.table.positions.items())) or "0:0"

    async def start(self, timeout: float = 120.0) -> None:
        """Read the whole topic, then follow it. Raises ``TimeoutError`` when that takes
        over ``timeout`` seconds: enrich does not start on part of its catalog."""
        await self.table.start(timeout)

    async def stop(self) -> None:
        """Stop following the topic."""
        await self.table.stop()

    async def catch_up(self, timeout: float = 10.0) -> None:
        """Return once every record now on the topic is applied; after ``timeout`` seconds
        log that the catalog is behind and return anyway (the next batch asks again)."""
        try:
            await self.table.catch_up(timeout)
        except TimeoutError:
            log.warning("catalog behind its topic; going on", extra={"version": self.version})

    def _rebuild(self, changed: Sequence[str]) -> None:
        self.index = CatalogIndex(dict(self.table.items), self.threshold)
        log.info("catalog updated", extra={
            "organizations": len(self.table.items), "version": self.version})


def _own_id(key: str, org: Organization) -> str:
    if key != org.id:
        log.warning("organization key differs from its id; the id wins", extra={"key": key, "id": org.id})
    return org.id


def _invalid(record: ConsumerRecord[bytes, bytes], exc: Exception) -> None:
    log.warning("invalid organization record skipped",
                extra={"offset": record.offset, "error": str(exc)[:300]})


# --- the shipped catalog and writing it to the topic -----------------------------------

DATA_FILE = Path(__file__).parent / "data" / "organizations.json"


def shipped() -> list[Organization]:
    """The catalog shipped with the service (``data/organizations.json``)."""
    return read_file(DATA_FILE)


def read_file(path: Path) -> list[Organization]:
    # JSON mode: the strict model takes "association" for its enum from JSON text
    return [parse_organization(orjson.dumps(o)) for o in orjson.loads(path.read_bytes())]


def encode_organization(org: Organization) -> bytes:
    """The canonical bytes of a record on the topic (so equal records compare equal)."""
    return orjson.dumps(org.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS)


async def current(settings: AntingSettings) -> dict[str, bytes]:
    """What the topic holds now: the latest value bytes by record key (invalid ones too)."""
    await ensure_topics(settings, [ORGANIZATIONS])
    raw: CompactedView[bytes] = CompactedView(settings, settings.topic(ORGANIZATIONS), bytes)
    await raw.start()
    await raw.stop()
    return raw.items


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
            value = encode_organization(org)
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


__all__ = ["DATA_FILE", "Catalog", "current", "encode_organization", "read_file", "shipped",
           "write"]
