"""Chat and other services through apprise URLs (Slack, Telegram, ntfy, ...), inside the
egress policy (:mod:`..egress`): the URL is checked again before each attempt, and the
attempt runs in a thread whose every socket is checked on the address it reaches.

The message is plain text, and a publisher's text must not become markup in a chat. It
is escaped here for the format the plugin sends in (``resolve_format``: HTML for
Telegram, Markdown when a URL asks for ``format=markdown``) and handed over declared as
that format, so apprise converts nothing; sent as text, Slack's plugin escapes ``&<>``
itself, and for Discord and Mattermost, which render Markdown in any message, the text
is Markdown-escaped. In every chat, mass mentions (``@everyone``, ``@channel``,
``@here``, ``@all``) are broken so that they notify no one. (Called on the plugin
directly, apprise 2.2 does not escape declared text for an HTML service: Telegram
would render a publisher's ``<a href>``.)

apprise and its plugins (about 20 MB of memory) are loaded on the first apprise
delivery, not at start: most notify instances never make one."""

from __future__ import annotations

import asyncio
import html

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

# services that render Markdown in every message, plain text included
_RENDER_MARKDOWN = frozenset({"discord", "mmost", "mmosts"})
# services where @everyone, @channel, @here or @all notify a whole room
_MASS_MENTIONS = frozenset({"slack", "discord", "mmost", "mmosts"})
# apprise's Discord plugin makes a ping of every "@word" and "@<digits>" in a body it
# sends as an embed (format=markdown): there, every "@" of the text is broken
_EVERY_AT = frozenset({"discord"})


def chat_text(text: str, schema: str, sent_as: str) -> str:
    """``text`` (plain) as handed to apprise for the service ``schema``, whose plugin sends
    it as ``sent_as`` (``"text"``, ``"html"`` or ``"markdown"``: apprise's
    ``NotifyFormat`` value): escaped for that format, or for Markdown where the service
    renders it in plain text too, with mass mentions broken in chats (see the module)."""
    if schema in _EVERY_AT:
        text = text.replace("@", "@" + rendering.ZERO_WIDTH_SPACE)
    elif schema in _MASS_MENTIONS:
        text = rendering.no_mass_mentions(text)
    if sent_as == "html":
        return html.escape(text, quote=False)
    if sent_as == "markdown" or schema in _RENDER_MARKDOWN:
        return rendering.markdown_escaped(text)
    return text


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
            schema, plugin = apprise_service(sub.channel.url, self.policy)
        except Refused as exc:
            return Result("permanent", None, f"refused: {exc}")
        plugin.socket_connect_timeout = min(float(plugin.socket_connect_timeout), self.timeout)
        plugin.socket_read_timeout = min(float(plugin.socket_read_timeout), self.timeout)
        # the format the plugin sends in (its own, or the URL's format=), which the text is
        # escaped for and declared as
        sent_as = plugin.resolve_format(load_apprise().common.NotifyFormat.TEXT)
        # one line, whatever the headline held (a title becomes a subject or a header
        # line in several of apprise's services); the text's lines are one line each too
        body = chat_text(rendering.text(delivery), schema, sent_as.value)
        title = chat_text(rendering.title(delivery), schema, sent_as.value)
        networks = self.policy.networks

        def attempt() -> tuple[bool, str | None]:
            # the plugin itself, not Apprise.notify, which may hand it to a thread pool
            # of its own, where the guard (per thread) would not watch it
            with guarded_sockets(networks) as guard:
                ok = bool(plugin.notify(body=body, title=title, body_format=sent_as))
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


__all__ = ["AppriseSender", "chat_text"]
