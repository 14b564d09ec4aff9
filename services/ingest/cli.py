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
        typer.Argument(help="files of CloudEvents (.json, .ndjson: a JSON object, a JSON array "
                       "or NDJSON; - for stdin), articles (.txt, .md, .html: one document each) "
                       "or folders of them"),
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
    source: Annotated[
        str | None,
        typer.Option("--source", help="the source of articles (default: ANTING_INGEST_SOURCE, "
                     "as for POST /v1/documents)"),
    ] = None,
    charset: Annotated[
        str | None,
        typer.Option("--charset", help="the charset of articles (default: UTF-8)"),
    ] = None,
) -> None:
    """Publish events and articles from files, folders or stdin; bad lines go to
    dead-letters with their file and line. An article is published to `documents` as
    POST /v1/documents publishes it (its id a hash of its text); one that is empty,
    binary, not in its charset or too large is refused and publishes nothing.

    Exit code: 0 everything accepted, 1 some events rejected (see `anting dlq list`) or
    articles refused, 2 an error (a file that cannot be read, the broker unreachable).
    """
    from services.ingest.document_files import check_source
    from services.ingest.publish_cli import run_publish, run_watch

    if source is not None:
        try:
            check_source(source)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--source") from None
    if charset is not None:
        import codecs

        try:
            codecs.lookup(charset)
        except LookupError:
            raise typer.BadParameter(f"{charset!r} is not a charset Python knows",
                                     param_hint="--charset") from None
    if watch is not None:
        if files:
            raise typer.BadParameter("give either FILES or --watch DIR, not both")
        raise typer.Exit(run_watch(watch, once=once, source=source, charset=charset))
    if not files:
        raise typer.BadParameter("give at least one FILE (or - for stdin), or --watch DIR")
    raise typer.Exit(run_publish(files, quiet=quiet, source=source, charset=charset))


__all__ = ["app", "publish"]
