"""Commands of the notify service, merged into `anting` (keep imports here light):
``anting subscriptions add|list|enable|rm`` and ``anting subscribe`` (tail the enriched stream)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:  # imported where used: `anting --help` stays quick
    from services.notify.settings import NotifySettings
    from services.notify.store import SubscriptionStore
    from shared.subscriptions import Filter, Subscription, SubscriptionRequest

T = TypeVar("T")

app = typer.Typer()
subs_app = typer.Typer(help="Subscriptions (kept on the compacted subscriptions topic).", no_args_is_help=True)
app.add_typer(subs_app, name="subscriptions")


class Format(StrEnum):
    json = "json"
    table = "table"


Types = Annotated[list[str] | None, typer.Option("--type", help="event type (repeatable)")]
Kinds = Annotated[list[str] | None, typer.Option("--kind", help="announcement kind (repeatable)")]
Orgs = Annotated[list[str] | None, typer.Option("--org", help="organization id, name or alias (repeatable)")]
Sectors = Annotated[list[str] | None, typer.Option("--sector", help="sector (repeatable)")]
Cities = Annotated[list[str] | None, typer.Option("--city", help="city (repeatable)")]


def _filter(types: list[str] | None, kinds: list[str] | None, orgs: list[str] | None,
            sectors: list[str] | None, cities: list[str] | None) -> dict[str, list[str]]:
    return {"types": types or [], "kinds": kinds or [], "organizations": orgs or [],
            "sectors": sectors or [], "cities": cities or []}


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(2)


async def _with_store(fn: Callable[[SubscriptionStore, NotifySettings], Awaitable[T]], *,
                      health: bool = False) -> T:
    """Run ``fn(store, settings)`` on the subscriptions read from Kafka; with ``health``, the
    store also knows each subscription's delivery health, from the ledger folded from the
    last 7 days of ``notifications`` (the same fold a running notify keeps in memory)."""
    from services.notify.ledger import Ledger
    from services.notify.settings import NotifySettings
    from services.notify.store import SubscriptionStore
    from shared.kafka import ensure_topics, make_producer
    from shared.settings import load
    from shared.topics import NOTIFICATIONS, SUBSCRIPTIONS

    settings = load(NotifySettings)
    await ensure_topics(settings, [SUBSCRIPTIONS, NOTIFICATIONS] if health else [SUBSCRIPTIONS])
    producer = make_producer(settings)
    await producer.start()
    store = SubscriptionStore(settings, producer)
    ledger = Ledger(settings, producer) if health else None
    try:
        await store.start()
        if ledger is not None:
            await ledger.view.start()
            store.health = ledger.health
        return await fn(store, settings)
    finally:
        if ledger is not None:
            await ledger.view.stop()
        await store.stop()
        await producer.stop()


@subs_app.command("add")
def subscriptions_add(
    name: Annotated[str, typer.Option(help="a name for people")],
    webhook: Annotated[str | None, typer.Option(help="deliver by webhook to this URL")] = None,
    email: Annotated[list[str] | None, typer.Option(help="deliver by email to this address (repeatable)")] = None,
    apprise: Annotated[str | None, typer.Option(help="deliver through this apprise URL")] = None,
    log: Annotated[str | None, typer.Option(
        help="append JSON lines to this file name in notify's log directory "
             "(ANTING_NOTIFY_LOG_DIR; '-' = stdout)")] = None,
    types: Types = None, kinds: Kinds = None, orgs: Orgs = None, sectors: Sectors = None, cities: Cities = None,
    digest: Annotated[int | None, typer.Option(help="collect for this many seconds, send one message")] = None,
    retry: Annotated[str | None, typer.Option(
        help="retry schedule: standard-webhooks, svix, none, or delays such as 5s,5m,30m,2h "
             "(at most 20, each up to 24h, 4 days in all); notify's default when unset")] = None,
) -> None:
    """Create a subscription; prints it as JSON, with the webhook signing secret (shown only now)."""
    import orjson
    from pydantic import ValidationError

    from services.notify.egress import channel_refusal
    from services.notify.settings import parse_schedule
    from services.notify.store import public_view
    from shared.events import error_paths
    from shared.subscriptions import SubscriptionRequest

    channels: list[dict[str, Any]] = []
    if webhook:
        channels.append({"type": "webhook", "url": webhook})
    if email:
        channels.append({"type": "email", "to": email})
    if apprise:
        channels.append({"type": "apprise", "url": apprise})
    if log is not None:
        channels.append({"type": "log", "path": None if log == "-" else log})
    if len(channels) != 1:
        _fail("give exactly one of --webhook, --email, --apprise, --log")
    doc: dict[str, Any] = {"name": name, "filter": _filter(types, kinds, orgs, sectors, cities), "channel": channels[0]}
    if digest:
        doc["digest"] = {"window_seconds": digest}
    if retry is not None:
        try:
            doc["retry"] = parse_schedule(retry).model_dump(exclude_none=True)
        except ValueError as exc:
            _fail(f"--retry: {exc}")
    try:
        request = SubscriptionRequest.model_validate_json(orjson.dumps(doc))
    except ValidationError as exc:
        _fail("; ".join(f"{e['path']}: {e['message']}" for e in error_paths(exc)))
        return

    # The running notify service decides (its ANTING_NOTIFY_ALLOW_NETWORKS, not this
    # shell's): the CLI goes through its API when it answers.
    created = _create_through_api(request)
    if created is not None:
        sys.stdout.write(orjson.dumps(created, option=orjson.OPT_INDENT_2).decode() + "\n")
        return

    async def create(store: SubscriptionStore, settings: NotifySettings) -> dict[str, Any]:
        why = channel_refusal(request.channel, settings.egress())
        if why:
            _fail(f"{request.channel.type} URL refused: {why} (checked here: notify did not answer at "
                  f"{_api_url(settings)})")
        sub, secret = await store.create(request)
        out = public_view(sub)
        if secret:
            out["secret"] = secret
        return out

    out = asyncio.run(_with_store(create))
    sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")


def _api_url(settings: NotifySettings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}/v1/subscriptions"


def _create_through_api(request: SubscriptionRequest) -> dict[str, Any] | None:
    """POST the subscription to the running notify service (``ANTING_NOTIFY_HOST``/``_PORT``,
    ``ANTING_API_KEY``, else the first of ``ANTING_API_KEYS``): its answer (201, with the secret), or exit 2 with
    its problem's field paths; ``None`` when nothing answers there, and the caller writes the
    subscriptions topic itself."""
    import httpx

    from services.notify.settings import NotifySettings
    from shared.access import client_key
    from shared.settings import load

    settings = load(NotifySettings)
    url = _api_url(settings)
    key = client_key(os.environ)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.post(url, content=request.model_dump_json(exclude_unset=True),
                          headers={"content-type": "application/json", **headers}, timeout=10)
    except httpx.TransportError:
        return None
    if resp.status_code == 201:
        return resp.json()  # type: ignore[no-any-return]
    try:
        problem = resp.json()
        errors = problem.get("errors") or []
        detail = "; ".join(f"{e.get('path')}: {e.get('message')}" for e in errors) or problem.get("detail")
    except ValueError:
        detail = resp.text[:300]
    _fail(f"notify at {url} refused the subscription ({resp.status_code}): {detail}")
    return None


def _delay(seconds: int) -> str:
    """A delay as ``--retry`` takes it: 300 → 5m, 86400 → 1d, 90 → 90s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_state(sub: dict[str, Any]) -> str:
    """One subscription's state as ``anting subscriptions list`` shows it: active or disabled
    (and why), and while failing since when, the last error, the deliveries waiting and the
    next attempt (times in UTC)."""
    def when(iso: str | None) -> str:
        return (iso or "-").replace("T", " ").removesuffix("Z")

    parts = [f"disabled since {when(sub.get('disabled_at'))}: {sub['disabled_reason']}"
             if sub["disabled"] else "active"]
    health = sub.get("delivery") or {}
    if health.get("failing_since"):
        parts.append(f"failing since {when(health['failing_since'])} UTC ({health.get('last_error') or 'failed'})")
    if health.get("waiting"):
        nxt = (f"next {when(health['next_attempt_at'])} UTC" if health.get("next_attempt_at")
               else "until enabled")
        parts.append(f"{health['waiting']} waiting, {nxt}")
    return "; ".join(parts)


