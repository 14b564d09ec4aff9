"""``anting``: the one command line of the project.

The root holds what belongs to no single service (serve, topics, schema, the
local broker, dead letters); each service adds its own commands from
``services/<service>/cli.py`` (kept light: heavy imports happen inside commands).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, get_args

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument, TyperGroup, TyperOption

from services import kafka_cli
from services.enrich import cli as enrich_cli
from services.ingest import cli as ingest_cli
from services.insights import cli as insights_cli
from services.notify import cli as notify_cli
from shared import settings as settings_mod

_TYPE_NAMES: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN", Path: "PATH"}


def _type_name(param: TyperArgument | TyperOption) -> str:
    """What a value of ``param`` is, as click names it: ``TEXT``, ``INTEGER``, ``[json|table]``;
    a repeatable option or a list argument shows its items' type."""
    desc = param.type_descriptor
    if desc.choices is not None:
        return "[" + "|".join(str(c.value if isinstance(c, Enum) else c) for c in desc.choices) + "]"
    annotation: Any = desc.annotation
    if desc.is_list:
        (annotation,) = get_args(annotation)
    return _TYPE_NAMES.get(annotation, str(getattr(annotation, "__name__", annotation)).upper())


def _showing(text: str) -> Callable[[object], str]:
    def display_type_rich(ctx: object) -> str:
        return text

    return display_type_rich


def _click_style_types(command: Any) -> None:  # Any: a click command of typer's
    """Set the type ``--help`` shows for every parameter of ``command`` and its subcommands:
    none for a flag, click's name for anything else (typer's own is ``<bool>`` beside every
    flag and ``<list[str]>`` beside every repeatable option)."""
    # --help is made on first use and kept: make it now, so it is set here too
    for param in command.get_params(typer.Context(command)):
        if isinstance(param, TyperOption):
            if param.metavar is None:
                param.metavar = "" if param.is_flag else _type_name(param)
        elif isinstance(param, TyperArgument):
            # an argument's metavar would replace its name in the help: only the type changes
            param.display_type_rich = _showing(_type_name(param))  # type: ignore[method-assign,assignment]
    for sub in getattr(command, "commands", {}).values():
        _click_style_types(sub)


class ClickStyleHelp(TyperGroup):
    """The root command: its help, and every subcommand's, name types as click does."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # Any: click's signature, passed on
        _click_style_types(self)  # here: typer adds the completion flags after __init__
        return super().main(*args, **kwargs)


app = typer.Typer(
    cls=ClickStyleHelp,
    name="anting",
    help="Anting: conference announcements and agreement signings on Apache Kafka, "
    "enriched with organization metadata and delivered to subscribers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# messages are not wrapped at the terminal's width (80 columns in a pipe): a path or a URL
# in them stays one piece that a script or a search finds
console = Console(stderr=True, soft_wrap=True)

for sub in (ingest_cli.app, enrich_cli.app, notify_cli.app, insights_cli.app):
    app.add_typer(sub)


class KafkaSecurity(StrEnum):
    """The local Kafka's client listener: as today, or SASL_SSL with SCRAM users and ACLs."""

    none = "none"
    sasl_ssl = "sasl_ssl"


class Service(StrEnum):
    ingest = "ingest"
    enrich = "enrich"
    notify = "notify"
    insights = "insights"


@app.command()
def serve(service: Annotated[Service, typer.Argument(help="which service to run")]) -> None:
    """Run one service in the foreground until SIGTERM or Ctrl-C (what compose and `make run` run)."""
    module = importlib.import_module(f"services.{service.value}.main")
    module.run()


