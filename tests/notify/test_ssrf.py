"""The SSRF guard: private, loopback and link-local targets are refused before any
connection, the address connected to is the one checked, and allowed networks pass."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest

from services.notify.channels import http1
from services.notify.channels.webhook import WebhookSender
from services.notify.notification import Delivery
from services.notify.ssrf import is_public
from shared.subscriptions import Subscription, WebhookChannel

from .helpers import Receiver

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every socket the webhook client opens goes through http1.open_connection: record them."""
    calls: list[Any] = []
    real = http1.open_connection

    async def recording(ip: str, port: int, *args: Any, **kwargs: Any) -> Any:
        calls.append((ip, port))
        return await real(ip, port, *args, **kwargs)

    monkeypatch.setattr(http1, "open_connection", recording)
    return calls


def _sub(url: str) -> Subscription:
    return Subscription(name="t", channel=WebhookChannel(type="webhook", url=url), id="sub_t",
                        created_at=datetime.now(UTC), secrets=["whsec_" + "A" * 43])


def _delivery() -> Delivery:
    return Delivery("msg_x", "sub_t", [{"specversion": "1.0", "id": "e1", "type": "agreement.signed",
                                        "source": "/t", "data": {"title": "x"}}], [[]])


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook",
                                 "http://[::1]/x", "http://[::ffff:10.0.0.1]/x", "http://0.0.0.0/x"])
async def test_private_addresses_refused_without_connecting(url: str, connects: list[Any]) -> None:
    """A literal private/link-local/loopback URL is refused and no connection is attempted."""
    sender = WebhookSender([], timeout=1.0, concurrency=1)
    try:
        result = await sender.send(_sub(url), _delivery())
    finally:
        await sender.aclose()
    assert result.verdict == "permanent" and "refused" in (result.error or "")
    assert connects == []


async def test_name_resolving_inside_is_refused(connects: list[Any]) -> None:
    """A name whose DNS answer is 169.254.169.254 (or mixes in 10.0.0.1) is refused, no connection made."""
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.1"] if host == "mixed.example" else ["169.254.169.254"]

    sender = WebhookSender([], timeout=1.0, concurrency=1, resolver=resolver)
    try:
        for host in ("rebind.example", "mixed.example"):
            result = await sender.send(_sub(f"http://{host}/hook"), _delivery())
            assert result.verdict == "permanent" and "refused" in (result.error or ""), result
    finally:
        await sender.aclose()
    assert connects == []


async def test_connects_to_the_checked_address_keeping_host(connects: list[Any]) -> None:
    """The socket goes to the resolved, checked IP (no second lookup), with the original Host header."""
    receiver = await Receiver().start()
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    sender = WebhookSender(LOOPBACK, timeout=5.0, concurrency=1, resolver=resolver)
    try:
        result = await sender.send(_sub(f"http://hooks.example:{receiver.port}/in"), _delivery())
    finally:
        await sender.aclose()
        await receiver.stop()
    assert result.verdict == "ok", result
    assert lookups == ["hooks.example"]
    assert connects == [("127.0.0.1", receiver.port)]
    assert receiver.received[0].headers["Host"] == f"hooks.example:{receiver.port}"


def test_address_classes() -> None:
    """Public addresses pass; metadata, RFC 1918, loopback, link-local, CGNAT and reserved do not."""
    assert is_public(ipaddress.ip_address("93.184.215.14"))
    for bad in ("169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1",
                "0.0.0.0", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1"):
        assert not is_public(ipaddress.ip_address(bad)), bad
