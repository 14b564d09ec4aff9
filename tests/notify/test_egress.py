"""The egress policy across channels: a webhook and every apprise scheme that takes a host
(json, form, xml, ntfy, gotify, Mattermost) are refused at creation and at delivery for
every spelling of a non-public address, by one rule, while a real listener on loopback
counts what reaches it (nothing, when refused); apprise URLs cannot shape the request;
an apprise delivery's sockets are checked on the resolved address (a name resolving
inside, a redirect inside)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from devtools.testing import produce, read_topic, settings_for
from services.notify.channels import Result
from services.notify.channels.chat import AppriseSender
from services.notify.channels.webhook import WebhookSender
from services.notify.egress import EgressPolicy, channel_refusal, load_apprise, parse_schemes
from services.notify.notification import Delivery
from services.notify.settings import NotifySettings
from shared.settings import AntingSettings
from shared.subscriptions import AppriseChannel, Subscription, SubscriptionRequest, WebhookChannel
from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

from .helpers import ANTING_TOWN, agreement, encode, notify_settings, running
from .test_ssrf import _create, api

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
HOST_SCHEMES = "json,form,xml,ntfy,gotify,mmost"  # every checkable scheme whose host the URL names

# (host as written in the URL, what it is): spellings of non-public addresses
REFUSED_HOSTS = [
    ("127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("2130706433", "loopback, one number"),
    ("0x7f.1", "loopback, hex"), ("0177.0.0.1", "loopback, octal"), ("localhost", "loopback name"),
    ("[::ffff:127.0.0.1]", "IPv4-mapped loopback"), ("[::1]", "IPv6 loopback"),
    ("10.0.0.1", "private"), ("192.168.1.1", "private"), ("172.16.0.1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"), ("100.64.0.1", "CGNAT"),
]
# the loopback spellings among them: delivered once 127.0.0.0/8 is allowed
LOOPBACK_HOSTS = ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "localhost", "[::ffff:127.0.0.1]"]


def channel_url(kind: str, host: str, port: int) -> str:
    """A URL of channel ``kind`` (``webhook`` or an apprise scheme) to ``host``:``port``."""
    path = {"webhook": "in", "ntfy": "topic", "gotify": "token", "mmost": "3ccdd113474722377935511fc85d3dd4"}
    scheme = "http" if kind == "webhook" else kind
    return f"{scheme}://{host}:{port}/{path.get(kind, 'in')}"


CHANNELS = ["webhook", *HOST_SCHEMES.split(",")]


def ntfy_cloud(url: str) -> bool:
    """True for an ntfy URL apprise reads as topics on the public ntfy.sh (``ntfy://0x7f.1/topic``:
    "0x7f.1" is taken for a topic name, not a host): it contacts ntfy.sh only, so it is no case
    of a non-public address."""
    if not url.startswith("ntfy://"):
        return False
    return bool(load_apprise().Apprise.instantiate(url).mode == "cloud")


class Listener:
    """A raw HTTP server on 127.0.0.1 that answers 200 with ``answer`` to anything and
    counts every connection and request that reaches it. The default answer is what
    Telegram's API says, which its plugin checks (Slack's webhooks say ``ok``)."""

    def __init__(self, answer: bytes = b'{"ok":true}') -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []  # request heads
        self.bodies: list[bytes] = []

    async def __aenter__(self) -> Listener:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            self.bodies.append(await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                         % (len(self.answer), self.answer))
            await writer.drain()
        writer.close()


def _sub(url: str) -> Subscription:
    channel = WebhookChannel(type="webhook", url=url) if url.startswith("http") else AppriseChannel(
        type="apprise", url=url)
    return Subscription(name="t", channel=channel, id="sub_t", created_at=datetime.now(UTC),
                        secrets=["whsec_" + "A" * 43])


def _delivery() -> Delivery:
    return Delivery("msg_x", "sub_t", [{"specversion": "1.0", "id": "e1", "type": "agreement.signed",
                                        "source": "/t", "data": {"title": "x"}}], [[]])


async def _deliver(url: str, policy: EgressPolicy) -> Result:
    """One attempt through the channel's real sender, under ``policy``."""
    if url.startswith("http"):
        async def resolver(host: str, port: int) -> list[str]:
            return ["93.184.215.14"]  # never asked: every host here is a literal or localhost

        sender: Any = WebhookSender(list(policy.networks), timeout=5.0, concurrency=1, resolver=resolver)
    else:
        sender = AppriseSender(policy, timeout=5.0)
    try:
        return await sender.send(_sub(url), _delivery())
    finally:
        await sender.aclose()


