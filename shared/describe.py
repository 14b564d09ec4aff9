"""What ``kafka-topics.sh --describe`` and ``kafka-consumer-groups.sh --describe`` print,
from the project's own client (aiokafka), for ``anting topics describe`` and ``anting
groups``: no Kafka distribution is needed beside the stack.

Topics: partitions, each one's leader, replicas and in-sync replicas, the replication
factor and the configuration the topic overrides (DescribeConfigs entries whose source is
the topic's own, which is what ``kafka-topics.sh`` lists under ``Configs``). Groups: state,
members with what each is assigned, and per partition the committed offset, the end offset
(the high watermark, as the outside tools read it) and the lag between them.

Errors are raised, never turned into an empty answer: a broker that refuses or does not
answer raises what aiokafka raises (the CLI names the refusal), a topic or group asked
for by name that the broker does not know raises :class:`NotFound`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import for_code

from shared.kafka import make_admin, make_consumer
from shared.settings import AntingSettings

__all__ = [
    "GroupInfo",
    "GroupMember",
    "NotFound",
    "PartitionInfo",
    "PartitionOffsets",
    "TopicInfo",
    "describe_groups",
    "describe_topics",
    "list_groups",
]

_TOPIC_OVERRIDE = 1  # DescribeConfigs' config_source of a topic's own setting
_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION
_DEAD = "Dead"  # DescribeGroups' state of a group the coordinator does not know


class NotFound(LookupError):
    """Topics or groups asked for by name that the broker does not have (or does not let
    this principal see); ``names`` lists them."""

    def __init__(self, kind: str, names: Sequence[str]) -> None:
        super().__init__(f"no such {kind}: {', '.join(names)}")
        self.names = list(names)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition: its leader's broker id (-1 without one), its replicas and in-sync
    replicas (broker ids)."""

    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic as ``kafka-topics.sh --describe`` shows it; ``configs`` holds only what
    the topic sets itself (name → value), ``internal`` is true for Kafka's own topics."""

    name: str
    partitions: tuple[PartitionInfo, ...]
    configs: dict[str, str]
    internal: bool

    @property
    def replication(self) -> int:
        """The replication factor: the smallest replica count over its partitions."""
        return min((len(p.replicas) for p in self.partitions), default=0)


@dataclass(frozen=True, slots=True)
class GroupMember:
    """A member of a group: its id, its client id and host, and the partitions it is
    assigned (empty for a group that is not a consumer group)."""

    member_id: str
    client_id: str
    host: str
    assignment: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """A partition of a group: its committed offset (``None`` when the group has none),
    the end offset (the offset the next record written gets) and the lag, end minus
    committed (``None`` without a commit, as ``kafka-consumer-groups.sh`` prints ``-``);
    ``member`` is the id of the member assigned it, if any. ``end`` is ``None`` for a
    partition that no longer exists (a deleted topic the group had committed on)."""

    topic: str
    partition: int
    committed: int | None
    end: int | None
    member: str | None

    @property
    def lag(self) -> int | None:
        """Records behind: ``end - committed``, never below 0; ``None`` without a commit
        or an end."""
        if self.committed is None or self.end is None:
            return None
        return max(0, self.end - self.committed)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A consumer group: its state (``Stable``, ``Empty``, ``PreparingRebalance``, ...),
    protocol type and assignor, members, and its partitions' offsets (every partition it
    has committed on or is assigned), sorted by topic and partition."""

    group: str
    state: str
    protocol_type: str
    protocol: str
    members: tuple[GroupMember, ...] = ()
    partitions: tuple[PartitionOffsets, ...] = field(default=())

    @property
    def lag(self) -> int:
        """The group's total lag over the partitions it has committed on."""
        return sum(p.lag or 0 for p in self.partitions)


async def _admin(settings: AntingSettings) -> AIOKafkaAdminClient:
    admin = make_admin(settings)
    try:
        await admin.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await admin.close()
        raise
    return admin


async def describe_topics(settings: AntingSettings, names: Sequence[str] = ()) -> list[TopicInfo]:
    """Every topic of the cluster (``names`` empty), or the ``names`` given (full names,
    with any prefix), sorted by name. Raises :class:`NotFound` naming the asked-for
    topics the broker does not list, and what aiokafka raises when the broker refuses
    (``TopicAuthorizationFailedError``) or does not answer (``KafkaConnectionError``)."""
    admin = await _admin(settings)
    try:
        # the metadata of all topics, then a selection: a Metadata request naming a missing
        # topic would create it where the broker allows auto-creation
        described: list[dict[str, Any]] = await admin.describe_topics(None)
        by_name = {t["topic"]: t for t in described}
        wanted = list(dict.fromkeys(names)) or sorted(by_name)
        missing = [n for n in wanted if n not in by_name or by_name[n]["error_code"] == _UNKNOWN_TOPIC]
        if missing:
            raise NotFound("topic", missing)
        for name in wanted:
            if by_name[name]["error_code"]:
                raise for_code(by_name[name]["error_code"])(f"describing topic {name}")
        configs = await _overrides(admin, wanted) if wanted else {}
    finally:
        await admin.close()
    out = []
    for name in sorted(wanted):
        t = by_name[name]
        parts = tuple(sorted(
            (PartitionInfo(p["partition"], p["leader"], tuple(p["replicas"]), tuple(p["isr"]))
             for p in t["partitions"]), key=lambda p: p.partition))
        out.append(TopicInfo(name, parts, configs.get(name, {}), bool(t.get("is_internal"))))
    return out


