"""Who may call the HTTP APIs: API keys that carry a tenant and scopes, short-lived stream
tokens for browsers, and a rate limit per key. No FastAPI here: :mod:`shared.http` wires
these into every API as dependencies.

**Keys.** An API key is a random string (``ak_`` + 43 URL-safe characters, 256 bits:
:func:`new_key`). The server keeps only its SHA-256 (hex, :func:`hash_key`): a salted,
slow password hash is for low-entropy secrets people choose; a 256-bit random key cannot
be guessed from its hash, so a plain hash is what GitHub's and Stripe's token stores keep
too. ``ANTING_API_KEYS_FILE`` holds one key a line, ``<sha256-hex> <tenant>
<scope,scope,...>`` (``#`` comments and blank lines allowed; :func:`parse_keys_file`); the
plain ``ANTING_API_KEYS`` (comma-separated) still works and makes keys of the ``admin``
tenant with the ``admin`` scope, hashed as they are read (the plain key is not kept).

A key is found by looking its hash up in a dict (:meth:`ApiKeys.principal`). A lookup's
time depends on the hash of what the client sent, which the client cannot steer towards a
stored hash without finding a SHA-256 preimage, so timing tells nothing about stored keys;
the hash found is compared once more with :func:`hmac.compare_digest` anyway.

**Scopes** (:data:`SCOPES`): ``events:publish`` (ingest's write endpoints),
``subscriptions:manage`` (notify's subscriptions), ``stream:read`` (notify's SSE stream and
its stream tokens), ``insights:read`` (the insights API), and ``admin``: every scope, over
every tenant (an admin key sees and manages every tenant's subscriptions).

**Stream tokens** (:class:`StreamTokens`): a browser's ``EventSource`` cannot send an
``Authorization`` header, so a page gets a token from its own back end (which holds a key
with ``stream:read``) and puts it in the stream's URL. A token is the tenant, the scope
``stream:read`` and an expiry, signed with HMAC-SHA256 by ``itsdangerous`` (the signing
library of Flask's sessions); it grants ``stream:read`` alone, until it expires.

**Rate limits** (:class:`RateLimit`): per key (its hash), on write endpoints; ``limits``'
sliding-window counter in memory (constant memory per key, unlike a moving window's list
of timestamps, and smoother than a fixed window), per process.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import limits
from itsdangerous import BadSignature, URLSafeSerializer
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

# a tenant is part of the contract (a subscription's owner): defined there, where readers of
# the topics find it without this module's HTTP-side libraries
from shared.subscriptions import ADMIN_TENANT, TENANT_PATTERN

__all__ = [
    "ADMIN",
    "ADMIN_TENANT",
    "EVENTS_PUBLISH",
    "INSIGHTS_READ",
    "OPEN",
    "SCOPES",
    "STREAM_READ",
    "SUBSCRIPTIONS_MANAGE",
    "TENANT_PATTERN",
    "ApiKeys",
    "KeyFileError",
    "Principal",
    "RateLimit",
    "StreamTokens",
    "TokenError",
    "check_scopes",
    "check_tenant",
    "client_key",
    "hash_key",
    "key_line",
    "new_key",
    "parse_keys_file",
]

EVENTS_PUBLISH = "events:publish"
SUBSCRIPTIONS_MANAGE = "subscriptions:manage"
STREAM_READ = "stream:read"
INSIGHTS_READ = "insights:read"
ADMIN = "admin"
SCOPES = (EVENTS_PUBLISH, SUBSCRIPTIONS_MANAGE, STREAM_READ, INSIGHTS_READ, ADMIN)

_TENANT = re.compile(TENANT_PATTERN)
_HASH = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 of ``key`` (UTF-8) as 64 lower-case hex digits: what a key file holds."""
    return hashlib.sha256(key.encode()).hexdigest()


def client_key(environ: Mapping[str, str]) -> str | None:
    """The key a command-line client sends: ``ANTING_API_KEY`` (a tenant's key, say), else
    the first of ``ANTING_API_KEYS`` (the operator's admin keys); ``None`` when neither is set."""
    own = environ.get("ANTING_API_KEY", "").strip()
    if own:
        return own
    return next((k.strip() for k in environ.get("ANTING_API_KEYS", "").split(",") if k.strip()), None)


