"""Chat and other services through apprise URLs (Slack, Telegram, Matrix, ...)."""

from __future__ import annotations

import asyncio
import warnings

import apprise

from shared.subscriptions import Subscription

from .. import rendering
from ..notification import Delivery
from . import Result

_loaded = False


def _load_plugins() -> None:
    """Load apprise's plugins once; one of them imports the deprecated ``imghdr``,
    a warning of theirs (not ours) that strict warning filters would turn into an error."""
    global _loaded
    if not _loaded:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            apprise.Apprise().add("json://localhost")
        _loaded = True


class AppriseSender:
    def __init__(self) -> None:
        _load_plugins()

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "apprise"
        ap = apprise.Apprise()
        if not ap.add(sub.channel.url):
            return Result("permanent", None, "apprise does not understand this URL")
        body = rendering.text(delivery)
        # one line, whatever the headline held (a title becomes a subject or a header
        # line in several of apprise's services); the text's lines are one line each too
        title = rendering.title(delivery)
        try:
            # apprise's own plugins block; keep them off the event loop
            ok = await asyncio.to_thread(ap.notify, body=body, title=title)
        except Exception as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        # apprise reports only success or failure: a failure may be transient
        return Result("ok") if ok else Result("retry", None, "apprise reported a failure")

    async def aclose(self) -> None:
        return None
