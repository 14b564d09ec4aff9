"""Commands of the insights service, merged into `anting` (imports kept light):
``anting insights partners ORG``, ``anting insights top``, ``anting insights activity ORG``,
``anting insights events ORG``. Each asks a running insights instance over HTTP
(``ANTING_INSIGHTS_URL``, default ``http://127.0.0.1:<ANTING_INSIGHTS_PORT>``, see shared/where.py) with the
``ANTING_API_KEY`` or else the first of ``ANTING_API_KEYS``, and prints a table (``--json``: the API's JSON)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:  # rich is imported where a table is printed
    from rich.table import Table

__all__ = ["app"]

app = typer.Typer()
insights_app = typer.Typer(help="Organization activity from the enriched stream (the insights service).",
                           no_args_is_help=True)
app.add_typer(insights_app, name="insights")

Json = Annotated[bool, typer.Option("--json", help="the API's JSON instead of a table")]
WindowOpt = Annotated[str, typer.Option(help="day (today, UTC), week (this ISO week) or all")]


def _get(path: str, **params: str | int | None) -> Any:  # Any: the API's JSON answer
    """GET ``path`` of the insights API; exits 2 with the problem's detail on an error."""
    import httpx

    from shared.where import service_url

    base = service_url("insights")
    from shared.access import client_key

    key = client_key(os.environ)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.get(base.rstrip("/") + path, params=params, headers=headers, timeout=15)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"error: insights at {base} did not answer ({type(exc).__name__}); "
                         "is it running? (`anting serve insights`, ANTING_INSIGHTS_URL)\n")
        raise typer.Exit(2) from None
    if resp.status_code != 200:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        sys.stderr.write(f"error: {resp.status_code}: {detail}\n")
        raise typer.Exit(2)
    return resp.json()


def _print(table: Table) -> None:
    from rich.console import Console

    Console().print(table)


def _dump(doc: object) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@insights_app.command("partners")
def partners(org: Annotated[str, typer.Argument(help="organization id, e.g. anting-town-government")],
             as_json: Json = False) -> None:
    """The organizations named with ORG in agreement.signed events, most agreements first,
    and its latest agreement. Example: `anting insights partners anting-town-government`."""
    from rich.table import Table

    doc = _get(f"/v1/organizations/{org}/partners")
    if as_json:
        _dump(doc)
        return
    if not doc["partners"]:
        print(f"{doc['name']} ({org}): its agreements name no other catalog organization")
    else:
        table = Table("partner", "name", "agreements", title=f"Partners of {doc['name']} ({org})")
        for p in doc["partners"]:
            table.add_row(p["id"], p["name"], str(p["count"]))
        _print(table)
    if latest := doc["latest_agreement"]:
        print(f"latest agreement: {latest['title']} ({latest['time'] or 'no time'})")


@insights_app.command("top")
def top(window: WindowOpt = "week",
        limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 10,
        as_json: Json = False) -> None:
    """The most active organizations in a window, across every instance.
    Example: `anting insights top --window week`."""
    from rich.table import Table

    doc = _get("/v1/organizations", sort="activity", window=window, limit=limit)
    if as_json:
        _dump(doc)
        return
    table = Table("#", "organization", "name", "events", "by type", "by kind",
                  title=f"Most active organizations ({window})")
    for i, row in enumerate(doc["organizations"], 1):
        table.add_row(str(i), row["id"], row["name"], str(row["total"]), _kinds(row["by_type"]),
                      _kinds(row["by_kind"]))
    _print(table)


@insights_app.command("activity")
def activity(org: Annotated[str, typer.Argument(help="organization id")],
             window: WindowOpt = "all", as_json: Json = False) -> None:
    """ORG's events by type and kind in a window."""
    from rich.table import Table

    doc = _get(f"/v1/organizations/{org}/activity", window=window)
    if as_json:
        _dump(doc)
        return
    table = Table("type / kind", "events", title=f"{doc['name']} ({org}), {window}: {doc['total']} events")
    for name, n in sorted(doc["by_type"].items()):
        table.add_row(name, str(n))
    for name, n in sorted(doc["by_kind"].items()):
        table.add_row(f"  {name}", str(n))
    _print(table)


@insights_app.command("events")
def events(org: Annotated[str, typer.Argument(help="organization id")], as_json: Json = False) -> None:
    """The latest 50 events naming ORG, newest first."""
    from rich.table import Table

    doc = _get(f"/v1/organizations/{org}/events")
    if as_json:
        _dump(doc)
        return
    table = Table("time", "type", "kind", "title", "id", title=f"Latest events of {doc['name']} ({org})")
    for e in doc["events"]:
        table.add_row(e["time"] or "", e["type"], e["kind"], e["title"], e["id"])
    _print(table)
