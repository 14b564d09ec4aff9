"""The egress policy: which hosts and addresses notify may open a socket to, for every
channel a subscriber chooses the destination of (a webhook URL, an apprise URL).

One rule, :func:`services.notify.ssrf.vet`, decides every address, in two places:

- at creation (:func:`channel_refusal`: the API's 422 and ``anting subscriptions
  add``), on whatever is known without DNS — a literal address in any spelling, a
  localhost name — and, for apprise, on everything apprise itself parses out of the
  URL: its scheme must be in ``ANTING_NOTIFY_APPRISE_SCHEMES``, every host it will
  contact is checked, and no parameter may set the request's method, headers or
  payload keys (apprise's ``+name``, ``-name``, ``:name`` and ``method=``);
- at delivery, on the resolved address each socket connects to: the webhook client
  connects only to addresses :class:`~services.notify.ssrf.GuardedResolver`
  checked; an apprise delivery runs in a thread whose every ``connect``/``sendto``
  is checked by an audit hook (:func:`guarded_sockets`), so a name that resolves
  inside, a redirect or a plugin's second request is refused before a byte leaves.

An apprise scheme can be allowed only if this module knows which hosts its plugin
contacts (:data:`APPRISE_TARGETS`); a scheme whose target cannot be checked (e-mail,
MQTT, syslog, anything that takes its server from somewhere else) cannot be allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from .ssrf import Network, RefusedAddress, ascii_host, fixed_addresses, literal_refusal, vet

if TYPE_CHECKING:
    from shared.subscriptions import Channel

APPRISE_SETTING = "ANTING_NOTIFY_APPRISE_SCHEMES"


def _own_host(plugin: Any) -> list[str]:  # Any: an apprise plugin (apprise is untyped)
    """The host written in the URL (a self-hosted server)."""
    return [str(plugin.host or "")]


def _class_hosts(*attributes: str) -> Callable[[Any], list[str]]:
    """The hosts of the plugin's own fixed endpoints (class attributes holding URLs), read
    from the plugin rather than copied here, so a new apprise release is followed."""
    def hosts(plugin: Any) -> list[str]:  # Any: an apprise plugin
        return [urlsplit(str(getattr(type(plugin), a))).hostname or "" for a in attributes]
    return hosts


def _ntfy(plugin: Any) -> list[str]:  # Any: apprise's ntfy plugin
    # ntfy://topic is the public ntfy.sh ("cloud" mode); ntfy://host/topic a server of one's own
    if plugin.mode == "cloud":
        return [urlsplit(str(type(plugin).cloud_notify_url)).hostname or ""]
    return _own_host(plugin)


#: apprise schemes whose every target host this module can name, from the parsed plugin.
#: Each of these plugins makes its HTTP requests with ``requests`` in the calling
#: thread, which is what :func:`guarded_sockets` watches.
APPRISE_TARGETS: dict[str, Callable[[Any], list[str]]] = {
    # fixed public services: the URL's "host" is a token, the host is the service's
    "slack": _class_hosts("webhook_url", "webhook_gov_url", "workflow_url", "workflow_trigger_url", "api_url"),
    "discord": _class_hosts("notify_url"),
    "tgram": _class_hosts("notify_url"),
    # ntfy.sh or a server of one's own
    "ntfy": _ntfy, "ntfys": _ntfy,
    # self-hosted: the host in the URL, checked like a webhook's
    "gotify": _own_host, "gotifys": _own_host,
    "mmost": _own_host, "mmosts": _own_host,
    # generic HTTP (a webhook without a signature): off unless the operator allows them
    "json": _own_host, "jsons": _own_host,
    "form": _own_host, "forms": _own_host,
    "xml": _own_host, "xmls": _own_host,
}

#: ``ANTING_NOTIFY_APPRISE_SCHEMES``' default: chat services with fixed public hosts, and
#: ntfy, gotify and Mattermost, whose requests a subscriber cannot shape (their host is
#: checked like a webhook's). The generic ``json``/``form``/``xml`` are left out.
DEFAULT_APPRISE_SCHEMES = ("slack", "discord", "tgram", "ntfy", "ntfys", "gotify", "gotifys",
                           "mmost", "mmosts")

# apprise's parameters that let a URL shape the request: "+name" adds a header, "-name"
# drops a payload key, ":name" sets or renames one, method= picks the verb
_SHAPING = {"qsd+": "+", "qsd-": "-", "qsd:": ":"}


def parse_schemes(text: str) -> frozenset[str]:
    """``ANTING_NOTIFY_APPRISE_SCHEMES``: comma-separated apprise schemes (``slack,ntfys``;
    ``none`` or empty: no apprise deliveries). Raises ``ValueError`` naming a scheme whose
    targets cannot be checked, with the ones that can."""
    schemes = frozenset(s.strip().lower().removesuffix("://") for s in text.split(",")
                        if s.strip() and s.strip().lower() != "none")
    unknown = sorted(schemes - APPRISE_TARGETS.keys())
    if unknown:
        raise ValueError(f"apprise schemes whose targets cannot be checked: {', '.join(unknown)} "
                         f"(checkable: {', '.join(sorted(APPRISE_TARGETS))})")
    return schemes


@dataclass(frozen=True)
class EgressPolicy:
    """Where deliveries may go: ``networks`` (``ANTING_NOTIFY_ALLOW_NETWORKS``) admits
    non-public addresses, ``apprise_schemes`` (``ANTING_NOTIFY_APPRISE_SCHEMES``) the
    apprise services that may be used at all."""

    networks: Sequence[Network] = ()
    apprise_schemes: frozenset[str] = frozenset(DEFAULT_APPRISE_SCHEMES)


class Refused(ValueError):
    """A destination the egress policy does not allow; the message says which rule."""


# --- apprise ----------------------------------------------------------------------------

_apprise: ModuleType | None = None
_load_lock = threading.Lock()


def load_apprise() -> ModuleType:
    """apprise, with its plugins loaded (once; ~20 MB, so only when first needed). One of
    them imports the deprecated ``imghdr``, a warning of theirs (not ours) that strict
    warning filters would turn into an error."""
    global _apprise
    with _load_lock:
        if _apprise is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import apprise

                apprise.Apprise().add("json://localhost")
            _apprise = apprise
    return _apprise


def apprise_loaded() -> bool:
    """True once :func:`load_apprise` has run (then parsing a URL costs no import)."""
    return _apprise is not None


class AppriseService(NamedTuple):
    """An apprise URL as apprise reads it: its scheme (``discord``) and its plugin."""

    schema: str
    plugin: Any


def apprise_service(url: str, policy: EgressPolicy) -> AppriseService:
    """The apprise plugin that would deliver to ``url``, if the policy allows it: an
    allowed scheme, no parameter shaping the request, and every host the plugin will
    contact passing :func:`~services.notify.ssrf.vet` where that is known without DNS
    (names are checked at delivery, on their addresses). Raises :class:`Refused`."""
    apprise = load_apprise()
    parsed = apprise.plugins.url_to_dict(url)
    if parsed is None:
        raise Refused("apprise does not understand this URL")
    schema = str(parsed.get("schema", "")).lower()
    if schema not in policy.apprise_schemes:
        allowed = ", ".join(sorted(policy.apprise_schemes)) or "none"
        raise Refused(f"the apprise scheme {schema}:// is not allowed ({APPRISE_SETTING}: {allowed})")
    shaping = [f"{mark}{name}" for key, mark in _SHAPING.items() for name in parsed.get(key) or {}]
    shaping += [f"{name}=" for name in parsed.get("qsd") or {} if name == "method"]
    if shaping:
        raise Refused(f"the URL sets the request's method, headers or payload keys "
                      f"({', '.join(shaping)}): a subscription cannot choose them")
    plugin = apprise.Apprise.instantiate(parsed)
    if plugin is None:
        raise Refused("apprise does not understand this URL")
    for host in APPRISE_TARGETS[schema](plugin):
        if not host:
            raise Refused(f"the {schema}:// URL has no host")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # apprise keeps an IPv6 literal's brackets
        try:
            host = ascii_host(host)  # as apprise's HTTP library sends it (urllib3 uses idna too)
            fixed = fixed_addresses(host)
            if fixed is not None:
                vet(host, fixed, policy.networks, resolved=False)
        except (RefusedAddress, ValueError) as exc:
            raise Refused(str(exc)) from None
    return AppriseService(schema, plugin)


def apprise_refusal(url: str, policy: EgressPolicy) -> str | None:
    """Why the policy refuses the apprise URL ``url`` (see :func:`apprise_service`), or None."""
    try:
        apprise_service(url, policy)
    except Refused as exc:
        return str(exc)
    return None


def channel_refusal(channel: Channel, policy: EgressPolicy) -> str | None:
    """Why a subscription with this channel is refused at creation, or None: the webhook
    rule (:func:`~services.notify.ssrf.literal_refusal`) or the apprise one. Loads apprise
    for an apprise channel (blocking: call it off the event loop until
    :func:`apprise_loaded`)."""
    if channel.type == "webhook":
        return literal_refusal(channel.url, policy.networks)
    if channel.type == "apprise":
        return apprise_refusal(channel.url, policy)
    return None


# --- the socket guard of apprise deliveries ---------------------------------------------

# audit events that carry the address a socket is about to reach (PEP 578)
_SOCKET_EVENTS = frozenset({"socket.connect", "socket.sendto", "socket.sendmsg"})
_guarded = threading.local()
_hook_lock = threading.Lock()
_hooked = False


@dataclass
class SocketGuard:
    """One guarded call's state: ``refused`` is the first refusal's reason, if any."""

    networks: Sequence[Network]
    refused: str | None = None


def socket_refusal(address: object, networks: Sequence[Network]) -> str | None:
    """Why a socket may not reach ``address`` (an ``(ip, port, ...)`` tuple as passed to
    ``connect``/``sendto``), or None: :func:`~services.notify.ssrf.vet` on the IP. Any
    other address (a Unix socket, ``None``) is refused."""
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return f"not an internet address: {address!r}"
    host = address[0]
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return f"not an IP address: {host!r}"
    try:
        vet(str(ip), [ip], networks, resolved=False)
    except RefusedAddress as exc:
        return str(exc)
    return None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # called for every audit event of the process: return at once unless this thread is
    # guarded and a socket is about to reach an address
    if event not in _SOCKET_EVENTS:
        return
    guard: SocketGuard | None = getattr(_guarded, "guard", None)
    if guard is None or len(args) < 2:
        return
    why = socket_refusal(args[1], guard.networks)
    if why is not None:
        if guard.refused is None:
            guard.refused = why
        raise RefusedAddress(why)  # aborts the connect (PEP 578: a hook may raise)


@contextlib.contextmanager
def guarded_sockets(networks: Sequence[Network]) -> Iterator[SocketGuard]:
    """While inside, every socket this thread connects or sends to must reach an allowed
    address (:func:`socket_refusal`), checked on the resolved IP at the moment of the
    call; a refused one raises :class:`~services.notify.ssrf.RefusedAddress` inside the
    library that tried, and the yielded :class:`SocketGuard` keeps the reason. Other
    threads are not affected (the Kafka client, SMTP, the webhook client)."""
    global _hooked
    with _hook_lock:
        if not _hooked:
            sys.addaudithook(_audit)  # once per process: audit hooks cannot be removed
            _hooked = True
    guard = SocketGuard(list(networks))
    outer = getattr(_guarded, "guard", None)
    _guarded.guard = guard
    try:
        yield guard
    finally:
        _guarded.guard = outer


__all__ = ["APPRISE_SETTING", "APPRISE_TARGETS", "DEFAULT_APPRISE_SCHEMES", "AppriseService", "EgressPolicy",
           "Refused",
           "SocketGuard", "apprise_loaded", "apprise_refusal", "apprise_service", "channel_refusal",
           "guarded_sockets", "load_apprise", "parse_schemes", "socket_refusal"]
