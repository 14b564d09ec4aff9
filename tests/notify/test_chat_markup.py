"""A publisher's text in chats: sent through each chat service's real apprise plugin to a
real local listener standing in for the service, markup in an event's headline and
summary reaches the chat as text (escaped for the service's format) and mass mentions
are broken, so they notify no one; a generic JSON receiver gets the text as it is."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import orjson
import pytest

from services.notify.channels.chat import AppriseSender
from services.notify.egress import EgressPolicy, load_apprise, parse_schemes
from services.notify.notification import Delivery
from services.notify.rendering import ZERO_WIDTH_SPACE, markdown_escaped, no_mass_mentions

from .test_egress import Listener, _sub

HOSTILE = ("**Pwned** <!channel> <!here> @everyone @here @channel @all <b>bold</b> "
           "[click](http://evil.example) <@123> ||spoiler|| `code` & <a href=x>y</a>")
MENTIONS = ("@everyone", "@here", "@channel", "@all")


def _delivery() -> Delivery:
    event = {"specversion": "1.0", "id": "e1", "type": "conference.announcement", "source": "/t",
             "data": {"headline": HOSTILE, "summary": HOSTILE}}
    return Delivery("msg_x", "sub_t", [event], [[]])


@pytest.fixture
def services_here(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the fixed hosts of Slack, Discord and Telegram at a loopback listener: the plugins
    build their requests as for the real services, and the egress policy checks the listener."""
    listener = Listener()
    load_apprise()
    from apprise.plugins.discord import NotifyDiscord
    from apprise.plugins.slack import NotifySlack
    from apprise.plugins.telegram import NotifyTelegram

    def at(port: int) -> None:
        base = f"http://127.0.0.1:{port}"
        monkeypatch.setattr(NotifySlack, "webhook_url", f"{base}/services")
        monkeypatch.setattr(NotifyDiscord, "notify_url", f"{base}/api/webhooks")
        monkeypatch.setattr(NotifyTelegram, "notify_url", f"{base}/bot")

    return listener, at


async def _send(url: str) -> None:
    policy = EgressPolicy([ipaddress.ip_network("127.0.0.0/8")],
                          parse_schemes("slack,discord,tgram,mmost,ntfy,json"))
    sender = AppriseSender(policy, timeout=5.0)
    result = await sender.send(_sub(url), _delivery())
    assert result.verdict == "ok", (url, result)


def _texts(payload: Any) -> list[str]:
    """Every string in a JSON payload."""
    if isinstance(payload, str):
        return [payload]
    if isinstance(payload, dict):
        return [s for v in payload.values() for s in _texts(v)]
    if isinstance(payload, list):
        return [s for v in payload for s in _texts(v)]
    return []


def _no_mentions(text: str) -> None:
    for mention in MENTIONS:
        assert mention not in text and mention.upper() not in text, (mention, text)
        assert f"@{ZERO_WIDTH_SPACE}{mention[1:]}" in text, (mention, text)