def new_key() -> str:
    """A new API key: ``ak_`` and 32 random bytes, URL-safe base64 (256 bits)."""
    return "ak_" + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: its ``tenant``, its ``scopes``, ``key_id`` (the key's hash, the
    rate limit's key; ``None`` when keys are off or for a stream token) and, for a stream
    token, ``expires_at`` (Unix seconds; a stream it opened ends then)."""

    tenant: str
    scopes: frozenset[str]
    key_id: str | None = None
    expires_at: float | None = None

    @property
    def admin(self) -> bool:
        """Whether this is an admin: every scope, every tenant."""
        return ADMIN in self.scopes

    def may(self, scope: str) -> bool:
        """Whether the principal holds ``scope`` (an admin holds every one)."""
        return self.admin or scope in self.scopes

    def sees(self, tenant: str) -> bool:
        """Whether the principal may see what belongs to ``tenant`` (its own; an admin: all)."""
        return self.admin or tenant == self.tenant


#: Every request's principal when no key is configured: the API is open, as before keys.
OPEN = Principal(ADMIN_TENANT, frozenset({ADMIN}))


class KeyFileError(ValueError):
    """A key file line that is not ``<sha256-hex> <tenant> <scopes>``; the message names the
    file and line."""


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is a valid tenant name (``[a-z0-9][a-z0-9._-]{0,63}``), else
    ``ValueError``."""
    if not _TENANT.match(tenant):
        raise ValueError(f"tenant {tenant!r}: use 1-64 of a-z, 0-9, '.', '_', '-', starting "
                         "with a letter or digit")
    return tenant


def check_scopes(text: str) -> frozenset[str]:
    """The scopes of a comma-separated list, each one of :data:`SCOPES`, else ``ValueError``."""
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError((f"unknown scope {unknown[0]!r}" if unknown else "no scope given")
                         + f"; scopes are {', '.join(SCOPES)}")
    return frozenset(scopes)


def parse_keys_file(text: str, source: str = "ANTING_API_KEYS_FILE") -> dict[str, Principal]:
    """Key hash → principal for every line ``<sha256-hex> <tenant> <scope,scope,...>`` of
    ``text``; ``#`` starts a comment, blank lines are skipped. Raises :class:`KeyFileError`
    naming ``source`` and the line for a malformed line, an unknown scope, a bad tenant (or
    the ``admin`` tenant without the ``admin`` scope), or a hash given twice."""
    found: dict[str, Principal] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError("expected '<sha256-hex> <tenant> <scope,scope,...>'")
            digest, tenant, scopes = parts[0].lower(), parts[1], parts[2]
            if not _HASH.match(digest):
                raise ValueError("the first field is not a SHA-256 in hex (64 digits); "
                                 "`anting keys new` prints a line")
            if digest in found:
                raise ValueError("this key hash is on an earlier line too")
            granted = check_scopes(scopes)
            # the admin tenant owns ANTING_API_KEYS' subscriptions and those stored before
            # tenants existed: a key of that name without the admin scope would get them
            if check_tenant(tenant) == ADMIN_TENANT and ADMIN not in granted:
                raise ValueError(f"the tenant {ADMIN_TENANT!r} is the admin keys' own: give "
                                 f"the key the {ADMIN!r} scope or another tenant name")
            found[digest] = Principal(tenant, granted, digest)
        except ValueError as exc:
            raise KeyFileError(f"{source} line {n}: {exc}") from None
    return found


def key_line(key: str, tenant: str, scopes: Iterable[str]) -> str:
    """The key file line of ``key``: its hash, ``tenant`` and ``scopes``; raises
    ``ValueError`` for a bad tenant or scope."""
    joined = ",".join(sorted(check_scopes(",".join(scopes))))
    return f"{hash_key(key)} {check_tenant(tenant)} {joined}"


@dataclass(frozen=True)
class ApiKeys:
    """The keys an API accepts, by hash (see the module): from ``ANTING_API_KEYS`` (admin
    keys) and ``ANTING_API_KEYS_FILE`` (tenants' keys). With none, the API is open and every
    request is :data:`OPEN`."""

    by_hash: Mapping[str, Principal] = field(default_factory=dict)

    @classmethod
    def parse(cls, csv: str | None) -> ApiKeys:
        """The admin keys of a comma-separated list (blanks around and empty entries
        ignored), hashed."""
        return cls.load(csv, None)

    @classmethod
    def load(cls, csv: str | None, keys_file: str | Path | None) -> ApiKeys:
        """The keys of ``ANTING_API_KEYS`` (``csv``) and of the file ``keys_file`` (when
        given); raises :class:`KeyFileError` for a bad line, ``OSError`` for an unreadable
        file."""
        keys: dict[str, Principal] = {}
        if keys_file:
            keys.update(parse_keys_file(Path(keys_file).read_text(), str(keys_file)))
        for key in (k.strip() for k in (csv or "").split(",")):
            if key:
                digest = hash_key(key)
                keys[digest] = Principal(ADMIN_TENANT, frozenset({ADMIN}), digest)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        """Whether any key is set (with none, every request is allowed)."""
        return bool(self.by_hash)

    def principal(self, authorization: str | None) -> Principal | None:
        """The principal of an ``Authorization`` header value (``Bearer <key>``; None when
        missing): :data:`OPEN` when no key is set, ``None`` for no or an unknown key."""
        if not self.by_hash:
            return OPEN
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hash_key(token)
        found = self.by_hash.get(digest)
        if found is None or not hmac.compare_digest(found.key_id or "", digest):
            return None
        return found

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value names a known key (True with none set)."""
        return self.principal(authorization) is not None


class TokenError(ValueError):
    """A stream token that is forged, malformed or expired (the message says which)."""


class StreamTokens:
    """Short-lived signed tokens for ``GET /v1/stream?access_token=``: the tenant, the scope
    ``stream:read`` and an expiry (Unix seconds), signed with HMAC-SHA256 under ``secret``.

    ``secret`` is ``ANTING_STREAM_TOKEN_SECRET``; without it a random one is made per
    process, so a token works only on the notify instance that issued it (behind a load
    balancer, give every instance the same secret). ``clock`` gives Unix seconds (tests
    pass a fake one)."""

    SALT = "anting.stream-token"

    def __init__(self, secret: str | None, *, clock: Callable[[], float] = time.time) -> None:
        key = secret or secrets.token_urlsafe(32)
        self._signer = URLSafeSerializer(key, salt=self.SALT,
                                         signer_kwargs={"digest_method": hashlib.sha256})
        self.clock = clock
        self.per_process = not secret

    def issue(self, principal: Principal, ttl_seconds: int) -> tuple[str, int]:
        """A token for ``principal``'s tenant valid ``ttl_seconds`` from now; returns it and
        its expiry (Unix seconds)."""
        expires = int(self.clock()) + ttl_seconds
        token = self._signer.dumps({"t": principal.tenant, "s": [STREAM_READ], "e": expires})
        return token, expires

    def verify(self, token: str) -> Principal:
        """The principal a token names (its tenant, ``stream:read`` only, no key id);
        raises :class:`TokenError` for a forged, malformed or expired one."""
        try:
            doc: Any = self._signer.loads(token)
        except BadSignature:
            raise TokenError("the stream token is not one this server signed") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("e"), int) \
                or not isinstance(doc.get("t"), str) or doc.get("s") != [STREAM_READ]:
            raise TokenError("the stream token is malformed")
        if self.clock() >= doc["e"]:
            raise TokenError("the stream token has expired: get a new one")
        return Principal(doc["t"], frozenset({STREAM_READ}), expires_at=float(doc["e"]))


class RateLimit:
    """A rate per key (``limits``' notation: ``100/second``, ``6000/minute``; ``off`` or empty:
    none), counted in memory per process by a sliding-window counter."""

    def __init__(self, spec: str | None) -> None:
        spec = (spec or "").strip()
        self.item = None if spec.lower() in ("", "off", "none") else limits.parse(spec)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage()) if self.item else None

    @staticmethod
    def check(spec: str) -> str:
        """``spec`` if it parses (see the class), else ``ValueError`` naming the notation."""
        if spec.strip().lower() not in ("", "off", "none"):
            try:
                limits.parse(spec)
            except ValueError:
                raise ValueError(f"{spec!r} is not a rate such as 100/second, 6000/minute or "
                                 "off") from None
        return spec

    def hit(self, key: str) -> float | None:
        """Count one request of ``key``: ``None`` when allowed, else the seconds to wait
        before the next one may pass (at least 1, whole: a ``Retry-After``)."""
        if self.item is None or self._limiter is None:
            return None
        if self._limiter.hit(self.item, key):
            return None
        stats = self._limiter.get_window_stats(self.item, key)
        return float(max(1, math.ceil(stats.reset_time - time.time())))
