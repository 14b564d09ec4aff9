"""The SSRF guard: one rule decides at subscription creation (API and CLI) and at
delivery. Internal addresses in any spelling a resolver or browser accepts are
refused in both places, before any connection; the address connected to is the
one checked; allowed networks and public addresses pass in both places."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import REPO_ROOT
from devtools.testing import env_for, settings_for
from services.notify.api import create_app
from services.notify.channels import http1
from services.notify.channels.webhook import WebhookSender
from services.notify.notification import Delivery
from services.notify.ssrf import (
    GuardedResolver,
    RefusedAddress,
    fixed_addresses,
    is_public,
    literal_refusal,
    url_host,
)
from services.notify.store import SubscriptionStore
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import Subscription, WebhookChannel

from .helpers import Receiver, notify_settings

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]
KEY = {"authorization": "Bearer k1"}
PUBLIC_ANSWER = "93.184.215.14"  # what the test resolver says of every name: it must not be asked

# (URL, the address it stands for): alternative encodings of internal addresses
INTERNAL = [
    ("http://127.0.0.1/", "127.0.0.1"),
    ("http://2130706433/", "127.0.0.1"),  # one decimal number
    ("http://0x7f000001/", "127.0.0.1"),  # one hex number
    ("http://0X7F000001/", "127.0.0.1"),
    ("http://017700000001/", "127.0.0.1"),  # one octal number
    ("http://0177.0.0.1/", "127.0.0.1"),  # octal part
    ("http://00000177.00000000.00000000.00000001/", "127.0.0.1"),
    ("http://0x7f.0x0.0x0.0x1/", "127.0.0.1"),  # hex parts
    ("http://0x0000007f.1/", "127.0.0.1"),
    ("http://127.1/", "127.0.0.1"),  # a.b: b is 24 bits
    ("http://127.0.1/", "127.0.0.1"),  # a.b.c: c is 16 bits
    ("http://127.000.000.001/", "127.0.0.1"),
    ("http://127.0.0.1./", "127.0.0.1"),  # trailing dot
    ("http://127.127.127.127/", "127.127.127.127"),
    ("http://0/", "0.0.0.0"),  # Linux connects 0.0.0.0 to this host
    ("http://0.0.0.0/", "0.0.0.0"),
    ("http://user:pw@0x7f000001:8080/x", "127.0.0.1"),  # userinfo in front
    ("http://example.com@127.1/", "127.0.0.1"),
    ("http://localhost/", "127.0.0.1"),
    ("http://LOCALHOST:8080/", "127.0.0.1"),
    ("http://localhost./", "127.0.0.1"),
    ("http://api.localhost/", "127.0.0.1"),  # RFC 6761: every name under localhost
    ("http://[::1]/", "::1"),
    ("http://[0:0:0:0:0:0:0:1]/", "::1"),
    ("http://[0000::1]/", "::1"),
    ("http://[::]/", "::"),
    ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),  # IPv4-mapped
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "127.0.0.1"),
    ("http://[::ffff:7f00:1]/", "127.0.0.1"),
    ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254"),
    ("http://[::127.0.0.1]/", "127.0.0.1"),  # IPv4-compatible (deprecated)
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),  # NAT64
    ("http://[2002:a9fe:a9fe::1]/", "169.254.169.254"),  # 6to4
    ("http://[fe80::1%25eth0]/", "fe80::1%eth0"),  # zone id (RFC 6874)
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("http://0xa9fea9fe/", "169.254.169.254"),
    ("http://2852039166/", "169.254.169.254"),
    ("http://169.254.43518/", "169.254.169.254"),
    ("http://0251.0376.0251.0376/", "169.254.169.254"),
    ("http://3232235521/", "192.168.0.1"),
    ("http://012.1/", "10.0.0.1"),
    ("http://0xac.16.1/", "172.16.0.1"),
    ("http://100.100.100.200/", "100.100.100.200"),  # CGNAT (a cloud metadata address)
    ("http://192.0.0.192/", "192.0.0.192"),  # IETF protocol assignments
    ("http://[fd00:ec2::254]/", "fd00:ec2::254"),  # unique local (a cloud metadata address)
    ("http://[fec0::1]/", "fec0::1"),  # site-local
    ("http://224.0.0.1/", "224.0.0.1"),
    ("http://[ff02::1]/", "ff02::1"),
    ("http://255.255.255.255/", "255.255.255.255"),
    ("http://240.0.0.1/", "240.0.0.1"),
]
# the same after IDNA, as Python's getaddrinfo encodes a non-ASCII host
UNICODE = [("http://①②⑦.⓪.⓪.①/", "127.0.0.1"), ("http://127。0。0。1/", "127.0.0.1")]
# hosts that end in a number but are no IPv4 address: resolvers disagree on them
NOT_ADDRESSES = ["http://1.2.3.4.5/", "http://08.0.0.1/", "http://256.0.0.1/", "http://4294967296/",
                 "http://1.0xfffffffff/", "http://example.123/"]
# loopback in several spellings: accepted in both places once 127.0.0.0/8 is allowed
LOOPBACK_FORMS = ["127.0.0.1", "2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.1", "127.0.0.1.",
                  "localhost", "localhost.", "hooks.localhost", "[::ffff:127.0.0.1]"]
PUBLIC = ["https://hooks.example.com/x", "http://8.8.8.8/", "http://134744072/", "http://0x08080808/",
          "http://[2606:4700:4700::1111]/", "http://localhost.example.com/", "http://127.0.0.1.nip.io/"]


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


class Lookups:
    """A resolver that calls every name public and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return [PUBLIC_ANSWER]


