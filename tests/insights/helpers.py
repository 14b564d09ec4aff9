"""Test helpers for insights: enriched events naming catalog organizations, a plain
reader's recomputation of every answer from ``enriched-events`` (written apart from
``services.insights.state``: counts from the events themselves), the same at the position
an answer reports (:class:`AtPosition`: which events the ``insights-facts`` records below
it carry), insights instances as child processes, and the comparison of every answer of an
instance with the recomputation."""

from __future__ import annotations

import functools
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from devtools.localkafka import free_port
from devtools.testing import Record, ServiceProcess, read_topic
from services.insights.api import parse_position
from services.insights.state import decode_facts
from shared.events import (
    AnnouncementKind,
    EnrichedAgreementData,
    EnrichedAgreementEvent,
    EnrichedAnnouncementData,
    EnrichedAnnouncementEvent,
    Enrichment,
    Location,
    Match,
    MatchMethod,
    NotACloudEvent,
    ResolvedMention,
    dump_event,
    parse_enriched,
    record_event_bytes,
)
from shared.organizations import Organization
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

CATALOG_FILE = Path(__file__).resolve().parents[2] / "services" / "enrich" / "data" / "organizations.json"
DAY_MS = 86_400_000


def catalog() -> list[Organization]:
    """The shipped catalog's organizations."""
    return [Organization.model_validate_json(orjson.dumps(o)) for o in orjson.loads(CATALOG_FILE.read_bytes())]


def random_events(n: int, seed: int = 7, orgs: int = 30) -> list[bytes]:
    """``n`` enriched events (canonical JSON) naming 1-5 of the first ``orgs`` catalog
    organizations, now and then an unknown name, a sector or a city; a third are agreements."""
    rng = random.Random(seed)
    pool = catalog()[:orgs]
    run = uuid.uuid4().hex[:6]
    out = []
    for i in range(n):
        named = rng.sample(pool, rng.randint(1, 5))
        mentions = [ResolvedMention(name=o.name, resolved=o, match=Match(method=MatchMethod.exact, score=100.0))
                    for o in named]
        unresolved = [f"Unknown Co {rng.randint(1, 5)}"] if rng.random() < 0.2 else []
        mentions += [ResolvedMention(name=u) for u in unresolved]
        enrichment = Enrichment(resolved=[o.id for o in named], unresolved=unresolved, catalog_version="t",
                                enriched_at=datetime.now(UTC))
        common: dict[str, Any] = {"specversion": "1.0", "id": f"ev-{run}-{i}", "source": "/test/insights",
                                  "time": datetime.now(UTC), "subject": f"s{i % 17}"}
        event: EnrichedAgreementEvent | EnrichedAnnouncementEvent
        if i % 3 == 0:
            event = EnrichedAgreementEvent(**common, type="agreement.signed", data=EnrichedAgreementData(
                title=f"Agreement {i}", organizations=mentions, enrichment=enrichment,
                sectors=["metaverse"] if rng.random() < 0.5 else []))
        else:
            kind = rng.choice(list(AnnouncementKind))
            event = EnrichedAnnouncementEvent(**common, type="conference.announcement", data=EnrichedAnnouncementData(
                headline=f"Announcement {i}", kind=kind, organizations=mentions, enrichment=enrichment,
                location=Location(city="Shanghai") if rng.random() < 0.5 else None))
        out.append(dump_event(event))
    return out


def _week(ts: int) -> int:
    shift = 3 * DAY_MS
    return (ts + shift) // (7 * DAY_MS) * (7 * DAY_MS) - shift


