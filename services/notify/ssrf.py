"""SSRF guard for outbound webhooks: resolve the host once, refuse private,
loopback, link-local and reserved addresses (unless allowed by
``ANTING_NOTIFY_ALLOW_NETWORKS``), and connect to the very addresses that were
checked — the webhook client (channels/http1.py) opens its sockets only to the
addresses :meth:`GuardedResolver.checked` returned — so DNS rebinding cannot slip
past the check. Literal-IP
URLs never reach a resolver and are checked up front (:func:`check_url`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


class RefusedAddress(OSError):
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
    """Why a URL whose host is a literal IP is refused, else None (names are checked when resolved)."""
    host = URL(url).host or ""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return None if allowed(ip, networks) else f"{host} is not a public address"


def check_url(url: str, networks: Sequence[Network]) -> None:
    why = literal_refusal(url, networks)
    if why:
        raise RefusedAddress(why)


class GuardedResolver:
    """Resolves a host to addresses that all pass the guard, or refuses it."""

    def __init__(self, networks: Sequence[Network], resolver: Resolver = system_resolver) -> None:
        self.networks = list(networks)
        self.resolver = resolver

    async def checked(self, host: str, port: int) -> list[IPAddress]:
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
        except OSError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise OSError(f"cannot resolve {host}")
        # every address must pass: a name that also points inside is refused outright
        for ip in addresses:
            if not allowed(ip, self.networks):
                raise RefusedAddress(f"{host} resolves to {ip}, which is not a public address")
        return addresses
