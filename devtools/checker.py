"""A Jepsen-style checker of a pipeline run: from what was written and what readers saw,
which records were lost, duplicated, read although aborted, reordered or never seen.

The names are Jepsen's (its Kafka workload, ``jepsen.tests.kafka``): a history is what the
clients observed, and each anomaly is a set of records, not a yes/no. It is pure: the chaos
run (``tests/cluster/chaos.py``) gathers the history, this module only judges it, so each
kind of error is tested on a hand-made history (``tests/cluster/test_checker.py``).

Identities: an input event is its CloudEvents (``source``, ``id``) pair (``EventId``);
an enriched record carries the same pair, so outputs are matched to inputs by it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["Delivery", "EventId", "Input", "Output", "Report", "check", "check_deliveries"]

EventId = tuple[str, str]
"""An event's identity: its CloudEvents (``source``, ``id``)."""


@dataclass(frozen=True)
class Input:
    """An input record the producer had acknowledged (``acked``) or not (sent, its fate
    unknown: a timeout), and where it landed when it was read back from the input topic
    (``partition``/``offset`` ``None`` when no reader found it)."""

    event: EventId
    key: bytes
    acked: bool = True
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class Output:
    """An enriched record a ``read_committed`` reader saw: its event, key and position."""

    event: EventId
    key: bytes
    partition: int
    offset: int


@dataclass(frozen=True)
class Delivery:
    """A delivery a webhook receiver got: which event for which subscription, with which
    ``webhook-id`` header (Standard Webhooks: the same for every attempt of one message)."""

    event: EventId
    subscription: str
    webhook_id: str


@dataclass
class Report:
    """What ``check`` found; each list holds the offending records, empty when none.

    - ``lost``: acknowledged inputs with no enriched record in the final read;
    - ``duplicated``: events with more enriched records than input records (event → extra count);
    - ``aborted_reads``: records the concurrent reader saw that the final reader does not have
      at that position (a read of an aborted or rolled-back write);
    - ``order``: (key, earlier event, later event) where the output order of one key in one
      partition contradicts the input order;
    - ``unseen``: acknowledged inputs that no reader of the input topic found (the write
      itself is gone, before the pipeline);
    - ``undelivered`` / ``webhook_id_changed``: for notify, (event, subscription) pairs never
      delivered, and deliveries whose ``webhook-id`` differs from the first attempt's (or
      from the one the pair must have, when known); ``pairs`` and ``deliveries`` count what
      was wanted and what arrived (repeats included).
    """

    inputs: int = 0
    outputs: int = 0
    lost: list[EventId] = field(default_factory=list)
    duplicated: dict[EventId, int] = field(default_factory=dict)
    aborted_reads: list[Output] = field(default_factory=list)
    order: list[tuple[bytes, EventId, EventId]] = field(default_factory=list)
    unseen: list[EventId] = field(default_factory=list)
    undelivered: list[tuple[EventId, str]] = field(default_factory=list)
    webhook_id_changed: list[Delivery] = field(default_factory=list)
    pairs: int = 0
    deliveries: int = 0

    @property
    def ok(self) -> bool:
        """True when no anomaly of any kind was found."""
        return not (self.lost or self.duplicated or self.aborted_reads or self.order or self.unseen
                    or self.undelivered or self.webhook_id_changed)

    def counts(self) -> dict[str, int]:
        """Each anomaly's count, Jepsen's names (``aborted-read``), plus the sizes."""
        return {
            "inputs": self.inputs, "outputs": self.outputs, "lost": len(self.lost),
            "duplicated": sum(self.duplicated.values()), "aborted-read": len(self.aborted_reads),
            "order": len(self.order), "unseen": len(self.unseen),
            "undelivered": len(self.undelivered), "webhook-id-changed": len(self.webhook_id_changed),
            "pairs": self.pairs, "deliveries": self.deliveries,
        }

    def summary(self) -> str:
        """One line: every count, then the first few offenders of each kind found."""
        line = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        for name, items in (("lost", self.lost), ("duplicated", list(self.duplicated)),
                            ("aborted-read", self.aborted_reads), ("order", self.order),
                            ("unseen", self.unseen), ("undelivered", self.undelivered),
                            ("webhook-id-changed", self.webhook_id_changed)):
            if items:
                line += f"; {name}: {list(items)[:5]!r}"
        return line


