"""Process supervision for ``anting run``: start children, restart them when they die,
stop them all in order, and let none outlive the supervisor.

Each child's output is read line by line and printed with its label (``Printer``).
A child that exits is restarted with exponential backoff. Every child sits in its own
session (a Ctrl-C at the terminal reaches only the supervisor, which decides the stop
order) and asks the kernel for a parent-death signal, so a ``kill -9`` of the
supervisor still takes the children with it; ``stop_with_parent`` does the same for
the supervisor and whatever started it (``make run``). Linux only where it matters
(prctl); elsewhere the parent-death signal is silently not set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devtools.console import Printer

__all__ = [
    "Child",
    "Supervisor",
    "child_setup",
    "last_lines",
    "parent_death_signal",
    "stop_with_parent",
]

PR_SET_PDEATHSIG = 1  # prctl(2), Linux


def last_lines(path: Path, n: int = 20) -> list[str]:
    """The last ``n`` lines of the text file ``path`` (read from its last 64 KiB, so a
    log of any size costs the same), without line ends; ``[]`` when it is missing or
    empty. Undecodable bytes are replaced; it never raises for a file that cannot be
    read."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    if size > 64 * 1024 and lines:
        lines = lines[1:]  # the first line read is likely cut
    return lines[-n:]


def parent_death_signal(sig: signal.Signals) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only;
    elsewhere nothing happens, and it never raises)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def child_setup() -> None:
    """A ``preexec_fn``: runs in each child before exec. It dies with us (SIGTERM), and
    sits in its own session so that a Ctrl-C at the terminal reaches only us and we
    decide the stop order."""
    parent_death_signal(signal.SIGTERM)
    os.setsid()


def stop_with_parent() -> None:
    """SIGTERM to ourselves when the process that started us dies: a ``kill -9`` of
    ``make run`` leaves ``anting run`` re-parented and still running otherwise, with
    the broker, the services and Prometheus holding their ports. Our SIGTERM handler
    then stops everything in order, as Ctrl-C does."""
    parent = os.getppid()
    parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the kernel was asked: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Child:
    """A supervised process: ``argv`` run with ``env`` (the whole environment), its
    output printed under ``label``; restarted with exponential backoff when it dies,
    unless ``restart`` is false. ``pids`` lists every process it has been. A label
    starting with ``kafka-`` is a broker: it is stopped last."""

    label: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    on_spawn: Callable[[int], None] | None = None
    """called with the PID of each process it becomes (a broker's PID file, say)"""
    output: Path | None = None
    """a file its output is appended to instead of printed (a JVM's start-up chatter)"""
    logs: tuple[Path, ...] = ()
    """files whose last lines are printed when it dies (a broker's ``server.log``): why it
    died is there, and ``output`` is shown too when set"""
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        """The current process's PID (``None`` before the first start)."""
        return self.proc.pid if self.proc else None


class Supervisor:
    """Starts ``Child`` processes in ``cwd``, restarts them (backoff 1 s, doubling up to
    ``max_backoff`` seconds, back to 1 s after a minute of running), and stops them.

    ``stopping`` is set once a stop has begun; the stack's signal handlers set it too.
    """

    def __init__(self, printer: Printer, *, cwd: Path, max_backoff: float = 30.0) -> None:
        self.out = printer
        self.cwd = cwd
        self.max_backoff = max_backoff
        self.children: list[Child] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()

    async def _spawn(self, child: Child) -> None:
        # a local file, opened once per start: not worth a thread
        out = open(child.output, "ab") if child.output else None  # noqa: ASYNC230
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv, env=child.env, cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=out or asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, preexec_fn=child_setup, limit=4 * 1024 * 1024,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own descriptor now
        child.pids.append(child.proc.pid)
        if child.on_spawn is not None:
            child.on_spawn(child.proc.pid)

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:  # its output goes to a file
            return
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the limit: show what fits
                line = await proc.stdout.read(64 * 1024)
            if not line:
                return
            self.out.child_line(child.label, line.decode(errors="replace"))

    async def start(self, child: Child) -> None:
        """Start ``child`` and watch it from now on. Raises ``OSError`` when its
        program cannot be started (not found, not executable)."""
        await self._spawn(child)
        self.children.append(child)
        self.out.say("run", f"started {child.label} (pid {child.pid})")
        self.tasks.append(asyncio.create_task(self._watch(child), name=f"watch-{child.label}"))

    async def _watch(self, child: Child) -> None:
        """Wait for the child to exit; restart it unless we are stopping."""
        backoff = 1.0
        while True:
            proc = child.proc
            assert proc is not None
            started = time.monotonic()
            pump = asyncio.create_task(self._pump(child, proc))
            rc = await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pump, 2)
            if self.stopping.is_set() or not child.restart:
                if not self.stopping.is_set():
                    self.out.say("run", f"{child.label} exited with code {rc}", "yellow")
                    self.show_last_lines(child)
                return
            if time.monotonic() - started > 60:
                backoff = 1.0  # it ran for a while: a fresh failure, not a crash loop
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
            self.out.say("run", f"{child.label} (pid {proc.pid}) {how}; restarting in {backoff:.0f}s",
                         "bold red")
            self.show_last_lines(child)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return
            backoff = min(backoff * 2, self.max_backoff)
            try:
                await self._spawn(child)
            except OSError as exc:
                self.out.say("run", f"could not restart {child.label}: {exc}", "bold red")
                continue
            child.restarts += 1
            self.out.say("run", f"restarted {child.label} (pid {child.pid}, restart #{child.restarts})",
                         "bold yellow")

    def show_last_lines(self, child: Child, n: int = 20) -> None:
        """Print the last ``n`` lines of each of ``child``'s log files and of its output
        file, under its label; files that are missing or empty are skipped."""
        files = [*child.logs, *([child.output] if child.output else [])]
        for path in files:
            lines = last_lines(path, n)
            if lines:
                self.out.say(child.label, f"last {len(lines)} lines of {path}:", "yellow")
                for line in lines:
                    self.out.say(child.label, line)

    def kill_all(self) -> None:
        """SIGKILL every child's session now (a second Ctrl-C)."""
        for c in self.children:
            if c.proc and c.proc.returncode is None:
                self.out.say("run", f"killing {c.label} (pid {c.pid})", "red")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)

    async def stop_all(self, timeout: float = 25.0) -> None:
        """SIGTERM every child (services, then Prometheus, then the brokers: the services
        commit and close on a cluster that still runs, and the brokers all at once, so
        that none waits for a quorum the others' stop has broken), SIGKILL one that has
        not exited after ``timeout`` seconds, then whatever is left in each child's
        session."""
        self.stopping.set()

        def broker(c: Child) -> bool:
            return c.label.startswith("kafka-")

        for group in (
            [c for c in self.children if c.label != "prometheus" and not broker(c)],
            [c for c in self.children if c.label == "prometheus"],
            [c for c in self.children if broker(c)],
        ):
            for c in group:
                if c.proc and c.proc.returncode is None:
                    self.out.say("run", f"stopping {c.label} (pid {c.pid})")
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.send_signal(signal.SIGTERM)
            for c in group:
                if c.proc is None:
                    continue
                try:
                    await asyncio.wait_for(c.proc.wait(), timeout)
                except TimeoutError:
                    self.out.say("run", f"{c.label} did not stop in {timeout:.0f}s: killing it", "red")
                # the child's session may hold processes of its own: none may outlive it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()
        for t in self.tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(t, 5)