async def _overrides(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """DescribeConfigs of ``names``: each topic's own settings (name → value). Raises
    the error of a topic the broker could not describe (an authorization error, say)."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for res in response.resources:
            error_code, message, _, name, entries = res[:5]
            if error_code:
                raise for_code(error_code)(f"describing the configuration of {name}: {message}")
            # entry: (name, value, read_only, config_source, is_sensitive, ...)
            out[name] = {e[0]: ("(sensitive)" if e[4] else e[1] or "") for e in entries
                         if e[3] == _TOPIC_OVERRIDE}
    return out


async def list_groups(settings: AntingSettings) -> list[tuple[str, str]]:
    """``(group, protocol type)`` of every group the brokers coordinate, sorted. Raises
    what aiokafka raises when a broker refuses or does not answer."""
    admin = await _admin(settings)
    try:
        return sorted((str(g[0]), str(g[1])) for g in await admin.list_consumer_groups())
    finally:
        await admin.close()


async def describe_groups(settings: AntingSettings, groups: Sequence[str] = ()) -> list[GroupInfo]:
    """Every group of the cluster (``groups`` empty) or the ``groups`` given, sorted by
    name, each with its members and per partition the committed offset, end offset and
    lag. Raises :class:`NotFound` for a named group that has neither members nor
    committed offsets, and what aiokafka raises when the broker refuses (e.g.
    ``GroupAuthorizationFailedError``) or does not answer."""
    admin = await _admin(settings)
    try:
        names = list(dict.fromkeys(groups)) or [g for g, _ in sorted(
            (str(g[0]), str(g[1])) for g in await admin.list_consumer_groups())]
        described: dict[str, tuple[Any, ...]] = {}
        # one group a request: aiokafka (0.14) failed to decode the broker's answer for
        # all of a stack's groups at once (a buffer underrun that closed the connection),
        # while each group alone decoded
        for name in names:
            for response in await admin.describe_consumer_groups([name]):
                for g in response.groups:
                    described[g[1]] = tuple(g)
        committed: dict[str, dict[TopicPartition, int]] = {}
        for name in names:
            error_code = described[name][0] if name in described else 0
            if error_code:
                raise for_code(error_code)(f"describing group {name}")
            fetched = await admin.list_consumer_group_offsets(name)
            committed[name] = {tp: om.offset for tp, om in fetched.items() if om.offset >= 0}
        # every partition that exists: a group may keep commits on a deleted topic
        existing = {TopicPartition(t["topic"], p["partition"])
                    for t in await admin.describe_topics(None) if not t["error_code"]
                    for p in t["partitions"]}
    finally:
        await admin.close()

    infos: list[GroupInfo] = []
    missing: list[str] = []
    for name in names:
        _, _, state, protocol_type, protocol, raw_members = described.get(
            name, (0, name, _DEAD, "", "", []))[:6]
        members = tuple(_member(m, protocol_type) for m in raw_members)
        if state == _DEAD and not committed[name]:
            missing.append(name)
        infos.append(GroupInfo(name, state, protocol_type, protocol, members))
    if missing and groups:
        raise NotFound("consumer group", missing)

    every = sorted({tp for name in names for tp in committed[name]}
                   | {tp for info in infos for m in info.members for tp in m.assignment})
    end = await _end_offsets(settings, [tp for tp in every if tp in existing])
    out = []
    for info in infos:
        owner = {tp: m.member_id for m in info.members for tp in m.assignment}
        tps = sorted(set(committed[info.group]) | set(owner))
        parts = tuple(PartitionOffsets(tp.topic, tp.partition, committed[info.group].get(tp),
                                       end.get(tp), owner.get(tp)) for tp in tps)
        out.append(GroupInfo(info.group, info.state, info.protocol_type, info.protocol,
                             info.members, parts))
    return out


def _member(raw: Sequence[Any], protocol_type: str) -> GroupMember:
    """A DescribeGroups member; its assignment decoded when the group is a consumer group
    (another protocol's assignment bytes mean something else)."""
    member_id, client_id, host, _metadata, assignment = raw[:5]
    tps: tuple[TopicPartition, ...] = ()
    if protocol_type == "consumer" and assignment:
        with contextlib.suppress(Exception):  # an assignment we cannot read: shown as none
            tps = tuple(sorted(ConsumerProtocolMemberAssignment.decode(assignment).partitions()))
    return GroupMember(member_id, client_id, host, tps)


async def _end_offsets(settings: AntingSettings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The end offsets (high watermarks, ``read_uncommitted`` as the outside tools read
    them) of ``tps``, partitions that exist."""
    if not tps:
        return {}
    consumer = make_consumer(settings, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()