@subs_app.command("list")
def subscriptions_list(fmt: Annotated[Format, typer.Option("--format")] = Format.table) -> None:
    """Show every subscription (never its secrets), with its delivery health: failing since
    when, deliveries waiting for a retry and the next attempt (from the notifications log)."""
    import orjson

    async def all_subs(store: SubscriptionStore, _: NotifySettings) -> list[dict[str, Any]]:
        return list(store.views())

    subs = asyncio.run(_with_store(all_subs, health=True))
    if fmt is Format.json:
        for s in subs:
            sys.stdout.write(orjson.dumps(s).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "channel", "filter", "retry", "state")
    for s in subs:
        ch = s["channel"]
        target = ch.get("url") or ", ".join(ch.get("to") or []) or ch.get("path") or "stdout"
        flt = " ".join(f"{k}={','.join(v)}" for k, v in s["filter"].items() if v) or "(all)"
        retry = s.get("retry") or {}
        schedule = retry.get("preset") or (",".join(map(_delay, retry["delays_seconds"])) or "none"
                                           if retry.get("delays_seconds") is not None else "default")
        table.add_row(s["id"], s["name"], f"{ch['type']} {target}", flt, schedule, describe_state(s))
    Console().print(table)


@subs_app.command("enable")
def subscriptions_enable(sub_id: Annotated[str, typer.Argument(help="subscription id")]) -> None:
    """Enable a disabled subscription again (disabled by a 410 or by failing for days): its
    retries still scheduled resume at once and new events match it again."""
    async def enable(store: SubscriptionStore, _: NotifySettings) -> tuple[Subscription, str | None] | None:
        return await store.enable(sub_id)

    out = asyncio.run(_with_store(enable))
    if out is None:
        _fail(f"no subscription {sub_id}")
        return
    _, was = out
    if was is None:
        sys.stderr.write(f"{sub_id} is not disabled; nothing changed\n")
    else:
        sys.stderr.write(f"enabled {sub_id} (it was disabled: {was})\n")


