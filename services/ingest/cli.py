"""Commands of the ingest service, merged into `anting` (keep imports here light)."""

import typer

app = typer.Typer()