def _sub(url: str) -> Subscription:
    return Subscription(name="t", channel=WebhookChannel(type="webhook", url=url), id="sub_t",
                        created_at=datetime.now(UTC), secrets=["whsec_" + "A" * 43])


def _delivery() -> Delivery:
    return Delivery("msg_x", "sub_t", [{"specversion": "1.0", "id": "e1", "type": "agreement.signed",
                                        "source": "/t", "data": {"title": "x"}}], [[]])


async def _deliver(url: str, networks: list[Any], resolver: Any = None) -> Any:
    sender = WebhookSender(networks, timeout=5.0, concurrency=1, resolver=resolver or Lookups())
    try:
        return await sender.send(_sub(url), _delivery())
    finally:
        await sender.aclose()


@contextlib.asynccontextmanager
async def api(base: AntingSettings, allow: str, *, kafka: bool) -> AsyncIterator[httpx.AsyncClient]:
    """The notify API; with ``kafka`` its store runs on the broker, else it is never
    started (a request that reached it would fail with 503, not 422)."""
    settings = notify_settings(base, api_keys="k1", allow_networks=allow)
    producer = make_producer(settings) if kafka else None
    store = SubscriptionStore(settings, producer)
    if producer is not None:
        await producer.start()
        await store.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, store)),
                                     base_url="http://notify") as client:
            yield client
    finally:
        if producer is not None:
            await store.stop()
            await producer.stop()


async def _create(client: httpx.AsyncClient, url: str) -> httpx.Response:
    return await client.post("/v1/subscriptions", headers=KEY,
                             json={"name": "x", "channel": {"type": "webhook", "url": url}})


# --- creation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "address"), INTERNAL + UNICODE)
async def test_internal_address_refused_at_creation(url: str, address: str) -> None:
    """POST /v1/subscriptions answers 422 naming the host and the address it stands for."""
    async with api(settings_for("127.0.0.1:9"), "", kafka=False) as client:
        r = await _create(client, url)
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["path"] == "channel.url"
    assert url_host(url) in error["message"] and address in error["message"], error