@app.command()
def run(
    kafka_port: Annotated[int | None, typer.Option(
        envvar="ANTING_RUN_KAFKA_PORT", show_default=False,
        help="port of the local broker (when KAFKA_BOOTSTRAP_SERVERS is unset)  [default: 9092 + "
             "ANTING_PORT_OFFSET]")] = None,
    brokers: Annotated[int, typer.Option(
        min=1, envvar="ANTING_RUN_BROKERS",
        help="local Kafka nodes; above 1 a replicated cluster on the port and the next ones")] = 1,
    prometheus: Annotated[bool, typer.Option(
        "--prometheus/--no-prometheus", envvar="ANTING_RUN_PROMETHEUS",
        help="start Prometheus when its binary is on PATH")] = True,
    prometheus_port: Annotated[int | None, typer.Option(
        envvar="ANTING_RUN_PROMETHEUS_PORT", show_default=False,
        help="[default: 9090 + ANTING_PORT_OFFSET]")] = None,
    scrape_interval: Annotated[float, typer.Option(
        envvar="ANTING_RUN_SCRAPE_INTERVAL", help="Prometheus scrape interval, seconds")] = 5.0,
    seed: Annotated[Path | None, typer.Option(
        envvar="ANTING_RUN_SEED", help="what to publish once the stack is up: an article (.txt, .md, .html; "
        "default: the seed story) or NDJSON CloudEvents")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        envvar="ANTING_RUN_STATE_DIR", help="where the broker and Prometheus keep data (.local)")] = None,
    security: Annotated[KafkaSecurity, typer.Option(
        envvar="ANTING_RUN_SECURITY", case_sensitive=False,
        help="none, or sasl_ssl: the local Kafka's client listener on SASL_SSL (SCRAM-SHA-512) "
             "with ACLs, each service its own user; client configs in .local/secure/")] = KafkaSecurity.none,
) -> None:
    """The whole stack here (what `make run` runs): Kafka, topics, catalog, the four services, the seed."""
    try:
        from devtools import stack  # a development tool, not in the image: imported here only
    except ModuleNotFoundError as exc:
        _without_devtools(exc, "run")

    from shared.where import default_port

    opts = stack.Options(
        kafka_port=default_port("kafka") if kafka_port is None else kafka_port, brokers=brokers,
        prometheus=prometheus,
        prometheus_port=default_port("prometheus") if prometheus_port is None else prometheus_port,
        scrape_interval=scrape_interval, security=security.value,
    )
    if seed is not None:
        opts.seed = seed
    if state_dir is not None:
        opts.state_dir = state_dir.resolve()
    raise typer.Exit(stack.run(opts))


topics_app = typer.Typer(help="The Kafka topics of the registry.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create() -> None:
    """Create every registered topic that does not exist yet (idempotent)."""
    from aiokafka.errors import KafkaError

    from shared.kafka import ensure_topics
    from shared.settings import AntingSettings

    settings = settings_mod.load(AntingSettings)
    _on_broker(settings, "creating topics")
    try:
        created = asyncio.run(ensure_topics(settings))
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings)
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


@topics_app.command("flows")
def topics_flows() -> None:
    """Print who writes and who reads each topic, as declared in shared/topology.py (the
    README's topic table)."""
    from shared.topology import markdown_table

    sys.stdout.write(markdown_table())


topics_app.command("describe")(kafka_cli.topics_describe)
app.add_typer(kafka_cli.groups_app, name="groups")


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option(help="directory to write to")] = None,
) -> None:
    """Write the JSON Schema of every event model to docs/schemas/."""
    from shared.schemas import SCHEMA_DIR, write_all

    for path in write_all(out or SCHEMA_DIR):
        console.print(f"wrote {path}")


@app.command()
def asyncapi(
    out: Annotated[Path | None, typer.Option(help="file to write to")] = None,
    from_env: Annotated[bool, typer.Option(
        "--from-env", help="for this environment's ANTING_TOPIC_PREFIX and KAFKA_* settings, "
        "not the defaults docs/asyncapi.yaml holds")] = False,
) -> None:
    """Write the AsyncAPI 3.0 document of the topics to docs/asyncapi.yaml."""
    from shared.asyncapi import ASYNCAPI_PATH, build, default_document, write
    from shared.settings import AntingSettings, load

    if from_env:
        settings = load(AntingSettings)
        doc = build(settings.topic_prefix, settings.kafka)
    else:
        doc = default_document()
    console.print(f"wrote {write(doc, out or ASYNCAPI_PATH)}")


def _error(exc: Exception) -> None:
    """``error: <message>`` on stderr; the message as plain text (Maven's output, say,
    holds square brackets that are not markup)."""
    from rich.text import Text

    console.print(Text.assemble(("error: ", "red"), str(exc)))


