"""Chat and other services through apprise URLs (Slack, Telegram, Matrix, ...).

apprise and its plugins (about 20 MB of memory) are loaded on the first apprise
delivery, not at start: most notify instances never make one."""

from __future__ import annotations

import asyncio
import warnings
from types import ModuleType

from shared.subscriptions import Subscription

from .. import rendering
from ..notification import Delivery
from . import Result

_apprise: ModuleType | None = None


def _load() -> ModuleType:
    """apprise, with its plugins loaded (once); one of them imports the deprecated
    ``imghdr``, a warning of theirs (not ours) that strict warning filters would turn into
    an error."""
    global _apprise
    if _apprise is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            apprise.Apprise().add("json://localhost")
        _apprise = apprise
    return _apprise


class AppriseSender:
    """Delivers through an apprise URL: the email text as the body, the title as the title."""

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "apprise"
        # the first one loads apprise's plugins off the event loop
        apprise = _apprise if _apprise is not None else await asyncio.to_thread(_load)
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


__all__ = ["AppriseSender"]
