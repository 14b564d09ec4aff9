"""The ``log`` channel for local use: one JSON line per notification, to stdout or
appended to a file (one ``write`` per line on an ``O_APPEND`` descriptor, so a
crash never leaves half a line and lines from several writers do not interleave).

A line is one line for any reader: JSON escapes CR, LF and every other control
character in the event's strings, and :func:`json_line` escapes the line separators
JSON may leave as they are (NEL, U+2028, U+2029), at which Python's
``str.splitlines`` and some other line readers also break.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import orjson

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


class LogSender:
    def __init__(self, default_path: str = "-") -> None:
        self.default_path = default_path
        self._fds: dict[str, int] = {}

    def _fd(self, path: str) -> int:
        if path == "-":
            return sys.stdout.fileno()
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self._fds[path]

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
            os.write(self._fd(sub.channel.path or self.default_path), line)
        except OSError as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return Result("ok")

    async def aclose(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


__all__ = ["LogSender", "json_line"]
