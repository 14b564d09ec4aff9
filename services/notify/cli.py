"""Commands of the notify service, merged into `anting` (keep imports here light):
``anting subscriptions add|list|enable|disable|rm`` and ``anting subscribe`` (tail the
enriched stream).

Each is a client of the running notify's HTTP API (``services/notify/client.py``) with
``ANTING_API_KEY``: it sees and changes only what that key's tenant may, and when notify
does not answer it fails naming the URL it tried. None reads or writes Kafka itself."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:  # imported where used: `anting --help` stays quick
    from services.notify.client import NotifyClient

T = TypeVar("T")

app = typer.Typer()
subs_app = typer.Typer(help="Subscriptions of the key's tenant, through the notify API "
                       "(ANTING_NOTIFY_URL, ANTING_API_KEY).", no_args_is_help=True)
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


def _fail(message: str) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(2)


def _notify() -> NotifyClient:
    from services.notify.client import NotifyClient

    return NotifyClient.from_env()


def _through_api(call: Callable[[NotifyClient], T]) -> T:
    """``call(client)`` on notify's API; exit 2 naming the URL when notify does not answer
    or refuses (a 404 says ``no subscription <id>``, whether the id is unknown or another
    tenant's)."""
    from services.notify.client import NotifyRefused, NotifyUnreachable

    try:
        return call(_notify())
    except NotifyRefused as exc:
        if exc.status == 404:
            _fail(f"{exc.detail} (notify at {exc.url})")
        _fail(str(exc))
    except NotifyUnreachable as exc:
        _fail(f"{exc}; nothing was read or changed")


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

    from services.notify.settings import parse_schedule
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
    # shell's) and the subscription is the key's tenant's: only its API writes the topic.
    created = _through_api(lambda notify: notify.create(request.model_dump_json(exclude_unset=True).encode()))
    sys.stdout.write(orjson.dumps(created, option=orjson.OPT_INDENT_2).decode() + "\n")


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
    """Show the key's tenant's subscriptions (an admin key's: every tenant's; never their
    secrets), with their delivery health: failing since when, deliveries waiting for a
    retry and the next attempt (from the running notify)."""
    import orjson

    subs = _through_api(lambda notify: notify.subscriptions())
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


SubId = Annotated[str, typer.Argument(help="subscription id")]


@subs_app.command("enable")
def subscriptions_enable(sub_id: SubId) -> None:
    """Enable a disabled subscription again (disabled by hand, by a 410 or by failing for
    days): its retries still scheduled resume at once and new events match it again."""
    def enable(notify: NotifyClient) -> tuple[dict[str, Any], dict[str, Any]]:
        return notify.subscription(sub_id), notify.enable(sub_id)

    before, _ = _through_api(enable)
    if not before["disabled"]:
        sys.stderr.write(f"{sub_id} is not disabled; nothing changed\n")
    else:
        sys.stderr.write(f"enabled {sub_id} (it was disabled: {before['disabled_reason'] or 'disabled'})\n")


@subs_app.command("disable")
def subscriptions_disable(sub_id: SubId) -> None:
    """Disable a subscription: nothing is sent for it until `anting subscriptions enable`;
    its waiting retries are kept and resume then."""
    def disable(notify: NotifyClient) -> tuple[dict[str, Any], dict[str, Any]]:
        return notify.subscription(sub_id), notify.disable(sub_id)

    before, _ = _through_api(disable)
    if before["disabled"]:
        sys.stderr.write(f"{sub_id} is disabled already ({before['disabled_reason']}); nothing changed\n")
    else:
        sys.stderr.write(f"disabled {sub_id}\n")


@subs_app.command("rm")
def subscriptions_rm(sub_id: SubId) -> None:
    """Delete a subscription."""
    _through_api(lambda notify: notify.delete(sub_id))
    sys.stderr.write(f"deleted {sub_id}\n")


@app.command("subscribe")
def subscribe(
    types: Types = None, kinds: Kinds = None, orgs: Orgs = None, sectors: Sectors = None, cities: Cities = None,
    fmt: Annotated[Format, typer.Option("--format", help="JSON lines or a readable table")] = Format.json,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="start at the oldest event")] = False,
    limit: Annotated[int | None, typer.Option(help="stop after this many matching events")] = None,
    idle_exit: Annotated[float | None, typer.Option(help="stop after this many seconds without events")] = None,
) -> None:
    """Tail the enriched stream in the terminal, filtered like a subscription, until Ctrl-C:
    notify's /v1/stream with ANTING_API_KEY (a key with stream:read). With --idle-exit,
    stop after that many seconds without a matching event."""
    import orjson

    from shared.subscriptions import Filter

    flt = _filter(types, kinds, orgs, sectors, cities)
    try:  # refused here, before asking notify, with the same paths it would name
        Filter.model_validate_json(orjson.dumps(flt))
    except ValueError as exc:
        _fail(str(exc))
    from services.notify.client import NotifyRefused, NotifyUnreachable

    try:
        asyncio.run(_tail(_notify(), flt, fmt, from_beginning, limit, idle_exit))
    except KeyboardInterrupt:
        pass
    except NotifyRefused as exc:
        _fail(str(exc))
    except NotifyUnreachable as exc:
        _fail(str(exc))


async def _tail(notify: NotifyClient, flt: dict[str, list[str]], fmt: Format, from_beginning: bool,
                limit: int | None, idle_exit: float | None) -> None:
    """Print the events of notify's stream that match ``flt`` (notify filters them) until
    ``limit`` of them, ``idle_exit`` seconds without one, or the stream's end."""
    import orjson

    from services.notify.rendering import describe, headline
    from shared.events import parse_enriched

    seen = 0
    if fmt is Format.table:
        sys.stdout.write(f"{'time':<20} {'type':<24} {'organizations':<40} headline / why\n")
    stream = notify.stream(flt, "earliest" if from_beginning else "latest", idle_exit)
    try:
        async for doc in stream:
            seen += 1
            if fmt is Format.json:
                sys.stdout.write(orjson.dumps(doc).decode() + "\n")
            else:
                reasons = doc.pop("reason")
                event = parse_enriched(orjson.dumps(doc))
                orgs = ", ".join(m.resolved.id if m.resolved else f"?{m.name}" for m in event.data.organizations)
                when = event.time.strftime("%Y-%m-%d %H:%M:%S") if event.time else "-"
                sys.stdout.write(f"{when:<20} {event.type:<24} {orgs[:40]:<40} "
                                 f"{headline(doc)}\n{'':<86}why: {describe(reasons)}\n")
            sys.stdout.flush()
            if limit is not None and seen >= limit:
                return
    finally:
        await stream.aclose()


__all__ = ["Cities", "Format", "Kinds", "Orgs", "Sectors", "Types", "app", "describe_state",
           "subs_app", "subscribe", "subscriptions_add", "subscriptions_disable", "subscriptions_enable",
           "subscriptions_list", "subscriptions_rm"]
