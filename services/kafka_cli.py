"""``anting topics describe`` and ``anting groups``: what ``kafka-topics.sh --describe``
and ``kafka-consumer-groups.sh --describe`` print, over the project's own Kafka client
(shared/describe.py), so that looking at the cluster needs no Kafka distribution.

Each command says on stderr which broker it asks and as whom; a broker that refuses or
does not answer, or a topic or group that is not there, is an ``error:`` line naming the
broker and exit code 2, never an empty listing. The listings go to stdout as aligned
plain text (one row a line, no wrapping), so they can be piped to ``grep`` and ``awk``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from shared.settings import AntingSettings

__all__ = ["groups_app", "groups_describe", "groups_list", "topics_describe"]

groups_app = typer.Typer(
    help="Consumer groups on the broker: members, committed and end offsets, lag.",
    no_args_is_help=True,
)


def _columns(header: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    """``header`` and ``rows`` as left-aligned columns two spaces apart; ``None`` as ``-``."""
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _settings() -> AntingSettings:
    from shared.settings import AntingSettings, load

    return load(AntingSettings)


def _not_found(exc: LookupError, settings: AntingSettings) -> NoReturn:
    """``error: <exc>`` naming the broker on stderr, then exit 2."""
    from rich.text import Text

    from services.cli import console

    console.print(Text.assemble(("error: ", "red"),
                                f"{exc} (broker {settings.kafka.bootstrap_servers})"))
    raise typer.Exit(2)


def topics_describe(
    topics: Annotated[list[str] | None, typer.Argument(
        help="full topic names (with any prefix); every topic when none")] = None,
    internal: Annotated[bool, typer.Option(
        "--internal/--no-internal", help="include Kafka's own topics (__consumer_offsets, ...)")] = False,
) -> None:
    """Each topic on the broker as `kafka-topics.sh --describe` shows it: partition count,
    replication factor, the settings the topic overrides, and per partition its leader,
    replicas and in-sync replicas. Example: `anting topics describe enriched-events`."""
    from aiokafka.errors import KafkaError

    from services.cli import _kafka_failed, _on_broker
    from shared.describe import NotFound, describe_topics

    settings = _settings()
    _on_broker(settings, "describing topics")
    try:
        found = asyncio.run(describe_topics(settings, topics or ()))
    except NotFound as exc:
        _not_found(exc, settings)
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings, reads=tuple(topics or ()))
    shown = [t for t in found if topics or internal or not t.internal]
    out = []
    for t in shown:
        configs = ",".join(f"{k}={v}" for k, v in sorted(t.configs.items()))
        out.append(f"Topic: {t.name}  PartitionCount: {len(t.partitions)}  "
                   f"ReplicationFactor: {t.replication}  Configs: {configs}")
        out.append(_columns(
            ["PARTITION", "LEADER", "REPLICAS", "ISR"],
            [[p.partition, p.leader, ",".join(map(str, p.replicas)), ",".join(map(str, p.isr))]
             for p in t.partitions], indent="    "))
    sys.stdout.write("".join(line + "\n" for line in out))
    print(f"{len(shown)} topic(s)", file=sys.stderr)


@groups_app.command("list")
def groups_list() -> None:
    """The consumer groups the broker coordinates, with their protocol type, one a line
    (`kafka-consumer-groups.sh --list`)."""
    from aiokafka.errors import KafkaError

    from services.cli import _kafka_failed, _on_broker
    from shared.describe import list_groups

    settings = _settings()
    _on_broker(settings, "listing consumer groups")
    try:
        groups = asyncio.run(list_groups(settings))
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings)
    sys.stdout.write("".join(f"{g}  {kind or '-'}\n" for g, kind in groups))
    print(f"{len(groups)} group(s)", file=sys.stderr)


@groups_app.command("describe")
def groups_describe(
    groups: Annotated[list[str] | None, typer.Argument(
        help="group ids (e.g. anting-enrich); every group when none")] = None,
) -> None:
    """Each group as `kafka-consumer-groups.sh --describe` shows it: state and members,
    then per partition the committed offset, the end offset, the lag and the member
    assigned it (`-` where there is none). Example: `anting groups describe anting-notify`."""
    from aiokafka.errors import KafkaError

    from services.cli import _kafka_failed, _on_broker
    from shared.describe import NotFound, describe_groups

    settings = _settings()
    _on_broker(settings, "describing consumer groups")
    try:
        found = asyncio.run(describe_groups(settings, groups or ()))
    except NotFound as exc:
        _not_found(exc, settings)
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings)
    out = []
    for g in found:
        out.append(f"Group: {g.group}  State: {g.state}  Protocol: {g.protocol_type or '-'}"
                   f"/{g.protocol or '-'}  Members: {len(g.members)}  Lag: {g.lag}")
        clients = {m.member_id: m for m in g.members}
        rows = []
        for p in g.partitions:
            m = clients.get(p.member or "")
            rows.append([p.topic, p.partition, p.committed, p.end, p.lag,
                         p.member, m.host if m else None, m.client_id if m else None])
        if rows:
            out.append(_columns(["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                                 "CONSUMER-ID", "HOST", "CLIENT-ID"], rows, indent="    "))
        for m in g.members:
            if not m.assignment:  # a member with nothing assigned shows in no partition's row
                out.append(f"    member {m.member_id} ({m.client_id}, {m.host}): no partitions")
    sys.stdout.write("".join(line + "\n" for line in out))
    print(f"{len(found)} group(s)", file=sys.stderr)
