"""What ``anting publish`` runs: files or stdin with a progress bar and a summary, or
watch mode until Ctrl-C. Returns the exit code (0 all accepted, 1 some rejected, 2 error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import uvloop
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

from services.ingest.files import FILE_PRODUCER, Summary, publish_file
from services.ingest.settings import IngestSettings
from shared import logs
from shared import settings as settings_mod
from shared.kafka import make_producer
from shared.runtime import quiet_gc

console = Console(stderr=True)
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


async def _publish(settings: IngestSettings, files: list[str], quiet: bool) -> int:
    producer = make_producer(settings, **FILE_PRODUCER)
    try:
        await asyncio.wait_for(producer.start(), 15)
    except (KafkaError, OSError, TimeoutError) as exc:
        console.print(f"[red]error:[/red] cannot reach the broker at "
                      f"{settings.kafka.bootstrap_servers}: {exc or type(exc).__name__}")
        with contextlib.suppress(Exception):
            await producer.stop()
        return 2
    summaries: list[Summary] = []
    errors = 0
    try:
        with _progress(quiet) as progress:
            for name in files:
                total = _size(name)
                task = progress.add_task(name, total=total, counts="")

                def update(s: Summary, task: TaskID = task) -> None:
                    progress.update(task, completed=s.bytes_read, counts=_counts(s))

                try:
                    summary = await publish_file(settings, name, producer=producer,
                                                 on_acked=update)
                except OSError as exc:
                    console.print(f"[red]error:[/red] {name}: {exc.strerror or exc}")
                    errors += 1
                    continue
                progress.update(task, completed=total or summary.bytes_read)
                summaries.append(summary)
    except KafkaError as exc:
        console.print(f"[red]error:[/red] the broker did not acknowledge: {exc!r}")
        return 2
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 30)
    if not quiet or errors:
        console.print(_summary_table(summaries))
    accepted = sum(s.accepted for s in summaries)
    rejected = sum(s.rejected for s in summaries)
    console.print(f"{accepted} accepted, {rejected} rejected"
                  + (" (see `anting dlq list`)" if rejected else "")
                  + (f", {errors} file(s) unreadable" if errors else ""))
    if errors:
        return 2
    return 1 if rejected else 0


def run_publish(files: list[str], *, quiet: bool = False) -> int:
    settings = settings_mod.load(IngestSettings)
    logs.configure("ingest", "WARNING")
    quiet_gc()
    return uvloop.run(_publish(settings, files, quiet))


def run_watch(folder: Path, *, once: bool = False) -> int:
    from services.ingest.watch import watch

    settings = settings_mod.load(IngestSettings)
    logs.configure("ingest", settings.log_level)
    rejected = 0

    def on_file(file: Path, summary: Summary | None, where: Path) -> None:
        nonlocal rejected
        if summary is not None:
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