@dataclass
class Expected:
    """Every answer, recomputed from the records of ``enriched-events``."""

    all: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    windows: dict[tuple[str, str, int], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    partners: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    latest_agreement: dict[str, tuple[int, int, int, str]] = field(default_factory=dict)
    events: dict[str, list[tuple[int, int, int, str]]] = field(default_factory=lambda: defaultdict(list))
    names: dict[str, str] = field(default_factory=dict)


def recompute(records: list[Record]) -> Expected:
    """A plain reader's answers: each (source, id) counted once per entity it names; a
    record that is not an enriched event counts for nothing (insights dead-letters it)."""
    exp = Expected()
    seen: set[tuple[str, str]] = set()
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.value is not None
        ev = _parsed(r.value, tuple(r.headers))
        if ev is None:
            continue
        if (ev.source, ev.id) in seen:
            continue
        seen.add((ev.source, ev.id))
        kind = "signed" if ev.type == "agreement.signed" else str(ev.data.kind)  # type: ignore[union-attr]
        orgs = {m.resolved.id: m.resolved for m in ev.data.organizations if m.resolved is not None}
        keys = [f"org:{o}" for o in orgs]
        keys += [f"unresolved:{n}" for n in dict.fromkeys(ev.data.enrichment.unresolved)]
        sectors = list(getattr(ev.data, "sectors", []))
        for o in orgs.values():
            sectors += o.sectors
            exp.names[f"org:{o.id}"] = o.name
        keys += [f"sector:{s}" for s in dict.fromkeys(sectors)]
        order = (r.timestamp, r.partition, r.offset)
        for key in keys:
            for counter in (exp.all[key], exp.windows[(key, "day", r.timestamp - r.timestamp % DAY_MS)],
                            exp.windows[(key, "week", _week(r.timestamp))]):
                counter["total"] += 1
                counter["type:" + ev.type] += 1
                counter["kind:" + kind] += 1
            exp.events[key].append((*order, ev.id))
        if ev.type == "agreement.signed":
            for oid in orgs:
                for other in orgs:
                    if other != oid:
                        exp.partners[f"org:{oid}"][other] += 1
                if order > exp.latest_agreement.get(f"org:{oid}", (-1, -1, -1, ""))[:3]:
                    exp.latest_agreement[f"org:{oid}"] = (*order, ev.id)
    return exp


@functools.lru_cache(maxsize=100_000)
def _parsed(value: bytes, headers: tuple[tuple[str, bytes], ...]) -> Any:
    try:
        return parse_enriched(record_event_bytes(value, list(headers)))
    except (ValidationError, NotACloudEvent):
        return None


class AtPosition:
    """The recomputation at the position an answer reports (``X-Anting-Position``): for a
    key on ``insights-facts`` partition *p* at offset *X*, the events whose facts for that
    key sit below *X* on *p* (``facts``: the topic read whole). The counts still come from
    the events themselves (:func:`recompute`)."""

    def __init__(self, events: list[Record], facts: list[Record]) -> None:
        self.events = {(r.partition, r.offset): r for r in events}
        # key → [(facts offset, enriched position)], the key's partition
        self.taught: dict[str, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
        self.partition: dict[str, int] = {}
        for r in facts:
            assert r.value is not None
            for fact in decode_facts(r.value):
                self.taught[fact.key].append((r.offset, (fact.partition, fact.offset)))
                self.partition[fact.key] = r.partition

    @functools.lru_cache(maxsize=100_000)  # noqa: B019 (one per test, dropped with it)
    def expected(self, key: str, below: int) -> Expected:
        """The recomputation for ``key`` from the events its facts below ``below`` carry."""
        chosen = {pos for offset, pos in self.taught.get(key, []) if offset < below}
        return recompute([self.events[pos] for pos in sorted(chosen)])

    def of(self, key: str, position: dict[int, int]) -> Expected | None:
        """``key``'s recomputation at ``position``; None when the position lacks its partition
        (a key that has no facts is answered at any position: nothing)."""
        partition = self.partition.get(key)
        if partition is None:
            return Expected()
        if partition not in position:
            return None
        return self.expected(key, position[partition])

    def check(self, path: str, status: int, headers: dict[str, str], doc: Any) -> str | None:
        """Why the answer to ``path`` (an organization's activity in all time, partners or
        events, a sector's activity, ``/v1/organizations`` over all time) differs from the
        recomputation at the position it reports; None when it equals it."""
        try:
            position = parse_position(headers.get("x-anting-position", ""))
        except ValueError:
            return f"{path}: position {headers.get('x-anting-position')!r}"
        if not position:
            return f"{path}: no position ({status} {str(doc)[:200]})"
        parts = path.strip("/").split("/")
        if parts == ["v1", "organizations"]:
            if status != 200 or sorted(position) != doc["partitions"]:
                return f"{path}: {status} {str(doc)[:200]} at {position}"
            want = []
            for key, partition in self.partition.items():
                if key.startswith("org:") and partition in position:
                    total = self.expected(key, position[partition]).all[key]["total"]
                    if total:
                        want.append((key[4:], total))
            want.sort(key=lambda r: (-r[1], r[0]))
            got = [(r["id"], r["total"]) for r in doc["organizations"]]
            return None if got == want else f"{path} at {position}: {got[:5]} != {want[:5]}"
        key = ("org:" if parts[1] == "organizations" else "sector:") + parts[2]
        exp = self.of(key, position)
        if exp is None:
            return f"{path}: position {position} lacks the key's partition"
        if status == 404:
            return None if not exp.all[key]["total"] else f"{path}: 404 at {position}, expected {exp.all[key]}"
        if status != 200:
            return f"{path}: {status} {str(doc)[:200]}"
        what = parts[3] if parts[1] == "organizations" else "activity"
        if what == "activity":
            return (None if _counts(doc) == +exp.all[key]
                    else f"{path} at {position}: {dict(_counts(doc))} != {dict(+exp.all[key])}")
        if what == "partners":
            got = {p["id"]: p["count"] for p in doc["partners"]}
            latest = exp.latest_agreement.get(key)
            if got != dict(exp.partners.get(key, {})) or \
                    (doc["latest_agreement"] or {}).get("id") != (latest[3] if latest else None):
                return f"{path} at {position}: {got} != {dict(exp.partners.get(key, {}))}"
            return None
        want_ids = [e[3] for e in sorted(exp.events[key], reverse=True)[:50]]
        return None if [e["id"] for e in doc["events"]] == want_ids else f"{path} at {position}: events differ"


async def expected_from_topic(settings: AntingSettings, expect: int) -> Expected:
    """Read ``enriched-events`` whole (read committed) and recompute."""
    records = await read_topic(settings, settings.topic(ENRICHED_EVENTS), expect=expect, timeout=120)
    return recompute(records)


def _counts(doc: dict[str, Any]) -> Counter[str]:
    if "total" not in doc:
        return Counter({"missing": 1})
    c: Counter[str] = Counter({"total": doc["total"]})
    c.update({"type:" + k: v for k, v in doc["by_type"].items()})
    c.update({"kind:" + k: v for k, v in doc["by_kind"].items()})
    return +c


def differences(base: str, exp: Expected, headers: dict[str, str] | None = None) -> list[str]:
    """Every answer of the instance at ``base`` that differs from ``exp`` (all organizations,
    the sectors, the rankings); empty when all agree."""
    out: list[str] = []
    now = int(time.time() * 1000)
    with httpx.Client(base_url=base, headers=headers or {}, timeout=20) as c:
        orgs = sorted(k for k in exp.all if k.startswith("org:"))
        for key in orgs:
            oid = key.split(":", 1)[1]
            for window in ("all", "day", "week"):
                doc = c.get(f"/v1/organizations/{oid}/activity", params={"window": window}).json()
                if "start" not in doc:
                    out.append(f"{key} {window}: {doc}")
                    continue
                want = exp.all[key] if window == "all" else exp.windows[(key, window, doc["start"])]
                if _counts(doc) != +want:
                    out.append(f"{key} {window}: {dict(_counts(doc))} != {dict(+want)}")
            doc = c.get(f"/v1/organizations/{oid}/partners").json()
            if "partners" not in doc:
                out.append(f"{key} partners: {doc}")
                continue
            got = {p["id"]: p["count"] for p in doc["partners"]}
            if got != dict(exp.partners.get(key, {})):
                out.append(f"{key} partners: {got} != {dict(exp.partners.get(key, {}))}")
            latest = exp.latest_agreement.get(key)
            if (doc["latest_agreement"] or {}).get("id") != (latest[3] if latest else None):
                out.append(f"{key} latest agreement: {doc['latest_agreement']} != {latest}")
            doc = c.get(f"/v1/organizations/{oid}/events").json()
            if "events" not in doc:
                out.append(f"{key} events: {doc}")
                continue
            want_ids = [e[3] for e in sorted(exp.events[key], reverse=True)[:50]]
            if [e["id"] for e in doc["events"]] != want_ids:
                out.append(f"{key} events differ")
        for key in sorted(k for k in exp.all if k.startswith("sector:")):
            doc = c.get(f"/v1/sectors/{key.split(':', 1)[1]}/activity").json()
            if _counts(doc) != +exp.all[key]:
                out.append(f"{key}: {dict(_counts(doc))} != {dict(+exp.all[key])}")
        for window in ("all", "week"):
            doc = c.get("/v1/organizations", params={"window": window, "limit": 1000}).json()
            if "organizations" not in doc:
                out.append(f"ranking {window}: {doc}")
                continue
            got_rank = [(r["id"], r["total"]) for r in doc["organizations"]]
            totals = {k.split(":", 1)[1]: (exp.all[k] if window == "all"
                                           else exp.windows[(k, "week", _week(now))])["total"] for k in orgs}
            want_rank = sorted(((i, t) for i, t in totals.items() if t > 0), key=lambda r: (-r[1], r[0]))
            if got_rank != want_rank:
                out.append(f"ranking {window}: {got_rank[:5]}... != {want_rank[:5]}...")
        doc = c.get("/v1/unresolved", params={"limit": 1000}).json()
        if "names" not in doc:
            return [*out, f"unresolved: {doc}"]
        got_names = {r["id"]: r["total"] for r in doc["names"]}
        want_names = {k.split(":", 1)[1]: v["total"] for k, v in exp.all.items() if k.startswith("unresolved:")}
        if got_names != want_names:
            out.append(f"unresolved: {got_names} != {want_names}")
    return out


def ready(base: str) -> bool:
    """Whether the instance at ``base`` answers /readyz with 200."""
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def instance(settings: AntingSettings, log_dir: Path, name: str, **env: str) -> tuple[ServiceProcess, str]:
    """An insights child process on a free port (not started) and its base URL."""
    port = free_port()
    proc = ServiceProcess("insights", settings, log_dir / f"insights-{name}.log",
                          ANTING_INSIGHTS_PORT=str(port), ANTING_INSIGHTS_SESSION_TIMEOUT_MS="6000",
                          ANTING_INSIGHTS_BATCH_SECONDS="0.2", ANTING_INSIGHTS_COMMIT_INTERVAL_SECONDS="0.5",
                          **env)
    return proc, f"http://127.0.0.1:{port}"