async def test_slack_gets_plain_text_with_its_control_characters_escaped(services_here: Any) -> None:
    """Slack: sent as plain text (not mrkdwn), & < > escaped (no <!channel>, <@id>, <url|text>),
    mass mentions broken."""
    listener, at = services_here
    listener.answer = b"ok"  # what a Slack webhook answers
    async with listener:
        at(listener.port)
        await _send("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    [body] = listener.bodies
    payload = orjson.loads(body)
    text = "\n".join(_texts(payload))
    assert "<" not in text and "&lt;!channel&gt;" in text and "&lt;@123&gt;" in text, text
    assert payload.get("mrkdwn") is not True and '"type": "mrkdwn"' not in body.decode(), payload
    _no_mentions(text)


async def test_discord_gets_markdown_escaped(services_here: Any) -> None:
    """Discord renders Markdown in any message: bold, links, spoilers, code and <@id> arrive
    backslash-escaped, and @everyone/@here are broken."""
    listener, at = services_here
    async with listener:
        at(listener.port)
        await _send("discord://123/abcdef")
    [body] = listener.bodies
    text = "\n".join(_texts(orjson.loads(body)))
    assert "\\*\\*Pwned\\*\\*" in text and "\\[click\\]\\(http://evil.example\\)" in text, text
    assert f"\\<@{ZERO_WIDTH_SPACE}123\\>" in text and "\\|\\|spoiler\\|\\|" in text, text
    assert "**Pwned**" not in text and re.search(r"(?<!\\)<", text) is None, text
    _no_mentions(text)


async def test_telegram_gets_html_escaped(services_here: Any) -> None:
    """Telegram is sent HTML: the publisher's tags arrive escaped, not as markup."""
    listener, at = services_here
    async with listener:
        at(listener.port)
        await _send("tgram://123456789:abcdefg_hijklmnop/12345/")
    payload = orjson.loads(listener.bodies[-1])
    assert payload["parse_mode"] == "HTML", payload
    assert "&lt;b&gt;bold&lt;/b&gt;" in payload["text"] and "<b>bold</b>" not in payload["text"], payload


async def test_mattermost_gets_markdown_escaped_and_no_mass_mentions() -> None:
    """Mattermost (self-hosted, so the listener is the server): Markdown escaped, @all,
    @channel, @here broken."""
    async with Listener() as listener:
        await _send(f"mmost://127.0.0.1:{listener.port}/3ccdd113474722377935511fc85d3dd4")
    text = "\n".join(_texts(orjson.loads(listener.bodies[0])))
    assert "\\*\\*Pwned\\*\\*" in text and "\\<b\\>bold\\</b\\>" in text, text
    _no_mentions(text)


async def test_generic_json_receives_the_text_as_written() -> None:
    """json:// is a payload, not a chat: the text arrives as the publisher wrote it."""
    async with Listener() as listener:
        await _send(f"json://127.0.0.1:{listener.port}/")
    payload = orjson.loads(listener.bodies[0])
    assert HOSTILE in payload["message"] and payload["title"] == HOSTILE, payload


def test_escapes() -> None:
    """The two pure functions: Markdown escaping and broken mass mentions (words only)."""
    assert markdown_escaped("a*b_c`d~e|f<g>h[i](j)#k\\l") == "a\\*b\\_c\\`d\\~e\\|f\\<g\\>h\\[i\\]\\(j\\)\\#k\\\\l"
    broken = no_mass_mentions("@All hi @here, x@everyone @herewith @@channel")
    assert broken == (f"@{ZERO_WIDTH_SPACE}All hi @{ZERO_WIDTH_SPACE}here, x@everyone @herewith "
                      f"@@{ZERO_WIDTH_SPACE}channel")


async def test_a_url_asking_for_markdown_still_gets_text(services_here: Any) -> None:
    """A URL that asks for format=markdown gets the text Markdown-escaped, and what apprise makes
    of it in the service's dialect is still text: Slack gets no <!channel> or <url|text>,
    Discord's embed no markup and no pings (its plugin pings every @word it finds), Telegram's
    Markdown no link."""
    listener, at = services_here
    listener.answer = b"ok"
    async with listener:
        at(listener.port)
        await _send("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ?format=markdown")
        slack = orjson.loads(listener.bodies[-1])
        listener.answer = b'{"ok":true}'
        await _send("discord://123/abcdef?format=markdown")
        discord = orjson.loads(listener.bodies[-1])
        await _send("tgram://123456789:abcdefg_hijklmnop/12345/?format=markdown")
        telegram = orjson.loads(listener.bodies[-1])
    slack_text = "\n".join(_texts(slack))
    assert "<" not in slack_text and "&lt;!channel&gt;" in slack_text, slack_text
    _no_mentions(slack_text)
    embed = discord["embeds"][0]
    assert "allow_mentions" not in discord and "content" not in discord, discord
    for text in (embed["title"], embed["description"]):
        assert "**Pwned**" not in text and re.search(r"(?<!\\)[<\[]", text) is None, text
        assert "@" + ZERO_WIDTH_SPACE + "123" in text and "@everyone" not in text, text
    assert telegram["parse_mode"].lower().startswith("markdown"), telegram
    assert "[click](" not in telegram["text"] and "\\[click\\]" in telegram["text"], telegram