def _without_devtools(exc: ModuleNotFoundError, command: str) -> NoReturn:
    """``anting run`` and ``anting kafka`` need devtools, which only a checkout's install
    has (the image copies shared/ and services/): say so, exit 2. ``exc`` is raised again
    when the missing module is another."""
    if exc.name != "devtools" and not (exc.name or "").startswith("devtools."):
        raise exc
    console.print(f"[red]error:[/red] `anting {command}` is a development tool: run it from a "
                  "checkout of the repository (`make setup` installs it), not from the image")
    raise typer.Exit(2)


@app.command()
def kafka(
    port: Annotated[int | None, typer.Option(
        show_default=False, help="listener port on 127.0.0.1  [default: 9092 + ANTING_PORT_OFFSET]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="log and metadata directory")] = None,
    fetch_only: Annotated[
        bool, typer.Option("--fetch-only", help="resolve the broker's jars with Maven, then exit")
    ] = False,
    brokers: Annotated[int, typer.Option(
        min=1, help="nodes (broker and controller each); listeners on --port, --port + 1, ...")] = 1,
    security: Annotated[KafkaSecurity, typer.Option(
        case_sensitive=False,
        help="none, or sasl_ssl: SASL_SSL (SCRAM-SHA-512) with ACLs, the topics created, "
             "client configs in .local/secure/")] = KafkaSecurity.none,
) -> None:
    """Run a local Kafka broker, or a cluster of --brokers nodes (KRaft, jars from Maven Central), until Ctrl-C."""
    try:
        from devtools.localkafka import (
            LocalKafkaError,
            fetch_jars,
            serve_cluster_forever,
            serve_forever,
        )
    except ModuleNotFoundError as exc:
        _without_devtools(exc, "kafka")

    from shared.where import default_port

    port = default_port("kafka") if port is None else port
    try:
        if fetch_only:
            console.print(f"Kafka jars ready in {fetch_jars()}")
            return
        if brokers > 1:
            serve_cluster_forever(brokers, port, data_dir, security=security.value)
        else:
            serve_forever(port, data_dir, security=security.value)
    except LocalKafkaError as exc:
        _error(exc)
        raise typer.Exit(2) from None


acls_app = typer.Typer(
    help="Kafka ACLs: the least-privilege table each principal needs on a secured cluster "
         "(services/acls.py), printed or applied. Examples: `anting acls print`, "
         "`anting acls print --format kafka-acls --prefix prod.`, "
         "`anting acls apply --admin-config admin.properties`.",
    no_args_is_help=True)
app.add_typer(acls_app, name="acls")


class AclFormat(StrEnum):
    markdown = "markdown"
    kafka_acls = "kafka-acls"


@acls_app.command("print")
def acls_print(
    fmt: Annotated[AclFormat, typer.Option("--format", help="markdown (the README's table) or "
                                           "kafka-acls (one kafka-acls.sh command per ACL)")] = AclFormat.markdown,
    prefix: Annotated[str, typer.Option("--prefix", help="ANTING_TOPIC_PREFIX of the deployment "
                                        "(default: the variable, else none)")] = "",
) -> None:
    """Print the ACL table: who may do what on which topic, group and transactional id."""
    import os

    from services.acls import kafka_acls_commands, markdown_table

    prefix = prefix or os.environ.get("ANTING_TOPIC_PREFIX", "")
    out = markdown_table(topic_prefix=prefix) if fmt is AclFormat.markdown else kafka_acls_commands(
        topic_prefix=prefix) + "\n"
    sys.stdout.write(out)


@acls_app.command("apply")
def acls_apply(
    admin_config: Annotated[Path, typer.Option(
        "--admin-config", help="librdkafka properties of a super user (bootstrap.servers, "
        "security.protocol, sasl.*, ssl.ca.location), as kcat's -F file", exists=True,
        dir_okay=False, readable=True)],
    prefix: Annotated[str, typer.Option("--prefix", help="ANTING_TOPIC_PREFIX of the deployment")] = "",
) -> None:
    """Create every ACL of the table on the cluster the admin config reaches (an ACL that
    exists already is left as it is); exit 2 naming the refusal when the cluster refuses."""
    import os

    from services.acls import acl_table, apply_acls

    config: dict[str, str | int | float | bool] = {}
    for line in admin_config.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            config[key.strip()] = value.strip()
    prefix = prefix or os.environ.get("ANTING_TOPIC_PREFIX", "")
    try:
        n = apply_acls(config, acl_table(prefix))
    except ImportError:
        console.print("[red]error:[/] applying ACLs needs confluent-kafka (`pip install confluent-kafka`); "
                      "or run the commands of `anting acls print --format kafka-acls`", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        console.print(f"[red]error:[/] the cluster at {config.get('bootstrap.servers', '?')} refused "
                      f"the ACLs: {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print(f"{n} ACL(s) applied at {config.get('bootstrap.servers', '?')}", highlight=False)


dlq_app = typer.Typer(
    help="Dead letters: records a stage could not process, newest first; replay sends chosen "
    "ones back to their original topic, once.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

# the options `list` and `replay` share: which letters
StageOpt = Annotated[str | None, typer.Option(
    help="only letters of this stage (dlq.stage: ingest, enrich, notify)")]
TopicOpt = Annotated[str | None, typer.Option(
    help="only letters from this original topic (with or without ANTING_TOPIC_PREFIX)")]
SinceOpt = Annotated[str | None, typer.Option(
    help="only letters written since then: a duration back from now (30m, 2h, 7d, 1h30m) "
    "or an RFC 3339 time (2024-05-01T10:00:00Z)")]
UntilOpt = Annotated[str | None, typer.Option(
    help="only letters written until then (same forms as --since)")]
PartitionOpt = Annotated[int | None, typer.Option(
    min=0, help="only this partition of dead-letters")]
FromOffsetOpt = Annotated[int | None, typer.Option(
    min=0, help="only letters at this offset of dead-letters or later (each partition, "
    "or the one --partition names)")]
ToOffsetOpt = Annotated[int | None, typer.Option(
    min=0, help="only letters at this offset or earlier (inclusive)")]


def _dlq_selection(
    stage: str | None, topic: str | None, since: str | None, until: str | None,
    partition: int | None, from_offset: int | None, to_offset: int | None,
) -> Any:
    """The options as a :class:`shared.deadletters.Selection` (BadParameter names a bad one)."""
    from datetime import UTC, datetime

    from shared.deadletters import Selection, parse_when

    now = datetime.now(UTC)
    times: dict[str, datetime | None] = {}
    for name, text in (("--since", since), ("--until", until)):
        try:
            times[name] = parse_when(text, now) if text is not None else None
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=name) from None
    start, end = times["--since"], times["--until"]
    if start is not None and end is not None and end < start:
        raise typer.BadParameter("is before --since", param_hint="--until")
    if from_offset is not None and to_offset is not None and to_offset < from_offset:
        raise typer.BadParameter("is below --from-offset", param_hint="--to-offset")
    return Selection(stage=stage, topic=topic, since=start, until=end, partition=partition,
                     from_offset=from_offset, to_offset=to_offset)


def _cell(text: str | None) -> Any:
    """Table text as plain Text: no rich markup, and no control character reaches the terminal."""
    from rich.text import Text

    text = text or ""
    return Text(text.encode("unicode_escape").decode("ascii")
                if any(not c.isprintable() for c in text) else text)


def _on_broker(settings: settings_mod.AntingSettings, what: str) -> None:
    """Say on stderr which broker an operator command uses, and as whom: Kafka knows no
    tenants, so these commands are the cluster principal's, not an API key's."""
    from shared.kafka_access import principal

    console.print(f"{what} on broker {settings.kafka.bootstrap_servers} as "
                  f"{principal(settings.kafka)}", highlight=False)


def _kafka_failed(exc: BaseException, settings: settings_mod.AntingSettings, reads: tuple[str, ...] = (),
                  writes: tuple[str, ...] = (), after: str = "") -> NoReturn:
    """``error:`` naming who was refused what on which broker (or that none answered), then
    exit 2: a refusal is never printed as an empty answer."""
    from rich.text import Text

    from shared.kafka_access import Doing, refusal

    line = asyncio.run(refusal(exc, settings.kafka, Doing(reads=reads, writes=writes)))
    said = line or f"{type(exc).__name__}: {exc}"
    console.print(Text.assemble(("error: ", "red"),
                                f"{said} (broker {settings.kafka.bootstrap_servers}){after}"))
    raise typer.Exit(2)


def _when(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dlq_app.command("list")
def dlq_list(
    stage: StageOpt = None,
    topic: TopicOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    partition: PartitionOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    reverse: Annotated[bool, typer.Option(
        "--reverse", help="oldest first (with --from-offset: the first --limit letters from "
        "there, like kcat -o OFFSET -c LIMIT)")] = False,
    limit: Annotated[int, typer.Option(min=1, help="show at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Show dead letters, newest first: when each was written, its stage, where it came
    from (topic[0]@41, or file:line for a bad line `anting publish` read) and
    why it failed. Examples: `anting dlq list --since 2h --stage enrich`,
    `anting dlq list --topic announcements --limit 20`, `anting dlq list --reverse`."""
    import orjson
    from aiokafka.errors import KafkaError

    from shared.deadletters import read_letters, show_bytes
    from shared.settings import AntingSettings
    from shared.topics import DEAD_LETTERS

    selection = _dlq_selection(stage, topic, since, until, partition, from_offset, to_offset)
    settings = settings_mod.load(AntingSettings)
    _on_broker(settings, f"reading {settings.topic(DEAD_LETTERS)}")
    try:
        letters = asyncio.run(read_letters(settings, selection, limit=limit, newest_first=not reverse))
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings, reads=(settings.topic(DEAD_LETTERS),))
    if as_json:
        for stored in letters:
            letter = stored.letter
            sys.stdout.write(orjson.dumps({
                "offset": stored.offset,
                "key": show_bytes(letter.key),
                "value": show_bytes(letter.value),
                # null header values stay null; bytes that are not UTF-8 become \xNN
                "headers": {k: show_bytes(v) for k, v in letter.headers},
            }).decode() + "\n")
        return

    # partition@offset once a letter is not on partition 0 (dead-letters has one by default)
    several = any(s.partition for s in letters)
    table = Table("offset", "written (UTC)", "stage", "from", "error", "value")
    for stored in letters:
        letter = stored.letter
        table.add_row(
            f"{stored.partition}@{stored.offset}" if several else str(stored.offset),
            _when(stored.timestamp), _cell(stored.stage), _cell(stored.origin),
            _cell(f"{letter.header('dlq.error.class')}: {letter.header('dlq.error.message')}"),
            _cell(show_bytes((letter.value or b"")[:60])),
        )
    Console().print(table)
    order = "oldest first" if reverse else "newest first"
    more = "; there may be more: raise --limit or narrow the selection" if len(letters) == limit else ""
    console.print(f"{len(letters)} dead letter(s), {order}{more}")


@dlq_app.command("replay")
def dlq_replay(
    stage: StageOpt = None,
    topic: TopicOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    partition: PartitionOpt = None,
    from_offset: FromOffsetOpt = None,
    to_offset: ToOffsetOpt = None,
    all_letters: Annotated[bool, typer.Option(
        "--all", help="every letter (replay refuses to run without a selection or this)")] = False,
    limit: Annotated[int, typer.Option(min=1, help="send at most this many, oldest first")] = 1000,
    again: Annotated[bool, typer.Option(
        "--again", help="also send letters an earlier replay sent (once more)")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="show what would be sent; send and record nothing")] = False,
) -> None:
    """Send chosen dead letters back to their original topic (original key, value and
    headers), oldest first, once: each one sent is recorded on dead-letters-replayed in
    the same transaction, and a later replay skips it. Letters that cannot be sent are
    skipped with the reason (a bad line of a file has no topic to go back to: correct
    the file and publish it again). Examples: `anting dlq replay --stage enrich --since 1h`,
    `anting dlq replay --from-offset 120 --to-offset 180`, `anting dlq replay --all --dry-run`."""
    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shared.deadletters import ReplayFailed, ReplayReport, offset_ranges, replay
    from shared.settings import AntingSettings
    from shared.topics import DEAD_LETTERS, DEAD_LETTERS_REPLAYED

    selection = _dlq_selection(stage, topic, since, until, partition, from_offset, to_offset)
    if not selection.narrows() and not all_letters:
        console.print("[red]error:[/red] say which dead letters to replay: --stage, --topic, "
                      "--since/--until or --from-offset/--to-offset; or --all for every one")
        raise typer.Exit(2)
    settings = settings_mod.load(AntingSettings)
    _on_broker(settings, "replaying " + settings.topic(DEAD_LETTERS))

    def run_replay(progress: Callable[[str, int, int], None] | None = None) -> ReplayReport:
        return asyncio.run(replay(settings, selection, limit=limit, again=again, dry_run=dry_run,
                                  progress=progress))

    failed: ReplayFailed | None = None
    try:
        if console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task("reading dead-letters", total=None)

                def progress(phase: str, done: int, total: int) -> None:
                    what = "reading dead-letters (offsets)" if phase == "reading" else "sending"
                    bar.update(task, description=what, completed=done, total=total)

                report = run_replay(progress)
        else:
            report = run_replay()
    except ReplayFailed as exc:
        failed, report = exc, exc.report
    except (KafkaError, OSError, TimeoutError) as exc:
        _kafka_failed(exc, settings, reads=(settings.topic(DEAD_LETTERS), settings.topic(DEAD_LETTERS_REPLAYED)),
                      writes=(settings.topic(DEAD_LETTERS_REPLAYED),), after="; nothing was sent")

    done = "would replay" if report.dry_run else "replayed"
    rows = sorted([(e, done) for e in report.replayed] + [(e, "skipped") for e in report.skipped],
                  key=lambda row: (row[0].timestamp, row[0].partition, row[0].offset))
    if rows:
        table = Table("letter", "written (UTC)", "stage", "from", "outcome", "to / why not")
        for e, outcome in rows:
            table.add_row(f"{e.partition}@{e.offset}", _when(e.timestamp), _cell(e.stage),
                          _cell(e.origin), outcome, _cell(e.reason or e.topic))
        Console().print(table)
    reasons: dict[str, int] = {}
    for e in report.skipped:
        reasons[e.reason.split(":")[0]] = reasons.get(e.reason.split(":")[0], 0) + 1
    summary = f"{done} {len(report.replayed)}"
    if report.skipped:
        summary += f", skipped {len(report.skipped)} (" + ", ".join(
            f"{n} {why}" for why, n in sorted(reasons.items())) + ")"
    if report.replayed_before:
        summary += (f"; {len(report.replayed_before)} replayed before, not sent again "
                    f"(--again sends them once more): {offset_ranges(report.replayed_before)}")
    if report.dry_run:
        summary += "; nothing sent (--dry-run)"
    console.print(summary)
    if failed is not None:
        console.print(f"[red]error:[/red] {failed}; run the same replay again to send the rest")
        raise typer.Exit(1)


keys_app = typer.Typer(help="API keys of tenants, for ANTING_API_KEYS_FILE.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for, e.g. acme")],
    scopes: Annotated[str, typer.Option(
        help="comma-separated: events:publish, subscriptions:manage, stream:read, "
             "insights:read, admin")],
    append: Annotated[Path | None, typer.Option(
        help="append the line to this key file (ANTING_API_KEYS_FILE) instead of printing it")] = None,
) -> None:
    """Make a new API key: prints the key once (only its SHA-256 is kept) and the line
    ``<sha256-hex> <tenant> <scopes>`` for the key file; the services read the file at start."""
    from shared.access import key_line, new_key

    key = new_key()
    try:
        line = key_line(key, tenant, scopes.split(","))
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if append is not None:
        # a file whose last line has no newline would glue this line onto it
        gap = "\n" if append.is_file() and append.read_bytes()[-1:] not in (b"", b"\n") else ""
        with append.open("a") as out:
            out.write(gap + line + "\n")
        sys.stderr.write(f"appended to {append}: {line}\n")
    else:
        sys.stderr.write("the line for ANTING_API_KEYS_FILE:\n")
        sys.stdout.write(line + "\n")
    sys.stderr.write("the key, shown this once (give it to the tenant; Authorization: Bearer <key>):\n")
    sys.stdout.write(key + "\n")


@app.command()
def where(
    what: Annotated[str | None, typer.Argument(
        help="one of kafka, ingest, enrich, notify, insights, prometheus: print its address alone")] = None,
) -> None:
    """Where this command's stack is: the broker and every service's URL, each with where it
    came from (the environment, the profile `anting run` wrote, or the defaults moved by
    ANTING_PORT_OFFSET). Example: `curl "$(anting where ingest)/readyz"`."""
    import os

    from shared.where import SERVICES, default_port, profile_path, service_url

    env = os.environ
    taken = set(_FROM_PROFILE)
    rows: list[tuple[str, str, str]] = []

    def source(variables: tuple[str, ...], key: str) -> str:
        if key in taken:
            return f"profile {profile_path()}"
        given = [v for v in variables if env.get(v, "").strip()]
        return ", ".join(given) if given else "default"

    settings = settings_mod.load(settings_mod.AntingSettings)
    rows.append(("kafka", settings.kafka.bootstrap_servers,
                 source(("KAFKA_BOOTSTRAP_SERVERS", "ANTING_PORT_OFFSET"), "KAFKA_BOOTSTRAP_SERVERS")))
    for name in SERVICES:
        key = f"ANTING_{name.upper()}_URL"
        rows.append((name, service_url(name), source(
            (key, f"ANTING_{name.upper()}_HOST", f"ANTING_{name.upper()}_PORT", "ANTING_PORT_OFFSET"), key)))
    prometheus = env.get("ANTING_PROMETHEUS_URL", "").strip() or (
        f"http://127.0.0.1:{env.get('ANTING_RUN_PROMETHEUS_PORT', '').strip() or default_port('prometheus')}")
    rows.append(("prometheus", prometheus.rstrip("/"), source(
        ("ANTING_PROMETHEUS_URL", "ANTING_RUN_PROMETHEUS_PORT", "ANTING_PORT_OFFSET"), "ANTING_PROMETHEUS_URL")))
    if what is not None:
        found = [address for name, address, _ in rows if name == what]
        if not found:
            raise typer.BadParameter(f"{what!r} is not one of {', '.join(n for n, _, _ in rows)}",
                                     param_hint="WHAT")
        sys.stdout.write(found[0] + "\n")
        return
    width = max(len(a) for _, a, _ in rows)
    for name, address, came in rows:
        sys.stdout.write(f"{name:<11}{address:<{width}}  ({came})\n")
    if settings.topic_prefix:
        came = f"profile {profile_path()}" if "ANTING_TOPIC_PREFIX" in taken else "ANTING_TOPIC_PREFIX"
        sys.stdout.write(f"{'prefix':<11}{settings.topic_prefix:<{width}}  ({came})\n")


#: the variables this process took from the profile of `anting run` (main() fills it)
_FROM_PROFILE: dict[str, str] = {}


def main() -> None:
    """The ``anting`` command: a bad setting is one message and exit code 2, not a
    traceback (so is a local broker that cannot run: ``anting kafka`` and ``anting run``,
    the only commands that start one, say so themselves).

    Every command but ``anting run`` (which writes it) first takes what its environment
    does not say about where the stack is from the profile ``anting run`` wrote
    (shared/where.py): the environment wins over the profile, the profile over defaults."""
    import os

    from shared.where import apply_profile

    try:
        if sys.argv[1:2] != ["run"]:
            _FROM_PROFILE.update(apply_profile(os.environ))
        app()
    except settings_mod.SettingsError as exc:
        console.print(f"[red]{exc}[/red]")
        sys.exit(2)


__all__ = ["ClickStyleHelp", "FromOffsetOpt", "PartitionOpt", "Service", "SinceOpt", "StageOpt",
           "ToOffsetOpt", "TopicOpt", "UntilOpt", "app", "asyncapi", "console", "dlq_app", "dlq_list",
           "dlq_replay", "kafka", "main", "run", "schema", "serve", "topics_app", "topics_create",
           "topics_flows", "topics_list", "where"]
