"""SSRF guard for outbound deliveries (webhooks here; apprise through :mod:`.egress`,
which applies the same :func:`vet`): one rule, used when a subscription is created
(the API's POST /v1/subscriptions and ``anting subscriptions add``, through
:func:`literal_refusal`) and when a delivery connects (the webhook client's
resolver, :class:`GuardedResolver`), so a URL refused at delivery is refused at
creation whenever that can be known without DNS.

The rule (:func:`vet`): every address a host stands for must be public —
not private, loopback, link-local, site-local, multicast, reserved,
unspecified, shared (CGNAT, 100.64.0.0/10) or otherwise not globally reachable,
nor an IPv6 form (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo) of such an
IPv4 address — unless it lies in ``ANTING_NOTIFY_ALLOW_NETWORKS``.

A host is checked, looked up and sent (``Host``, TLS SNI) in one form,
:func:`url_host`'s: an internationalised name as its A-labels (IDNA 2008 with UTS 46
mapping, as browsers send it: ``bücher.example`` is ``xn--bcher-kva.example``, and
``①②⑦.⓪.⓪.①`` is ``127.0.0.1``); one IDNA cannot write is refused.

Which addresses a host stands for is decided here, not by whatever parses the
URL next. :func:`fixed_addresses` knows every host whose addresses need no DNS:
IPv4 in every form ``inet_aton`` and browsers accept
(``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``0``, a trailing
dot), IPv6 literals with or without a zone id, the same after the IDNA encoding
Python's ``getaddrinfo`` applies to non-ASCII hosts (``①②⑦.0.0.1``), and
``localhost`` / ``*.localhost`` (loopback, RFC 6761). The client connects to
exactly those addresses, so an unusual spelling cannot mean one address to the
check and another to the socket.

Other names are resolved only at delivery, never at creation: DNS answers change,
so a name checked once could point inside later. At delivery every address the
name resolves to is checked, and the client opens its sockets only to the
addresses :meth:`GuardedResolver.checked` returned — so DNS rebinding between
check and connection is impossible.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from urllib.parse import unquote, urlsplit

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOW_SETTING = "ANTING_NOTIFY_ALLOW_NETWORKS"
LOOPBACK_NAME_ADDRESSES: tuple[IPAddress, ...] = (
    ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))

# Special-purpose blocks (IANA registries) that are not globally reachable but that
# this Python's ipaddress flags do not cover.
_NOT_GLOBAL = (
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments (192.0.0.192: a cloud metadata address)
    ipaddress.ip_network("3fff::/20"),  # documentation (RFC 9637)
)
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix, RFC 6052: the low 32 bits are IPv4
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d
_HEX = re.compile(r"0[xX][0-9a-fA-F]*")


class RefusedAddress(OSError):
    """The URL's host is, or resolves to, an address outbound deliveries may not reach."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses an IPv6 address carries and may be translated to on the way,
    with the name of the form."""
    out: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        out.append(("IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
    if ip.sixtofour is not None:
        out.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        out.extend((("Teredo", ip.teredo[0]), ("Teredo", ip.teredo[1])))
    return out


def unmapped(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as the IPv4 address it is on
    the wire; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def non_public_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (e.g. ``"loopback"``), or None if it is one."""
    ip = unmapped(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            # Python files the prefix under reserved ::/8, but it is how an IPv6-only
            # host (DNS64) reaches every IPv4 address: judge what it translates to
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            why = non_public_reason(inner)
            return f"the NAT64 form of {inner} ({why})" if why else None
        for form, inner in _embedded_ipv4(ip):
            why = non_public_reason(inner)
            if why:
                return f"the {form} form of {inner} ({why})"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "shared address space (CGNAT, 100.64.0.0/10)"),
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local"),
        (ip.is_reserved, "reserved"),
        (ip.is_private, "private"),
        (any(ip in net for net in _NOT_GLOBAL if net.version == ip.version), "not globally reachable"),
        (not ip.is_global, "not globally reachable"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def is_public(ip: IPAddress) -> bool:
    """True for an address on the public internet (see :func:`non_public_reason`)."""
    return non_public_reason(ip) is None


def allowed(ip: IPAddress, networks: Sequence[Network]) -> bool:
    """True if deliveries may connect to ``ip``: public, or inside one of ``networks``."""
    ip = unmapped(ip)
    return any(ip in net for net in networks if net.version == ip.version) or is_public(ip)


def is_localhost_name(host: str) -> bool:
    """``localhost`` and every name under it, which are loopback (RFC 6761 §6.3)."""
    host = host.lower().removesuffix(".")
    return host == "localhost" or host.endswith(".localhost")


def _ipv4_number(part: str) -> int | None:
    # A part as inet_aton and the URL standard read it: 0x/0X hex (bare "0x" is 0,
    # as browsers have it), a leading 0 octal, else decimal.
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if not part.isascii() or not part.isdigit():
        return None
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8) if all(c in "01234567" for c in part) else None
    return int(part)