def check(inputs: Iterable[Input], final: Iterable[Output], concurrent: Iterable[Output] = ()) -> Report:
    """Judge one run of a stage: ``inputs`` as written (acknowledged or not, and where they
    were read back), ``final`` what a ``read_committed`` reader found after the drain,
    ``concurrent`` what one found while the run went on. Returns the ``Report``.

    Order is checked per key within one output partition: the events of a key must come
    out in the order they went in (their input offsets, in one input partition), which is
    what a keyed topic promises to a consumer. An unacknowledged input may be lost or
    present (its producer does not know); it counts as an input only when read back."""
    ins = list(inputs)
    outs = list(final)
    report = Report(outputs=len(outs))
    wanted = [i for i in ins if i.acked or i.offset is not None]
    report.inputs = len(wanted)
    report.unseen = [i.event for i in wanted if i.acked and i.offset is None]

    copies_in = Counter(i.event for i in wanted)
    copies_out = Counter(o.event for o in outs)
    report.lost = sorted({i.event for i in wanted if i.acked and i.event not in copies_out})
    report.duplicated = {e: n - copies_in.get(e, 0) for e, n in copies_out.items() if n > copies_in.get(e, 0)}

    at = {(o.partition, o.offset): o for o in outs}
    report.aborted_reads = [c for c in concurrent if at.get((c.partition, c.offset)) != c]

    # an event written twice (a client retrying after a timeout) has two input positions:
    # its first output copy answers the first, the second the second
    positions: dict[EventId, list[tuple[int, int]]] = defaultdict(list)
    for i in wanted:
        if i.partition is not None and i.offset is not None:
            positions[i.event].append((i.partition, i.offset))
    for copies in positions.values():
        copies.sort(key=lambda p: p[1])
    by_key: dict[tuple[bytes, int], list[Output]] = defaultdict(list)
    for o in sorted(outs, key=lambda o: (o.partition, o.offset)):
        by_key[(o.key, o.partition)].append(o)
    nth: Counter[EventId] = Counter()
    for (key, _), seq in by_key.items():
        last: tuple[EventId, tuple[int, int]] | None = None
        for o in seq:
            copies = positions.get(o.event, [])
            k = nth[o.event]
            nth[o.event] += 1
            if not copies:
                continue
            pos = copies[min(k, len(copies) - 1)]
            if last is not None and last[1][0] == pos[0] and pos[1] < last[1][1]:
                report.order.append((key, last[0], o.event))
            last = (o.event, pos)
    return report


def check_deliveries(report: Report, wanted: Iterable[tuple[EventId, str]],
                     deliveries: Iterable[Delivery],
                     expected: Callable[[EventId, str], str] | None = None) -> Report:
    """Add notify's findings to ``report``: every wanted (event, subscription) pair must have
    been delivered at least once, and every repeat of a pair must carry the ``webhook-id``
    of its first delivery (so the receiver can drop it). With ``expected`` (the
    ``webhook-id`` a pair must have), a first delivery under another one is reported too.
    Returns ``report``."""
    first: dict[tuple[EventId, str], str] = {}
    pairs = set(wanted)
    for d in deliveries:
        report.deliveries += 1
        pair = (d.event, d.subscription)
        if pair not in first:
            first[pair] = d.webhook_id
            if expected is not None and d.webhook_id != expected(d.event, d.subscription):
                report.webhook_id_changed.append(d)
        elif first[pair] != d.webhook_id:
            report.webhook_id_changed.append(d)
    report.pairs = len(pairs)
    report.undelivered = sorted(p for p in pairs if p not in first)
    return report
