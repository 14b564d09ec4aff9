"""Consumer lag as the tools outside the services compute it, for ``anting_consumer_lag``.

Lag is the broker's end offset (high watermark) minus the group's *committed* offset,
per (group, topic, partition): what ``kafka-consumer-groups.sh --describe``, Burrow and
kafka-lag-exporter report. It is measured from the broker, by a :class:`LagMonitor`
with clients of its own that runs for the whole life of a service, so it stays true
when the service's consumer is gone: a stage whose consumer session fails and starts
again in a loop commits nothing, and its lag keeps growing with every record written.
(A gauge read from the live consumer's position read 0 then: no consumer, no gauge
update, and a restarted consumer's position is its committed offset again.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import make_admin, make_consumer
from shared.metrics import CONSUMER_LAG
from shared.runtime import BackgroundTask
from shared.settings import AntingSettings

log = logging.getLogger(__name__)


def lag_of(
    end: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
    start: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Records behind per partition of ``end``: ``end - committed``, never below 0.

    ``end`` is each partition's end offset (the offset the next record written gets),
    ``committed`` the group's committed offsets (the next record the group would
    read); a partition with no committed offset (absent or negative, as OffsetFetch
    answers) counts from its log start offset in ``start`` (0 when unknown), the
    way the group would start reading it (``auto.offset.reset=earliest``)."""
    out: dict[TopicPartition, int] = {}
    for tp, high in end.items():
        at = committed.get(tp, -1)
        if at < 0:
            at = start.get(tp, 0)
        out[tp] = max(0, high - at)
    return out


class LagMonitor(BackgroundTask):
    """Measures the lag of consumer groups every ``interval`` seconds and sets
    ``anting_consumer_lag{group,topic,partition}``, until stopped.

    ``groups`` maps each consumer group to the topics it reads (full names, with the
    prefix). Each round lists the topics' partitions (metadata of all topics, so that
    no topic is created by asking), their end and log start offsets (ListOffsets, with
    ``read_uncommitted``: the high watermark the outside tools use, not the last
    stable offset) and the group's committed offsets (OffsetFetch). Topics that do
    not exist yet report nothing until they do.

    Best effort: a failed or slow round (``timeout`` seconds) is logged at debug, its
    clients are closed and made again for the next round, and the gauge keeps the
    last values it had. Use as ``async with LagMonitor(settings, groups):`` around a
    service's life, or call :meth:`measure` for one round.
    """

    task_name = "consumer lag monitor"

    def __init__(
        self,
        settings: AntingSettings,
        groups: Mapping[str, Iterable[str]],
        *,
        interval: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.groups = {group: tuple(topics) for group, topics in groups.items()}
        self.interval = interval
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._reported: dict[str, set[TopicPartition]] = {}

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None:
            admin = make_admin(self.settings)
            try:
                await admin.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._admin = admin
        if self._offsets is None:
            # no group, no subscription: it only asks for offsets, never fetches records
            offsets = make_consumer(self.settings, group_id=None, isolation_level="read_uncommitted")
            try:
                await offsets.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await offsets.stop()
                raise
            self._offsets = offsets
        return self._admin, self._offsets

    async def close(self) -> None:
        """Close the monitor's clients (the next :meth:`measure` makes new ones)."""
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if offsets is not None:
            with contextlib.suppress(Exception):
                await offsets.stop()

    async def _partitions(self, admin: AIOKafkaAdminClient, topics: set[str]) -> dict[str, list[TopicPartition]]:
        # all topics: a Metadata request naming a missing topic would create it where
        # the broker allows auto-creation
        described: list[dict[str, Any]] = await admin.describe_topics(None)
        out: dict[str, list[TopicPartition]] = {}
        for topic in described:
            name = topic["topic"]
            if name in topics and not topic["error_code"]:
                out[name] = sorted(TopicPartition(name, p["partition"]) for p in topic["partitions"])
        return out

    async def measure(self) -> dict[str, dict[TopicPartition, int]]:
        """One round: ``{group: {TopicPartition: records behind}}`` for every partition of
        the group's topics that exist, from the broker. Sets no gauge; raises what the
        clients raise (e.g. ``KafkaConnectionError`` with no broker)."""
        admin, offsets = await self._connect()
        wanted = {t for topics in self.groups.values() for t in topics}
        partitions = await self._partitions(admin, wanted)
        every = [tp for tps in partitions.values() for tp in tps]
        end: dict[TopicPartition, int] = await offsets.end_offsets(every) if every else {}
        start: dict[TopicPartition, int] = await offsets.beginning_offsets(every) if every else {}
        out: dict[str, dict[TopicPartition, int]] = {}
        for group, topics in self.groups.items():
            tps = [tp for t in topics for tp in partitions.get(t, ())]
            if not tps:
                out[group] = {}
                continue
            fetched = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {tp: om.offset for tp, om in fetched.items()}
            out[group] = lag_of({tp: end[tp] for tp in tps}, committed, start)
        return out

    def publish(self, lags: Mapping[str, Mapping[TopicPartition, int]]) -> None:
        """Set the gauge to ``lags`` (as :meth:`measure` returns it), and drop the series
        of partitions a group no longer has (a deleted topic)."""
        for group, by_tp in lags.items():
            for tp, behind in by_tp.items():
                CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(behind)
            for gone in self._reported.get(group, set()) - set(by_tp):
                with contextlib.suppress(KeyError):
                    CONSUMER_LAG.remove(group, gone.topic, str(gone.partition))
            self._reported[group] = set(by_tp)

    async def run(self) -> None:
        """Measure and publish every ``interval`` seconds until cancelled; never raises
        anything else, and closes its clients on the way out."""
        try:
            while True:
                try:
                    self.publish(await asyncio.wait_for(self.measure(), self.timeout))
                except Exception:  # best effort: never take the service down for a gauge
                    log.debug("consumer lag not measured; trying again", exc_info=True)
                    await self.close()  # fresh clients next round (e.g. after a broker restart)
                await asyncio.sleep(self.interval)
        finally:
            await self.close()


__all__ = ["LagMonitor", "lag_of"]
