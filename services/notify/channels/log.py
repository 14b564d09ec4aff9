"""The ``log`` channel for local use: one JSON line per notification, to stdout or
appended to a file (one ``write`` per line on an ``O_APPEND`` descriptor, so a
crash never leaves half a line and lines from several writers do not interleave).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import orjson

from shared.subscriptions import Subscription

from ..notification import Delivery
from . import Result


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
        line = orjson.dumps({
            "at": datetime.now(UTC).isoformat(),
            "idempotency_key": delivery.key,
            "subscription": sub.id,
            "event": delivery.cloudevent(),
            "reason": delivery.all_reasons(),
        }) + b"\n"
        try:
            os.write(self._fd(sub.channel.path or self.default_path), line)
        except OSError as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return Result("ok")

    async def aclose(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