def _ends_in_number(host: str) -> bool:
    last = host.split(".")[-1]
    return bool(last) and ((last.isascii() and last.isdigit()) or bool(_HEX.fullmatch(last)))


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = [n for n in numbers if n is not None]
    # a.b.c.d, a.b.c (c is 16 bits), a.b (b is 24 bits), a (32 bits)
    if any(n > 0xFF for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for i, n in enumerate(head):
        value |= n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def fixed_addresses(host: str) -> list[IPAddress] | None:
    """The addresses ``host`` (a URL's host, without brackets) stands for without asking
    DNS, or None for a name only DNS can answer.

    Raises :class:`RefusedAddress` for a host that looks like an address but is none
    (``1.2.3.4.5``, ``0999``, ``[::g]``): resolvers disagree on what such strings
    mean, so none is sent to one.
    """
    name = host.lower()
    if not name.isascii():
        try:  # what socket.getaddrinfo does to a str host: ①②⑦.0.0.1 and 127。0。0。1 become 127.0.0.1
            name = name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            return None  # no resolver could look it up either
    if ":" in name:
        address, _, zone = name.partition("%")
        zone = unquote("%" + zone)[1:]  # RFC 6874: the zone's "%" is written "%25" in a URL
        try:
            return [ipaddress.IPv6Address(f"{address}%{zone}" if zone else address)]
        except ValueError:
            raise RefusedAddress(f"{host} is not a valid IPv6 address") from None
    if is_localhost_name(name):
        return list(LOOPBACK_NAME_ADDRESSES)
    name = name.removesuffix(".")
    if _ends_in_number(name):  # no top-level domain is numeric: this is IPv4 or nothing
        ip = _parse_ipv4(name)
        if ip is None:
            raise RefusedAddress(f"{host} ends in a number but is not an IPv4 address")
        return [ip]
    return None


def vet(host: str, addresses: Iterable[IPAddress], networks: Sequence[Network], *,
        resolved: bool) -> list[IPAddress]:
    """The one SSRF rule: the addresses a delivery to ``host`` may connect to, or
    :class:`RefusedAddress` naming the host and the address that is refused.

    ``resolved`` says the addresses are a DNS answer: then every one of them must be
    allowed (a name that also points inside is refused outright). Otherwise they are
    the fixed addresses of a literal or a localhost name; the allowed ones are
    kept (``localhost`` with only ``127.0.0.0/8`` allowed is 127.0.0.1) and the host
    is refused only if none is. IPv4-mapped addresses come back as IPv4.
    """
    addresses = [unmapped(ip) for ip in addresses]
    refused = [ip for ip in addresses if not allowed(ip, networks)]
    ok = [ip for ip in addresses if ip not in refused]
    if refused and (resolved or not ok):
        ip = refused[0]
        why = non_public_reason(ip) or "not allowed"
        if resolved:
            where = f"{host} resolves to {ip}, which is"
        elif str(ip) == host.lower():
            where = f"{host} is"
        elif is_localhost_name(host):
            where = f"{host} (a name for {' and '.join(map(str, addresses))}) is"
        else:
            where = f"{host} is the address {ip}, which is"
        # whether this process has the setting at all (the CLI checks with its own
        # environment), not its value: an API client is not told the private networks
        unset = "" if networks else " (unset here)"
        raise RefusedAddress(f"{where} {why}: not a public address, and not in "
                             f"{ALLOW_SETTING}{unset}")
    if not ok:
        raise RefusedAddress(f"no address for {host}")
    return ok


def ascii_host(host: str) -> str:
    """``host`` as it goes on the wire: an ASCII host unchanged, an internationalised one
    as its A-labels (IDNA 2008 with UTS 46 mapping: ``Bücher.example`` is
    ``xn--bcher-kva.example``, fullwidth ``ＬＯＣＡＬＨＯＳＴ`` is ``localhost``). Raises
    ValueError for a host IDNA cannot write (an emoji, a joiner out of place, an empty
    or too long label)."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{host} cannot be written in IDNA: {exc}") from None


def url_host(url: str) -> str:
    """The host of ``url`` exactly as the webhook client takes it (``urlsplit``'s
    hostname: lower-cased, without brackets, userinfo or port; in A-labels, see
    :func:`ascii_host`), ``""`` if none. Raises ValueError for a URL that cannot be
    split (e.g. a bad IPv6 literal) or a host IDNA cannot write."""
    return ascii_host(urlsplit(url).hostname or "")


def literal_refusal(url: str, networks: Sequence[Network]) -> str | None:
    """Why deliveries to ``url`` would be refused, when that is known without DNS (a
    literal address in any spelling, a localhost name, no host at all); else None.
    For checking a subscription when it is created; names are checked at delivery."""
    try:
        host = url_host(url)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if not host:
        return "the URL has no host"
    try:
        fixed = fixed_addresses(host)
        if fixed is not None:
            vet(host, fixed, networks, resolved=False)
    except RefusedAddress as exc:
        return str(exc)
    return None


def check_url(url: str, networks: Sequence[Network]) -> None:
    """:func:`literal_refusal` as an exception: raises :class:`RefusedAddress`."""
    why = literal_refusal(url, networks)
    if why:
        raise RefusedAddress(why)


async def system_resolver(host: str, port: int) -> list[str]:
    """The system's addresses for ``host`` (``getaddrinfo``), as strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class GuardedResolver:
    """Resolves a host to addresses that all pass the guard, or refuses it."""

    def __init__(self, networks: Sequence[Network], resolver: Resolver = system_resolver) -> None:
        self.networks = list(networks)
        self.resolver = resolver

    async def checked(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to connect to for ``host``, every one allowed by :func:`vet`.
        Literals and localhost names never reach the resolver. Raises
        :class:`RefusedAddress`, or ``OSError`` if the name does not resolve."""
        fixed = fixed_addresses(host)
        if fixed is not None:
            return vet(host, fixed, self.networks, resolved=False)
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in await self.resolver(host, port)]
        except OSError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise OSError(f"cannot resolve {host}")
        return vet(host, addresses, self.networks, resolved=True)


__all__ = ["ALLOW_SETTING", "LOOPBACK_NAME_ADDRESSES", "GuardedResolver", "IPAddress", "Network",
           "RefusedAddress", "Resolver", "allowed", "ascii_host", "check_url", "fixed_addresses",
           "is_localhost_name", "is_public", "literal_refusal", "non_public_reason",
           "system_resolver", "unmapped", "url_host", "vet"]
