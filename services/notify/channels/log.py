"""The ``log`` channel for local use: one JSON line per notification, to stdout or
appended to a file (one ``write`` per line on an ``O_APPEND`` descriptor, so a
crash never leaves half a line and lines from several writers do not interleave).

Where a subscription may write: a subscription names a file, never a path (the
pattern of ``shared.subscriptions.LogFileName``), and the file lives in the one
directory the operator configures (``ANTING_NOTIFY_LOG_DIR``; a tenant other than admin
gets its own directory in it). A name that is a
symlink resolving outside that directory is refused when the subscription is created
(422, :func:`log_file_refusal`) and again at every open, since a symlink can appear
after the subscription did. Without that, anyone allowed to subscribe could make
notify append to any file it can write.

A line is one line for any reader: JSON escapes CR, LF and every other control
character in the event's strings, and :func:`json_line` escapes the line separators
JSON may leave as they are (NEL, U+2028, U+2029), at which Python's
``str.splitlines`` and some other line readers also break.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson

from shared.access import ADMIN_TENANT
from shared.subscriptions import Subscription

from ..notification import Delivery
from ..rendering import cloudevent
from . import Result

# NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR in UTF-8, and their JSON escapes (the
# same string to a JSON reader); in valid UTF-8 these bytes mean nothing else
_SEPARATORS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def json_line(doc: object) -> bytes:
    """``doc`` as one line of JSON ending in LF, with no byte any line reader breaks at
    before that LF (see the module)."""
    line = orjson.dumps(doc)
    if b"\xc2\x85" in line or b"\xe2\x80" in line:
        for raw, escaped in _SEPARATORS:
            line = line.replace(raw, escaped)
    return line + b"\n"


class LogFileRefused(Exception):
    """A subscription's file name resolves out of the log directory (or to a directory)."""


def _inside(directory: Path, name: str) -> tuple[Path, str | None]:
    """(where ``directory/name`` resolves, symlinks followed; why it may not be written
    or None)."""
    root = directory.resolve()
    real = (root / name).resolve()
    if real.parent != root and root not in real.parents:
        return real, f"{name!r} is a symlink out of the log directory"
    if real == root or real.is_dir():
        return real, f"{name!r} is a directory"
    return real, None


def tenant_log_dir(log_dir: str | Path, tenant: str) -> Path:
    """Where ``tenant``'s log subscriptions' files live: ``log_dir`` itself for the admin
    tenant (the keys of ``ANTING_API_KEYS``, and no keys at all), ``log_dir/<tenant>``
    for the others, so that no tenant can append to a file another one reads. Tenant
    names are file names already (``shared.access.check_tenant``)."""
    return Path(log_dir) if tenant == ADMIN_TENANT else Path(log_dir) / tenant


def log_file_refusal(directory: str | Path, name: str | None) -> str | None:
    """Why a log subscription may not write to file ``name`` in ``directory`` (a symlink
    resolving outside it, or a directory), or None when it may (stdout, when ``name`` is
    None, always may). ``name`` has already passed the ``LogFileName`` pattern."""
    if name is None:
        return None
    return _inside(Path(directory), name)[1]


class LogSender:
    """Appends notifications to ``<its tenant's log dir>/<name>`` (a subscription's
    ``channel.path``; :func:`tenant_log_dir`)
    or, for a subscription that names no file, to ``default_path`` (the operator's
    ``ANTING_NOTIFY_LOG_PATH``; ``-`` is stdout). ``log_dir`` is created on first use."""

    def __init__(self, log_dir: str | Path = ".local/notify-logs", default_path: str = "-") -> None:
        self.log_dir = Path(log_dir)
        self.default_path = default_path
        self._fds: dict[str, int] = {}

    def _fd(self, tenant: str, name: str | None) -> int:
        """The descriptor for a subscription's file name in its tenant's directory (None:
        the default path).
        Raises :class:`LogFileRefused` for a name resolving out of ``log_dir``, and
        :class:`OSError` when the file cannot be opened."""
        if name is None:
            if self.default_path == "-":
                return sys.stdout.fileno()
            key, target = "", Path(self.default_path)
        else:
            directory = tenant_log_dir(self.log_dir, tenant)
            key = f"{tenant}/{name}"
            if key in self._fds:
                return self._fds[key]
            directory.mkdir(parents=True, exist_ok=True)
            target, why = _inside(directory, name)
            if why:
                raise LogFileRefused(why)
        if key not in self._fds:
            # O_NOFOLLOW: the checked path is the one opened, even if a symlink appears
            # there between the check and the open
            self._fds[key] = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        return self._fds[key]

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "log"
        line = json_line({
            "at": datetime.now(UTC).isoformat(),
            "idempotency_key": delivery.key,
            "subscription": sub.id,
            "event": cloudevent(delivery),
            "reason": delivery.all_reasons(),
        })
        try:
            os.write(self._fd(sub.tenant, sub.channel.path), line)
        except LogFileRefused as exc:  # a symlink out of the directory: no retry mends it
            return Result("permanent", None, str(exc))
        except OSError as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return Result("ok")

    async def aclose(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


__all__ = ["LogFileRefused", "LogSender", "json_line", "log_file_refusal", "tenant_log_dir"]
