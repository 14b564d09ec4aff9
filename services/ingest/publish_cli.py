"""What ``anting publish`` runs: files, folders or stdin with a progress bar and a
summary, or watch mode until Ctrl-C; event files go to their topics, article files
(``.txt``, ``.md``, ``.html``) to ``documents``. Returns the exit code (0 all accepted,
1 some rejected or refused, 2 error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from services.ingest.document_files import (
    DOCUMENT_PRODUCER,
    DocumentOptions,
    document_media_type,
    expand,
    publish_document_file,
)
from services.ingest.files import FILE_PRODUCER, Summary, publish_file
from services.ingest.settings import IngestSettings
from shared import logs
from shared import settings as settings_mod
from shared.kafka import make_producer
from shared.runtime import quiet_gc

# messages are not wrapped at the terminal's width (80 columns in a pipe): a path or a URL
# in them stays one piece that a script or a search finds
console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger(__name__)


def _summary_table(summaries: list[Summary]) -> Table:
    table = Table("file", "accepted", "rejected", "skipped", "by type", title="published")
    for s in summaries:
        table.add_row(s.name, str(s.accepted), f"[red]{s.rejected}[/red]" if s.rejected else "0",
                      str(s.skipped), ", ".join(f"{t}: {n}" for t, n in sorted(s.by_type.items())))
    return table


class _Tail:
    """A file name cut at the start to the width it is given (``…/conference.ndjson``):
    its end is what tells files apart."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(len(self.name), 12), len(self.name))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        room = options.max_width
        yield Text(self.name if len(self.name) <= room else "…" + self.name[len(self.name) - room + 1:],
                   no_wrap=True, overflow="crop")


class _FileColumn(ProgressColumn):
    def render(self, task: Task) -> _Tail:
        return _Tail(task.description)


def _progress(quiet: bool) -> Progress:
    """One line per file that stays one line at 80 columns: the file name and the bar
    give up width (the name from its start), the figures never wrap."""
    fixed = Column(no_wrap=True)
    return Progress(
        _FileColumn(), BarColumn(bar_width=12), DownloadColumn(table_column=fixed),
        TextColumn("{task.fields[counts]}", table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        console=console, disable=quiet, transient=False)


def _counts(s: Summary) -> str:
    return f"{s.accepted} ok" + (f", {s.rejected} rejected" if s.rejected else "")


def _size(name: str) -> int | None:
    """The file's size for the progress bar (None for stdin or what is not a file)."""
    path = Path(name)
    return path.stat().st_size if name != "-" and path.is_file() else None


async def _started(settings: IngestSettings, options: dict[str, object]) -> AIOKafkaProducer | None:
    """A started producer, or None once the error is printed (the broker unreachable)."""
    producer = make_producer(settings, **options)
    try:
        await asyncio.wait_for(producer.start(), 15)
    except (KafkaError, OSError, TimeoutError) as exc:
        console.print(f"[red]error:[/red] cannot reach the broker at "
                      f"{settings.kafka.bootstrap_servers}: {exc or type(exc).__name__}")
        with contextlib.suppress(Exception):
            await producer.stop()
        return None
    return producer


async def _publish(settings: IngestSettings, names: list[str], quiet: bool,
                   documents: DocumentOptions) -> int:
    files, empty = expand(names)
    for folder in empty:
        console.print(f"[red]error:[/red] {folder}: no event (.json, .ndjson) or article "
                      "(.txt, .md, .html) files in this folder")
    if not files:
        return 2
    # articles go through a producer of their own (compressed, larger requests), as
    # POST /v1/documents' do; events keep the bulk producer
    producers: dict[bool, AIOKafkaProducer] = {}
    for is_document in sorted({document_media_type(f) is not None for f in files}):
        producer = await _started(settings, DOCUMENT_PRODUCER if is_document else FILE_PRODUCER)
        if producer is None:
            for p in producers.values():
                with contextlib.suppress(Exception):
                    await p.stop()
            return 2
        producers[is_document] = producer
    summaries: list[Summary] = []
    errors = len(empty)
    try:
        with _progress(quiet) as progress:
            for name in files:
                total = _size(name)
                task = progress.add_task(name, total=total, counts="")

                def update(s: Summary, task: TaskID = task) -> None:
                    progress.update(task, completed=s.bytes_read, counts=_counts(s))

                try:
                    if document_media_type(name) is not None:
                        summary = await publish_document_file(
                            settings, name, producer=producers[True], options=documents)
                    else:
                        summary = await publish_file(settings, name, producer=producers[False],
                                                     on_acked=update)
                except OSError as exc:
                    console.print(f"[red]error:[/red] {name}: {exc.strerror or exc}")
                    errors += 1
                    continue
                if summary.refused:
                    progress.console.print(f"[red]refused:[/red] {name}: ", Text(
                        f"{summary.refused}; nothing was published"), highlight=False)
                progress.update(task, completed=total or summary.bytes_read,
                                counts=_counts(summary))
                summaries.append(summary)
    except KafkaError as exc:
        console.print(f"[red]error:[/red] the broker did not acknowledge: {exc!r}")
        return 2
    finally:
        for p in producers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.stop(), 30)
    if not quiet or errors:
        console.print(_summary_table(summaries))
    accepted = sum(s.accepted for s in summaries)
    rejected = sum(s.rejected for s in summaries)
    refused = sum(1 for s in summaries if s.refused)
    console.print(f"{accepted} accepted, {rejected} rejected"
                  + (" (see `anting dlq list`)" if rejected > refused else "")
                  + (f", {refused} document(s) refused" if refused else "")
                  + (f", {errors} file(s) unreadable" if errors else ""))
    if errors:
        return 2
    return 1 if rejected else 0


