"""Internationalised webhook hosts: checked, looked up and sent as their A-labels (IDNA
2008, UTS 46), at creation and at delivery, on real sockets — the DNS question, the
``Host`` header and the TLS name; a spelling that maps to an internal address is refused
in both places; a host IDNA cannot write is refused at creation."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

from services.notify.channels import http1
from services.notify.channels.http1 import WebhookClient
from services.notify.ssrf import GuardedResolver, literal_refusal, url_host

from .test_http1 import OK, Server
from .test_ssrf import LOOPBACK, Lookups, _deliver

IDN = "bücher.example"
A_LABEL = "xn--bcher-kva.example"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every socket the webhook client opens (through http1.open_connection), recorded."""
    calls: list[Any] = []
    real = http1.open_connection

    async def recording(ip: str, port: int, *args: Any, **kwargs: Any) -> Any:
        calls.append((ip, port))
        return await real(ip, port, *args, **kwargs)

    monkeypatch.setattr(http1, "open_connection", recording)
    return calls


class ToLoopback(Lookups):
    """A resolver that answers 127.0.0.1 for every name and remembers what it was asked."""

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return ["127.0.0.1"]


def test_creation_accepts_an_idn_host_and_refuses_what_idna_cannot_write() -> None:
    """An IDN name passes creation (names are checked at delivery); one with an emoji or an
    empty label is refused, saying why; mixed-case IDN hosts are one A-label."""
    assert literal_refusal(f"https://{IDN}/hook", []) is None
    assert url_host("https://Bücher.Example:8443/x") == A_LABEL
    assert url_host("http://日本語.jp/") == "xn--wgv71a119e.jp"
    for url in ("http://💩.la/", "http://a..bücher.example/"):
        why = literal_refusal(url, [])
        assert why is not None and "cannot be written in IDNA" in why, (url, why)


@pytest.mark.parametrize(("url", "address"), [("http://ＬＯＣＡＬＨＯＳＴ/", "127.0.0.1"),
                                              ("http://①②⑦.⓪.⓪.①/", "127.0.0.1"),
                                              ("http://１６９.２５４.１６９.２５４/", "169.254.169.254")])
async def test_idn_spelling_of_an_internal_address_is_refused_in_both_places(
        url: str, address: str, connects: list[Any]) -> None:
    """Fullwidth and circled spellings map (UTS 46) to an internal address: refused at creation
    and at delivery, by the same message, with no lookup and no connection."""
    why = literal_refusal(url, [])
    assert why is not None and address in why, why
    resolver = Lookups()
    result = await _deliver(url, [], resolver)
    assert result.verdict == "permanent" and result.error == f"refused: {why}", result
    assert connects == [] and resolver.asked == []


async def test_idn_webhook_is_delivered_as_its_a_labels(connects: list[Any]) -> None:
    """A webhook to http://bücher.example:port/ is delivered: DNS is asked for the A-label,
    the Host header carries it, and the socket goes to the checked address."""
    resolver = ToLoopback()
    async with Server(lambda n: OK) as srv:
        result = await _deliver(f"http://{IDN}:{srv.port}/in", LOOPBACK, resolver)
    assert result.verdict == "ok", result
    assert resolver.asked == [A_LABEL] and connects == [("127.0.0.1", srv.port)]
    head = srv.requests[0][0].decode("ascii")
    assert f"host: {A_LABEL}:{srv.port}" in head.split("\r\n"), head


async def test_idn_https_checks_the_certificate_of_the_a_label() -> None:
    """HTTPS to an IDN host sends the A-label as the TLS name: a certificate for it passes."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(A_LABEL).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    resolver = ToLoopback()
    async with Server(lambda n: OK, ssl_context=server_ctx) as srv:
        client = WebhookClient(GuardedResolver(LOOPBACK, resolver), 5.0, ssl_context=client_ctx)
        try:
            assert (await client.post(f"https://{IDN}:{srv.port}/in", b"x", [])).status == 200
        finally:
            await client.aclose()
    assert resolver.asked == [A_LABEL]