# --- the matrix: channel × spelling, at creation and at delivery -------------------------


@pytest.mark.parametrize("kind", CHANNELS)
async def test_non_public_addresses_refused_at_creation(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spelling of a non-public address is 422 at creation for webhooks and for each
    apprise scheme that names a host (all allowed as schemes), with the address named."""
    monkeypatch.setenv("ANTING_NOTIFY_APPRISE_SCHEMES", HOST_SCHEMES)
    async with api(settings_for("127.0.0.1:9"), "", kafka=False) as client:  # no broker: 503 if passed
        for host, what in REFUSED_HOSTS:
            url = channel_url(kind, host, 8080)
            if ntfy_cloud(url):
                continue
            r = await client.post("/v1/subscriptions", headers={"authorization": "Bearer k1"}, json={
                "name": "x", "channel": {"type": "webhook" if kind == "webhook" else "apprise", "url": url}})
            assert r.status_code == 422, (url, what, r.text)
            [error] = r.json()["errors"]
            assert error["path"] == "channel.url", error
            message = error["message"]
            assert "not a public address" in message or "does not understand" in message, (url, message)


@pytest.mark.parametrize("kind", CHANNELS)
async def test_non_public_addresses_refused_at_delivery_and_never_reached(kind: str) -> None:
    """A stored subscription to each spelling is refused at delivery, permanently, by the
    creation rule; the loopback listener sees no connection at all."""
    policy = EgressPolicy((), parse_schemes(HOST_SCHEMES))
    async with Listener() as listener:
        for host, what in REFUSED_HOSTS:
            url = channel_url(kind, host, listener.port)
            if ntfy_cloud(url):
                continue  # never sent from a test: it would go to ntfy.sh
            result = await _deliver(url, policy)
            assert result.verdict == "permanent", (url, what, result)
            assert (result.error or "").startswith("refused: "), (url, result)
            assert result.error == f"refused: {channel_refusal(_sub(url).channel, policy)}", (url, result)
    assert listener.connections == 0 and listener.requests == []


@pytest.mark.parametrize("kind", CHANNELS)
async def test_allowed_network_is_delivered_exactly_when_creation_accepts(kind: str) -> None:
    """With 127.0.0.0/8 allowed, each loopback spelling creation accepts is delivered to the
    listener; one apprise cannot parse is refused in both places; 0.0.0.0 stays refused."""
    policy = EgressPolicy(LOOPBACK, parse_schemes(HOST_SCHEMES))
    async with Listener() as listener:
        delivered = 0
        for host in LOOPBACK_HOSTS:
            url = channel_url(kind, host, listener.port)
            if ntfy_cloud(url):
                continue
            why = channel_refusal(_sub(url).channel, policy)
            result = await _deliver(url, policy)
            if why is None:
                assert result.verdict == "ok", (url, result)
                delivered += 1
            else:
                assert "does not understand" in why and result.error == f"refused: {why}", (url, why, result)
        assert delivered == len(listener.requests) and delivered >= 1, kind
        if kind == "webhook":  # apprise parses fewer spellings (and refuses the rest outright)
            assert delivered == len(LOOPBACK_HOSTS)
        unspecified = await _deliver(channel_url(kind, "0.0.0.0", listener.port), policy)
        assert unspecified.verdict == "permanent" and delivered == len(listener.requests), unspecified


# --- what apprise URLs may say -----------------------------------------------------------


@pytest.mark.parametrize(("url", "named"), [
    ("json://hooks.example.com/?-X-Header=v&:key=v&method=DELETE", "-X-Header, :key, method="),
    ("json://hooks.example.com/?+X-Api-Key=secret", "+X-Api-Key"),
    ("form://hooks.example.com/?:message=other", ":message"),
    ("xml://hooks.example.com/?method=PUT", "method="),
    ("jsons://hooks.example.com/?-title", "-title"),
    ("discord://123/abcdef?:content=hi", ":content"),
])
def test_apprise_url_cannot_shape_the_request(url: str, named: str) -> None:
    """Method, header and payload-key parameters are refused, and named, even on a public host."""
    policy = EgressPolicy((), parse_schemes("json,jsons,form,xml,discord"))
    why = channel_refusal(AppriseChannel(type="apprise", url=url), policy)
    assert why is not None and "cannot choose them" in why and named in why, why


async def test_shaping_parameters_refused_at_delivery_too() -> None:
    """A stored json:// subscription with DELETE, a header and payload keys to an allowed listener
    is refused at delivery; nothing reaches the listener."""
    policy = EgressPolicy(LOOPBACK, parse_schemes("json"))
    async with Listener() as listener:
        result = await _deliver(f"json://127.0.0.1:{listener.port}/?-X-Header=v&:key=v&method=DELETE", policy)
        plain = await _deliver(f"json://127.0.0.1:{listener.port}/", policy)
    assert result.verdict == "permanent" and "cannot choose them" in (result.error or ""), result
    assert plain.verdict == "ok" and len(listener.requests) == 1
    assert listener.requests[0].startswith(b"POST / ")


def test_schemes_allowed_by_default_and_by_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default allows chat services (slack, discord, tgram, ntfy, gotify, mmost) but not generic
    json/form/xml; a scheme whose targets cannot be checked (mailto, mqtt) cannot be allowed."""
    default = NotifySettings().egress()
    for ok in ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "discord://123/abcdef",
               "tgram://123456789:abcdefg_hijklmnop/12345/", "ntfy://mytopic", "ntfys://ntfy.example.com/topic"):
        assert channel_refusal(AppriseChannel(type="apprise", url=ok), default) is None, ok
    for url in ("json://hooks.example.com/", "mailto://user:pw@gmail.com", "form://hooks.example.com/"):
        why = channel_refusal(AppriseChannel(type="apprise", url=url), default)
        assert why is not None and "ANTING_NOTIFY_APPRISE_SCHEMES" in why, why
    assert channel_refusal(AppriseChannel(type="apprise", url="nonsense://x"), default) is not None
    monkeypatch.setenv("ANTING_NOTIFY_APPRISE_SCHEMES", "slack,json")
    assert NotifySettings().egress().apprise_schemes == {"slack", "json"}
    monkeypatch.setenv("ANTING_NOTIFY_APPRISE_SCHEMES", "slack,mailto,mqtt")
    with pytest.raises(ValidationError, match="cannot be checked: mailto, mqtt"):
        NotifySettings()
    monkeypatch.setenv("ANTING_NOTIFY_APPRISE_SCHEMES", "none")
    assert NotifySettings().egress().apprise_schemes == frozenset()


