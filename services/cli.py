"""``anting``: the one command line of the project.

The root holds what belongs to no single service (serve, topics, schema, the
local broker, dead letters); each service adds its own commands from
``services/<service>/cli.py`` (kept light: heavy imports happen inside commands).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.enrich import cli as enrich_cli
from services.ingest import cli as ingest_cli
from services.notify import cli as notify_cli
from shared import settings as settings_mod

app = typer.Typer(
    name="anting",
    help="Anting: conference announcements and agreement signings on Apache Kafka, "
    "enriched with organization metadata and delivered to subscribers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

for sub in (ingest_cli.app, enrich_cli.app, notify_cli.app):
    app.add_typer(sub)


class Service(StrEnum):
    ingest = "ingest"
    enrich = "enrich"
    notify = "notify"


@app.command()
def serve(service: Annotated[Service, typer.Argument(help="which service to run")]) -> None:
    """Run one service in the foreground until SIGTERM or Ctrl-C (what compose and `make run` run)."""
    module = importlib.import_module(f"services.{service.value}.main")
    module.run()


@app.command()
def run(
    kafka_port: Annotated[int, typer.Option(
        envvar="ANTING_RUN_KAFKA_PORT", help="port of the local broker (when KAFKA_BOOTSTRAP_SERVERS is unset)")] = 9092,
    prometheus: Annotated[bool, typer.Option(
        "--prometheus/--no-prometheus", envvar="ANTING_RUN_PROMETHEUS",
        help="start Prometheus when its binary is on PATH")] = True,
    prometheus_port: Annotated[int, typer.Option(envvar="ANTING_RUN_PROMETHEUS_PORT")] = 9090,
    scrape_interval: Annotated[float, typer.Option(
        envvar="ANTING_RUN_SCRAPE_INTERVAL", help="Prometheus scrape interval, seconds")] = 5.0,
    seed: Annotated[Path | None, typer.Option(
        envvar="ANTING_RUN_SEED", help="NDJSON CloudEvents to publish once the stack is up")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        envvar="ANTING_RUN_STATE_DIR", help="where the broker and Prometheus keep data (.local)")] = None,
) -> None:
    """The whole stack here (what `make run` runs): Kafka, topics, catalog, the three services, the seed."""
    from services import devstack

    opts = devstack.Options(
        kafka_port=kafka_port, prometheus=prometheus, prometheus_port=prometheus_port,
        scrape_interval=scrape_interval,
    )
    if seed is not None:
        opts.seed = seed
    if state_dir is not None:
        opts.state_dir = state_dir.resolve()
    raise typer.Exit(devstack.run(opts))


topics_app = typer.Typer(help="The Kafka topics of the registry.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create() -> None:
    """Create every registered topic that does not exist yet (idempotent)."""
    from shared.kafka import ensure_topics
    from shared.settings import AntingSettings

    settings = settings_mod.load(AntingSettings)
    created = asyncio.run(ensure_topics(settings))
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '(all existed)'}")


@topics_app.command("list")
def topics_list() -> None:
    """Show the registry: each topic's name, partitions, cleanup policy and key."""
    from shared.settings import AntingSettings
    from shared.topics import ALL_TOPICS

    settings = settings_mod.load(AntingSettings)
    table = Table("topic", "partitions", "cleanup", "key", "what")
    for t in ALL_TOPICS:
        table.add_row(settings.topic(t), str(t.partitions), t.cleanup, t.key, t.doc)
    Console().print(table)


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="directory to write to")] = None,
) -> None:
    """Write the JSON Schema of every event model to docs/schemas/."""
    from shared.schemas import SCHEMA_DIR, write_all

    for path in write_all(out or SCHEMA_DIR):
        console.print(f"wrote {path}")


@app.command()
def kafka(
    port: Annotated[int, typer.Option(help="listener port on 127.0.0.1")] = 9092,
    data_dir: Annotated[Path | None, typer.Option(help="log and metadata directory")] = None,
    fetch_only: Annotated[
        bool, typer.Option("--fetch-only", help="resolve the broker's jars with Maven, then exit")
    ] = False,
) -> None:
    """Run a local single-node Kafka broker (KRaft, jars from Maven Central) until Ctrl-C."""
    from shared.localkafka import LocalKafkaError, fetch_jars, serve_forever

    try:
        if fetch_only:
            console.print(f"Kafka jars ready in {fetch_jars()}")
            return
        serve_forever(port, data_dir)
    except LocalKafkaError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


dlq_app = typer.Typer(help="Dead letters: records a stage could not process.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(help="show at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Show what is in dead-letters: where each record came from and why it failed."""
    import orjson
    from rich.text import Text

    from shared.deadletters import read_dead_letters, show_bytes
    from shared.settings import AntingSettings

    settings = settings_mod.load(AntingSettings)
    letters = asyncio.run(read_dead_letters(settings, limit=limit))
    if as_json:
        for offset, letter in letters:
            sys.stdout.write(orjson.dumps({
                "offset": offset,
                "key": show_bytes(letter.key),
                "value": show_bytes(letter.value),
                # null header values stay null; bytes that are not UTF-8 become \xNN
                "headers": {k: show_bytes(v) for k, v in letter.headers},
            }).decode() + "\n")
        return

    def cell(text: str | None) -> Text:
        # plain Text: no rich markup, and no control character reaches the terminal
        return Text((text or "").encode("unicode_escape").decode("ascii")
                    if any(not c.isprintable() for c in text or "") else (text or ""))

    table = Table("offset", "stage", "from", "error", "value")
    for offset, letter in letters:
        origin = f"{letter.header('dlq.original.topic')}[{letter.header('dlq.original.partition')}]@{letter.header('dlq.original.offset')}"
        table.add_row(
            str(offset), cell(letter.header("dlq.stage")), cell(origin),
            cell(f"{letter.header('dlq.error.class')}: {letter.header('dlq.error.message')}"),
            cell(show_bytes((letter.value or b"")[:60])),
        )
    Console().print(table)
    console.print(f"{len(letters)} dead letter(s)")


@dlq_app.command("replay")
def dlq_replay(
    stage: Annotated[str | None, typer.Option(help="only letters from this stage")] = None,
    limit: Annotated[int, typer.Option(help="replay at most this many")] = 1000,
) -> None:
    """Send dead letters back to their original topic (with their original key and headers)."""
    from shared.deadletters import replay_dead_letters
    from shared.settings import AntingSettings

    settings = settings_mod.load(AntingSettings)
    sent, skipped = asyncio.run(replay_dead_letters(settings, stage=stage, limit=limit))
    console.print(f"replayed {sent}, skipped {skipped} (no original topic)")


def main() -> None:
    try:
        app()
    except settings_mod.SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        sys.exit(2)