@pytest.mark.parametrize("url", NOT_ADDRESSES)
async def test_numeric_host_that_is_no_address_refused_at_creation(url: str) -> None:
    """A host ending in a number that is no IPv4 address is refused at creation, not left to a resolver."""
    async with api(settings_for("127.0.0.1:9"), "", kafka=False) as client:
        r = await _create(client, url)
    assert r.status_code == 422, r.text
    assert "is not an IPv4 address" in r.json()["errors"][0]["message"]


@pytest.mark.kafka
async def test_allowed_and_public_accepted_at_creation(topics: AntingSettings) -> None:
    """Loopback in any spelling is 201 once 127.0.0.0/8 is allowed; public addresses and names always."""
    async with api(topics, "127.0.0.0/8", kafka=True) as client:
        for url in [f"http://{h}:8080/in" for h in LOOPBACK_FORMS] + PUBLIC:
            r = await _create(client, url)
            assert r.status_code == 201, (url, r.text)
    async with api(topics, "", kafka=True) as client:
        for url in PUBLIC:
            r = await _create(client, url)
            assert r.status_code == 201, (url, r.text)


@pytest.mark.kafka
async def test_cli_refuses_an_internal_address(topics: AntingSettings, tmp_path: Path) -> None:
    """`anting subscriptions add --webhook http://0x7f000001/` is refused by the running
    notify's rule (its ANTING_NOTIFY_ALLOW_NETWORKS, not the shell's) with the address named."""
    from devtools.localkafka import free_port
    from devtools.testing import ServiceProcess

    port = free_port()
    service = ServiceProcess("notify", topics, tmp_path / "notify.log", ANTING_NOTIFY_PORT=str(port),
                             ANTING_NOTIFY_ALLOW_NETWORKS="")
    service.start()
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}/readyz", timeout=2)).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        anting = str(Path(sys.executable).parent / "anting")
        done = await asyncio.to_thread(
            subprocess.run, [anting, "subscriptions", "add", "--name", "x", "--webhook", "http://0x7f000001/"],
            env=env_for(topics, ANTING_NOTIFY_ALLOW_NETWORKS="0.0.0.0/0",  # the shell's: not the rule
                        ANTING_NOTIFY_URL=f"http://127.0.0.1:{port}"),
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    finally:
        service.terminate()
    assert done.returncode == 2 and "0x7f000001" in done.stderr and "127.0.0.1" in done.stderr, done.stderr


# --- delivery ---------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "address"), INTERNAL)
async def test_internal_address_refused_at_delivery_by_the_same_rule(
        url: str, address: str, connects: list[Any]) -> None:
    """Delivery is refused with the very message creation gives, without a lookup or a connection."""
    resolver = Lookups()
    result = await _deliver(url, [], resolver)
    assert result.verdict == "permanent", result
    assert result.error == f"refused: {literal_refusal(url, [])}"
    assert address in result.error
    assert connects == [] and resolver.asked == []


@pytest.mark.parametrize(("url", "address"), UNICODE)
async def test_unicode_spelling_refused_by_the_guard_and_never_sent(
        url: str, address: str, connects: list[Any]) -> None:
    """A non-ASCII spelling of an internal address fails the guard; the client does not send it anyway."""
    with pytest.raises(RefusedAddress, match=re.escape(address)):
        await GuardedResolver([], Lookups()).checked(url_host(url), 80)
    result = await _deliver(url, [])
    assert result.verdict == "permanent" and connects == [], result


@pytest.mark.parametrize("url", NOT_ADDRESSES)
async def test_numeric_host_that_is_no_address_refused_at_delivery(url: str, connects: list[Any]) -> None:
    """A host ending in a number that is no IPv4 address is refused at delivery too, never looked up."""
    resolver = Lookups()
    result = await _deliver(url, [], resolver)
    assert result.verdict == "permanent" and result.error == f"refused: {literal_refusal(url, [])}", result
    assert connects == [] and resolver.asked == []


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
async def test_allowed_network_delivers_in_any_spelling(host: str, connects: list[Any]) -> None:
    """With 127.0.0.0/8 allowed, each loopback spelling is delivered, to 127.0.0.1, with no lookup."""
    receiver = await Receiver().start()
    resolver = Lookups()
    try:
        result = await _deliver(f"http://{host}:{receiver.port}/in", LOOPBACK, resolver)
    finally:
        await receiver.stop()
    assert result.verdict == "ok", result
    assert connects == [("127.0.0.1", receiver.port)] and resolver.asked == []
    name = url_host(f"http://{host}/")
    assert receiver.received[0].headers["Host"] == f"[{name}]:{receiver.port}" if ":" in name else (
        f"{name}:{receiver.port}")


async def test_public_literals_pass_the_guard_without_a_lookup() -> None:
    """A public address in any spelling is connected to as written out; only names are looked up."""
    resolver = Lookups()
    guard = GuardedResolver([], resolver)
    assert await guard.checked(url_host("http://134744072/"), 80) == [ipaddress.ip_address("8.8.8.8")]
    assert await guard.checked(url_host("http://0x08080808/"), 80) == [ipaddress.ip_address("8.8.8.8")]
    assert await guard.checked("2606:4700:4700::1111", 80) == [ipaddress.ip_address("2606:4700:4700::1111")]
    assert resolver.asked == []
    assert await guard.checked("127.0.0.1.nip.io", 80) == [ipaddress.ip_address(PUBLIC_ANSWER)]
    assert resolver.asked == ["127.0.0.1.nip.io"]


@pytest.mark.parametrize("url", [url for url, _ in INTERNAL] + PUBLIC + [
    "http://a\\@127.1/", "http://[::1]:99/", "HTTP://Hooks.EXAMPLE.com:8080/x", "http://u@h@127.1/"])
def test_creation_checks_the_host_the_client_connects_to(url: str) -> None:
    """The host creation checks is the host the webhook client resolves (userinfo, case, brackets)."""
    assert url_host(url) == http1.target(url).host


def test_localhost_is_loopback_without_dns() -> None:
    """localhost and *.localhost stand for 127.0.0.1 and ::1; names merely containing it are DNS names."""
    both = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for host in ("localhost", "LOCALHOST", "localhost.", "a.b.localhost", "x.localhost."):
        assert fixed_addresses(host) == both, host
    for host in ("localhost.example.com", "mylocalhost", "localhost-1"):
        assert fixed_addresses(host) is None, host


# --- the rule itself --------------------------------------------------------------------


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
            assert host in (result.error or "")
    finally:
        await sender.aclose()
    assert connects == []


async def test_name_resolving_to_a_mapped_address_is_refused() -> None:
    """A DNS answer in IPv4-mapped form (::ffff:169.254.169.254) is judged as the IPv4 address."""
    async def resolver(host: str, port: int) -> list[str]:
        return ["::ffff:169.254.169.254"]

    with pytest.raises(RefusedAddress, match=re.escape("resolves to 169.254.169.254, which is link-local")):
        await GuardedResolver([], resolver).checked("meta.example", 80)


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
    """Public addresses pass; metadata, RFC 1918, loopback, link-local, CGNAT, reserved and their IPv6 forms do not."""
    for good in ("93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "2002:808:808::1", "64:ff9b::808:808"):
        assert is_public(ipaddress.ip_address(good)), good
    for bad in ("169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "100.64.0.1",
                "0.0.0.0", "240.0.0.1", "192.0.0.192", "198.18.0.1", "::", "::1", "fe80::1", "fc00::1",
                "fec0::1", "::ffff:127.0.0.1", "::7f00:1", "64:ff9b::a00:1", "2002:a00:1::1",
                "2001:db8::1", "ff02::1"):
        assert not is_public(ipaddress.ip_address(bad)), bad