def test_fixed_service_hosts_are_the_services() -> None:
    """A discord/telegram URL's "host" is a token; the host contacted is the service's, so a token
    that looks like an address is no address (and a self-hosted ntfy's host is checked)."""
    policy = NotifySettings().egress()
    assert channel_refusal(AppriseChannel(type="apprise", url="discord://2130706433/abcdef"), policy) is None
    why = channel_refusal(AppriseChannel(type="apprise", url="ntfy://169.254.169.254/topic"), policy)
    assert why is not None and "link-local" in why


# --- the socket guard: the resolved address, every connection ----------------------------


async def test_name_resolving_inside_is_refused_at_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """An apprise host that is a name passes creation (DNS is not asked then); at delivery it
    resolves to loopback and the connection is refused on that address; nothing arrives."""
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "rebind.example" else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    policy = EgressPolicy((), parse_schemes("json,ntfy"))
    async with Listener() as listener:
        for url in (f"json://rebind.example:{listener.port}/", f"ntfy://rebind.example:{listener.port}/topic"):
            assert channel_refusal(AppriseChannel(type="apprise", url=url), policy) is None
            result = await _deliver(url, policy)
            assert result.verdict == "permanent", (url, result)
            assert result.error == ("refused: 127.0.0.1 is loopback: not a public address, and not in "
                                    "ANTING_NOTIFY_ALLOW_NETWORKS (unset here)"), result
    assert listener.connections == 0


