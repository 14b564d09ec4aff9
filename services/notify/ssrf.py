"""SSRF guard for outbound webhooks: resolve the host once, refuse private,
loopback, link-local and reserved addresses (unless allowed by
``ANTING_NOTIFY_ALLOW_NETWORKS``), and connect to the very address that was
checked — the URL is rewritten to the IP, with the original ``Host`` header and
TLS SNI/hostname verification kept — so DNS rebinding cannot slip past the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(httpx.TransportError):
    """The URL resolves to an address outbound deliveries may not reach."""


def is_public(ip: IPAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return is_public(ip.ipv4_mapped)
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
        or ip.is_multicast or ip.is_unspecified or not ip.is_global
    )


def allowed(ip: IPAddress, networks: Sequence[Network]) -> bool:
    return is_public(ip) or any(ip in net for net in networks)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def literal_refusal(url: str, networks: Sequence[Network]) -> str | None:
    """For API validation: why a URL whose host is a literal IP is refused, else None."""
    host = httpx.URL(url).host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if allowed(ip, networks) else f"{host} is not a public address"


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks the resolved address before the inner transport may connect to it."""

    def __init__(
        self,
        networks: Sequence[Network],
        inner: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.networks = list(networks)
        self.inner = inner or httpx.AsyncHTTPTransport(retries=0)
        self.resolver = resolver

    async def checked_address(self, host: str, port: int) -> str:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpx.ConnectError(f"cannot resolve {host}")
        # every address must pass: a name that also points inside is refused outright
        for ip in addresses:
            if not allowed(ip, self.networks):
                raise RefusedAddress(f"{host} resolves to {ip}, which is not a public address")
        return str(addresses[0])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        ip = await self.checked_address(host, port)
        if ip != host:
            # Host header stays as httpx set it from the original URL; SNI and
            # certificate checks use the name, the socket uses the checked IP
            request.url = request.url.copy_with(host=ip)
            request.extensions = {**request.extensions, "sni_hostname": host}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
