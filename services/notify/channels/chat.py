"""Chat and other services through apprise URLs (Slack, Telegram, ntfy, ...), inside the
egress policy (:mod:`..egress`): the URL is checked again before each attempt, and the
attempt runs in a thread whose every socket is checked on the address it reaches.

apprise and its plugins (about 20 MB of memory) are loaded on the first apprise
delivery, not at start: most notify instances never make one."""

from __future__ import annotations

import asyncio

from shared.subscriptions import Subscription

from .. import rendering
from ..egress import (
    EgressPolicy,
    Refused,
    apprise_loaded,
    apprise_service,
    guarded_sockets,
    load_apprise,
)
from ..notification import Delivery
from . import Result


class AppriseSender:
    """Delivers through an apprise URL: the email text as the body, the title as the title.
    ``timeout`` (seconds) caps the plugin's connect and read timeouts, which a URL may
    raise (``cto=``, ``rto=``)."""

    def __init__(self, policy: EgressPolicy | None = None, timeout: float = 15.0) -> None:
        self.policy = policy or EgressPolicy()
        self.timeout = timeout

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        assert sub.channel.type == "apprise"
        if not apprise_loaded():  # the first one loads apprise's plugins off the event loop
            await asyncio.to_thread(load_apprise)
        try:
            # the creation rule again: the policy may have changed since, and a subscription
            # stored before the rule existed was never checked
            plugin = apprise_service(sub.channel.url, self.policy)
        except Refused as exc:
            return Result("permanent", None, f"refused: {exc}")
        plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), self.timeout)
        plugin.socket_read_timeout = min(float(plugin.socket_read_timeout), self.timeout)
        body = rendering.text(delivery)
        # one line, whatever the headline held (a title becomes a subject or a header
        # line in several of apprise's services); the text's lines are one line each too
        title = rendering.title(delivery)
        networks = self.policy.networks

        def attempt() -> tuple[bool, str | None]:
            # the plugin itself, not Apprise.notify, which may hand it to a thread pool
            # of its own, where the guard (per thread) would not watch it
            with guarded_sockets(networks) as guard:
                ok = bool(plugin.notify(body=body, title=title))
            return ok, guard.refused

        try:
            # apprise's own plugins block; keep them off the event loop
            ok, refused = await asyncio.to_thread(attempt)
        except Exception as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        if refused is not None:
            return Result("permanent", None, f"refused: {refused}")
        # apprise reports only success or failure: a failure may be transient
        return Result("ok") if ok else Result("retry", None, "apprise reported a failure")

    async def aclose(self) -> None:
        return None


__all__ = ["AppriseSender"]