async def test_redirect_to_a_refused_address_is_refused_at_the_socket() -> None:
    """apprise's HTTP library follows redirects; an allowed receiver (127.0.0.2) that redirects
    to a refused one (127.0.0.1) gets the first request, the second is never connected."""
    async with Listener() as inside:
        hops: list[bytes] = []

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hops.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:%d/in\r\n"
                         b"content-length: 0\r\nconnection: close\r\n\r\n" % inside.port)
            await writer.drain()
            writer.close()

        outside = await asyncio.start_server(redirect, "127.0.0.2", 0)
        port = outside.sockets[0].getsockname()[1]
        try:
            policy = EgressPolicy([ipaddress.ip_network("127.0.0.2/32")], parse_schemes("json"))
            result = await _deliver(f"json://127.0.0.2:{port}/", policy)
        finally:
            outside.close()
    assert len(hops) == 1
    assert result.verdict == "permanent" and "127.0.0.1 is loopback" in (result.error or ""), result
    assert inside.connections == 0


# --- end to end: the API and the running service -----------------------------------------


@pytest.mark.kafka
async def test_apprise_to_loopback_refused_by_api_and_by_the_running_service(
        topics: AntingSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """With loopback not allowed, POST of json:// (and a DELETE with headers) to 127.0.0.1 is 422;
    the same subscriptions stored anyway (as before the rule) are dead at delivery, refused, and the
    listener counts no request, while a webhook beside them is refused the same way."""
    monkeypatch.setenv("ANTING_NOTIFY_APPRISE_SCHEMES", "json,form")
    async with Listener() as listener:
        urls = [f"json://127.0.0.1:{listener.port}/", f"json://0.0.0.0:{listener.port}/",
                f"json://127.0.0.1:{listener.port}/?-X-Header=v&:key=v&method=DELETE",
                f"form://2130706433:{listener.port}/"]
        async with api(topics, "", kafka=False) as client:
            for url in urls:
                r = await client.post("/v1/subscriptions", headers={"authorization": "Bearer k1"},
                                      json={"name": "x", "channel": {"type": "apprise", "url": url}})
                assert r.status_code == 422 and r.json()["detail"] == "apprise URL refused", (url, r.text)
            r = await _create(client, f"http://127.0.0.1:{listener.port}/in")
            assert r.status_code == 422 and r.json()["detail"] == "webhook URL refused", r.text
        settings = notify_settings(topics, allow_networks="", apprise_schemes="json,form")
        async with running(settings) as notifier:
            for url in urls:
                await notifier.store.create(SubscriptionRequest.model_validate_json(orjson.dumps(
                    {"name": "old", "channel": {"type": "apprise", "url": url}})))
            event = agreement([ANTING_TOWN])
            await produce(topics, topics.topic(ENRICHED_EVENTS), [encode(event)], [event.key])
            notes = await read_topic(topics, topics.topic(NOTIFICATIONS), expect=len(urls), timeout=30)
    lines = [orjson.loads(n.value or b"") for n in notes]
    assert {(line["channel"], line["outcome"]) for line in lines} == {("apprise", "dead")}, lines
    assert all(line["error"].startswith("refused: ") for line in lines), lines
    assert listener.connections == 0 and listener.requests == []
