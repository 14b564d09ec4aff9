"""Commands of the enrich service, merged into `anting` (keep imports here light):
``anting orgs load|list|get|put|delete`` manage the catalog on the ``organizations`` topic."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from shared.settings import AntingSettings

app = typer.Typer()
orgs = typer.Typer(help="The organization catalog (the compacted organizations topic).",
                   no_args_is_help=True)
app.add_typer(orgs, name="orgs")


def _settings() -> AntingSettings:
    from shared import settings as settings_mod
    from shared.settings import AntingSettings

    return settings_mod.load(AntingSettings)


def _say(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def _refuse(what: str, exc: Exception) -> NoReturn:
    """Say why ``what`` cannot go into the catalog and exit 2: a ValidationError as
    one ``path: message`` line per problem (the paths the API's problems use), any
    other error as its message."""
    from pydantic import ValidationError

    from shared.events import error_paths

    if isinstance(exc, ValidationError):
        problems = error_paths(exc)
        _say(f"{what} ({len(problems)} problem{'s' if len(problems) > 1 else ''}; "
             "the record's fields: docs/DESIGN.md):")
        for p in problems:
            _say(f"  {p['path']}: {p['message']}")
    else:
        _say(f"{what}: {exc}")
    raise typer.Exit(2)


def _read(source: str) -> str:
    """The text of an argument that is JSON itself, ``@file`` or ``-`` (stdin)."""
    if source == "-":
        return sys.stdin.read()
    if source.startswith("@"):
        try:
            return Path(source[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _say(f"cannot read {source[1:]}: {getattr(exc, 'strerror', None) or exc}")
            raise typer.Exit(2) from None
    return source


@orgs.command("load")
def orgs_load(
    file: Annotated[Path | None, typer.Argument(help="a JSON array of organizations; default: the shipped catalog")] = None,
) -> None:
    """Write the catalog to the topic; records already there unchanged are skipped (idempotent)."""
    import orjson
    from pydantic import ValidationError

    from services.enrich import catalog
    from shared.kafka import ensure_topics
    from shared.organizations import RecordTooLarge

    try:
        records = catalog.read_file(file) if file else catalog.shipped()
    except (ValidationError, RecordTooLarge, orjson.JSONDecodeError, OSError) as exc:
        _refuse(f"{file}: not a catalog, nothing written", exc)
    settings = _settings()

    async def go() -> tuple[int, int]:
        await ensure_topics(settings)
        return await catalog.write(settings, upserts=records)

    written, unchanged = asyncio.run(go())
    _say(f"{len(records)} organization(s): {written} written, {unchanged} unchanged")


@orgs.command("list")
def orgs_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Show the catalog as the topic holds it now."""
    from rich.console import Console
    from rich.table import Table

    from services.enrich import catalog
    from shared.organizations import Organization

    raw = asyncio.run(catalog.current(_settings()))
    if as_json:
        for oid in sorted(raw):
            sys.stdout.write(raw[oid].decode() + "\n")
        return
    table = Table("id", "name", "zh", "kind", "city", "aliases")
    for oid in sorted(raw):
        org = Organization.model_validate_json(raw[oid])
        table.add_row(org.id, org.name, org.names.get("zh", ""), org.kind.value,
                      org.city or "", ", ".join(org.aliases))
    Console().print(table)
    _say(f"{len(raw)} organization(s)")


@orgs.command("get")
def orgs_get(org_id: Annotated[str, typer.Argument(help="organization id (slug)")]) -> None:
    """Print one organization record as JSON; exit 1 when there is none."""
    from services.enrich import catalog

    raw = asyncio.run(catalog.current(_settings()))
    if org_id not in raw:
        _say(f"no organization {org_id!r}")
        raise typer.Exit(1)
    sys.stdout.write(raw[org_id].decode() + "\n")


@orgs.command("put")
def orgs_put(
    record: Annotated[str, typer.Argument(help="the organization as JSON, or @file, or - for stdin")],
) -> None:
    """Upsert one organization (validated before it is written)."""
    from pydantic import ValidationError

    from services.enrich import catalog
    from shared.organizations import RecordTooLarge, parse_organization

    try:
        org = parse_organization(_read(record))  # the catalog's own check, size bound included
    except (ValidationError, RecordTooLarge) as exc:
        _refuse("invalid organization", exc)
    written, _ = asyncio.run(catalog.write(_settings(), upserts=[org]))
    _say(f"{org.id}: {'written' if written else 'unchanged'}")


@orgs.command("delete")
def orgs_delete(org_id: Annotated[str, typer.Argument(help="organization id (slug)")]) -> None:
    """Delete one organization (a tombstone on the compacted topic)."""
    from services.enrich import catalog

    written, _ = asyncio.run(catalog.write(_settings(), deletes=[org_id]))
    if not written:
        _say(f"no organization {org_id!r}")
        raise typer.Exit(1)
    _say(f"{org_id}: deleted")


__all__ = ["app", "orgs", "orgs_delete", "orgs_get", "orgs_list", "orgs_load", "orgs_put"]