def run_publish(files: list[str], *, quiet: bool = False, source: str | None = None,
                charset: str | None = None) -> int:
    """``anting publish FILE|DIR…``: the exit code. ``source`` and ``charset`` are those
    of article files (``ANTING_INGEST_SOURCE`` and UTF-8 by default)."""
    settings = settings_mod.load(IngestSettings)
    logs.configure("ingest", "WARNING")
    quiet_gc()
    documents = DocumentOptions.of(settings, source=source, charset=charset)
    return uvloop.run(_publish(settings, files, quiet, documents))


def run_watch(folder: Path, *, once: bool = False, source: str | None = None,
              charset: str | None = None) -> int:
    """``anting publish --watch DIR``: the exit code once stopped (or, with ``once``, done)."""
    from services.ingest.watch import watch

    settings = settings_mod.load(IngestSettings)
    logs.configure("ingest", settings.log_level)
    documents = DocumentOptions.of(settings, source=source, charset=charset)
    rejected = 0

    def on_file(file: Path, summary: Summary | None, where: Path) -> None:
        nonlocal rejected
        if summary is not None and summary.refused:
            rejected += 1
            console.print(f"{file.name}: refused, nothing published: {summary.refused} "
                          f"→ {where.parent.name}/", markup=False, highlight=False)
        elif summary is not None and summary.document_id:
            console.print(f"{file.name}: document {summary.document_id} → "
                          f"{where.parent.name}/", markup=False, highlight=False)
        elif summary is not None:
            rejected += summary.rejected
            console.print(f"{file.name}: {summary.accepted} accepted, {summary.rejected} "
                          f"rejected → {where.parent.name}/")
        else:
            console.print(f"{file.name}: → {where.parent.name}/")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await watch(settings, folder, stop=stop, once=once, on_file=on_file,
                        documents=documents,
                        on_start=lambda text: console.print(text, markup=False,
                                                            highlight=False,
                                                            soft_wrap=True))
        except (KafkaError, OSError) as exc:
            console.print(f"[red]error:[/red] {exc!r}")
            return 2
        return 1 if rejected else 0

    quiet_gc()
    return uvloop.run(main())


__all__ = ["console", "run_publish", "run_watch"]
