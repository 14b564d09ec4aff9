"""Commands of the ingest service, merged into `anting` (keep imports here light:
the whole `anting` command imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("publish")
def publish(
    files: Annotated[
        list[str] | None,
        typer.Argument(help="files of CloudEvents (JSON object, JSON array or NDJSON); - for stdin"),
    ] = None,
    watch: Annotated[
        Path | None,
        typer.Option("--watch", help="publish every file dropped into this folder, then move "
                     "it to .done/ (or .failed/ when some lines were rejected); runs until Ctrl-C"),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="with --watch: publish what is there, then exit")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Publish events from files or stdin; bad lines go to dead-letters with their file and line.

    Exit code: 0 every event accepted, 1 some were rejected (see `anting dlq list`),
    2 an error (a file that cannot be read, the broker unreachable).
    """
    from services.ingest.publish_cli import run_publish, run_watch

    if watch is not None:
        if files:
            raise typer.BadParameter("give either FILES or --watch DIR, not both")
        raise typer.Exit(run_watch(watch, once=once))
    if not files:
        raise typer.BadParameter("give at least one FILE (or - for stdin), or --watch DIR")
    raise typer.Exit(run_publish(files, quiet=quiet))


__all__ = ["app", "publish"]