@subs_app.command("rm")
def subscriptions_rm(sub_id: Annotated[str, typer.Argument(help="subscription id")]) -> None:
    """Delete a subscription."""
    async def delete(store: SubscriptionStore, _: NotifySettings) -> bool:
        return bool(await store.delete(sub_id))

    if not asyncio.run(_with_store(delete)):
        _fail(f"no subscription {sub_id}")
    sys.stderr.write(f"deleted {sub_id}\n")


@app.command("subscribe")
def subscribe(
    types: Types = None, kinds: Kinds = None, orgs: Orgs = None, sectors: Sectors = None, cities: Cities = None,
    fmt: Annotated[Format, typer.Option("--format", help="JSON lines or a readable table")] = Format.json,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="start at the oldest event")] = False,
    limit: Annotated[int | None, typer.Option(help="stop after this many matching events")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="stop after this many seconds without events")] = None,
) -> None:
    """Tail enriched-events in the terminal, filtered like a subscription, until Ctrl-C."""
    import orjson

    from shared.subscriptions import Filter

    try:
        flt = Filter.model_validate_json(orjson.dumps(_filter(types, kinds, orgs, sectors, cities)))
    except ValueError as exc:
        _fail(str(exc))
        return
    from aiokafka.errors import TopicAuthorizationFailedError

    try:
        asyncio.run(_tail(flt, fmt, from_beginning, limit, idle_exit))
    except KeyboardInterrupt:
        pass
    except TopicAuthorizationFailedError as exc:  # the broker refuses this user the topic
        from services.notify.settings import NotifySettings
        from shared.kafka_access import Doing, denial
        from shared.settings import load
        from shared.topics import ENRICHED_EVENTS

        settings = load(NotifySettings)
        _fail(denial(exc, settings.kafka, Doing(reads=(settings.topic(ENRICHED_EVENTS),))) or str(exc))


async def _tail(flt: Filter, fmt: Format, from_beginning: bool, limit: int | None, idle_exit: float | None) -> None:
    import time

    import orjson

    from services.notify.matching import decode, match
    from services.notify.rendering import describe, headline
    from services.notify.settings import NotifySettings
    from shared.events import parse_enriched, record_event_bytes
    from shared.kafka import make_consumer
    from shared.kafka_access import check_subscription
    from shared.settings import load
    from shared.topics import ENRICHED_EVENTS

    settings = load(NotifySettings)
    consumer = make_consumer(settings, settings.topic(ENRICHED_EVENTS), group_id=None,
                             auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    seen = 0
    last = time.monotonic()
    if fmt is Format.table:
        sys.stdout.write(f"{'time':<20} {'type':<24} {'organizations':<40} headline / why\n")
    try:
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=500)
            check_subscription(consumer)  # a refused topic reads as empty otherwise
            if not batch and idle_exit is not None and time.monotonic() - last > idle_exit:
                return
            for records in batch.values():
                for r in records:
                    last = time.monotonic()
                    try:
                        raw = record_event_bytes(r.value, r.headers)
                        event = parse_enriched(raw)
                        doc = decode(raw)
                    except ValueError:
                        continue
                    reasons = match(doc, flt)
                    if reasons is None:
                        continue
                    seen += 1
                    if fmt is Format.json:
                        sys.stdout.write(orjson.dumps({**orjson.loads(raw), "reason": reasons}).decode() + "\n")
                    else:
                        orgs = ", ".join(m.resolved.id if m.resolved else f"?{m.name}" for m in event.data.organizations)
                        when = event.time.strftime("%Y-%m-%d %H:%M:%S") if event.time else "-"
                        sys.stdout.write(f"{when:<20} {event.type:<24} {orgs[:40]:<40} "
                                         f"{headline(doc)}\n{'':<86}why: {describe(reasons)}\n")
                    sys.stdout.flush()
                    if limit is not None and seen >= limit:
                        return
    finally:
        await consumer.stop()


__all__ = ["Cities", "Format", "Kinds", "Orgs", "Sectors", "Types", "app", "describe_state",
           "subs_app", "subscribe", "subscriptions_add", "subscriptions_enable",
           "subscriptions_list", "subscriptions_rm"]
