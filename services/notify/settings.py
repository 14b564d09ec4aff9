"""Configuration of the notify service (``ANTING_NOTIFY_*``, ``ANTING_SMTP_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

import ipaddress
import os
import re

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.notify.egress import DEFAULT_APPRISE_SCHEMES, EgressPolicy, parse_schemes
from shared.access import RateLimit
from shared.settings import AntingSettings
from shared.subscriptions import RETRY_PRESETS, RetryPolicy
from shared.topics import LEDGER_RETENTION_MS
from shared.topology import NOTIFY
from shared.where import default_port

# Settings that the retry schedule replaced: set, they stop notify at start-up with a
# message naming the replacement, instead of being ignored without a word.
_REPLACED = {
    "max_attempts": "ANTING_NOTIFY_RETRY_SCHEDULE (its length is the number of retries)",
    "backoff_base_seconds": "ANTING_NOTIFY_RETRY_SCHEDULE",
    "backoff_max_seconds": "ANTING_NOTIFY_RETRY_SCHEDULE",
}
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DELAY = re.compile(r"^(\d+)\s*([smhd]?)$")


def parse_schedule(text: str) -> RetryPolicy:
    """``ANTING_NOTIFY_RETRY_SCHEDULE`` (or ``anting subscriptions add --retry``) as a retry
    policy: a preset name (``standard-webhooks``, ``svix``), ``none`` (a single attempt), or
    comma-separated delays, each a whole number with an optional unit ``s``, ``m``, ``h`` or
    ``d`` (``5s,5m,30m,2h``; a bare number is seconds). Raises ``ValueError`` saying what is
    wrong, including a schedule outside :class:`RetryPolicy`'s bounds."""
    text = text.strip().lower()
    if text in RETRY_PRESETS:
        return RetryPolicy.model_validate({"preset": text})
    if text in ("none", ""):
        return RetryPolicy.model_validate({"delays_seconds": []})
    delays = []
    for part in text.split(","):
        m = _DELAY.match(part.strip())
        if m is None:
            raise ValueError(f"{part.strip()!r} is not a delay (e.g. 5s, 5m, 2h) nor one of "
                             f"{', '.join(RETRY_PRESETS)}, none")
        delays.append(int(m.group(1)) * _UNITS[m.group(2)])
    try:
        return RetryPolicy.model_validate({"delays_seconds": delays})
    except ValidationError as exc:  # one line, naming the bound
        raise ValueError("; ".join(str(e["msg"]).removeprefix("Value error, ")
                                   for e in exc.errors(include_url=False))) from None


def _alias(env: str, name: str) -> AliasChoices:
    return AliasChoices(env, name)


class NotifySettings(AntingSettings):
    model_config = SettingsConfigDict(env_prefix="ANTING_NOTIFY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default_factory=lambda: default_port("notify"), ge=0, le=65535)
    group: str = str(NOTIFY.group_prefix)  # the declared one (shared/topology.py)
    # CIDR ranges outbound webhooks may reach although private/loopback/link-local
    allow_networks: str = ""
    # apprise schemes subscriptions may use (egress.py: only schemes whose every target
    # host can be checked; "none": no apprise deliveries)
    apprise_schemes: str = ",".join(DEFAULT_APPRISE_SCHEMES)
    # deliveries in flight at once (outbound HTTP/SMTP calls)
    concurrency: int = Field(64, ge=1, le=10000)
    # of those, at most this many for one subscription: its further deliveries wait for its
    # own, so a slow endpoint delays only itself (slots.py)
    max_in_flight_per_subscription: int = Field(4, ge=1, le=10000)
    # and at most this many for one tenant (unset: three quarters of concurrency), so that
    # other tenants find slots free when all of one tenant's calls hang at once
    max_in_flight_per_tenant: int | None = Field(None, ge=1, le=10000)
    timeout_seconds: float = Field(15.0, gt=0, le=600)
    # the retry schedule of subscriptions that set none (see parse_schedule): Standard
    # Webhooks' example, 10 attempts over ~3 days, so that a receiver down for hours or a
    # day still gets everything (the previous 6 attempts ended ~20 s after the first failure)
    retry_schedule: str = "standard-webhooks"
    # every delay is multiplied by uniform(1 - jitter, 1 + jitter): deliveries that failed
    # together do not all come back at the same moment
    retry_jitter: float = Field(0.1, ge=0, le=0.5)
    # a Retry-After longer than this is capped (a receiver cannot park a delivery for days)
    retry_after_max_seconds: float = Field(3600.0, gt=0)
    # a subscription none of whose deliveries succeeded for this long while they kept failing
    # is disabled (Svix's rule; 0: never). At most 6 days: the ledger, folded from the last
    # 7 days of notifications, must see when the failures began.
    disable_after_days: float = Field(5.0, ge=0, le=LEDGER_RETENTION_MS / 86_400_000 - 1)
    # For tests and demos only: the retry schedule, disable_after_days and digest windows run
    # this many times faster (3600: an hour takes a second). Receivers' Retry-After is not scaled.
    retry_time_scale: float = Field(1.0, ge=1.0)
    # how long the previous webhook secret stays valid after a rotation
    secret_grace_seconds: int = Field(24 * 3600, ge=0)
    commit_interval_seconds: float = Field(1.0, gt=0)
    # how soon the group notices a crashed instance (its partitions wait until then)
    session_timeout_ms: int = Field(10000, ge=6000, le=300000)
    # the log channel's default destination when a subscription gives no path ("-" = stdout)
    log_path: str = "-"
    # the one directory a log subscription's file name lives in (created when first used)
    log_dir: str = ".local/notify-logs"

    smtp_host: str = Field("localhost", validation_alias=_alias("ANTING_SMTP_HOST", "smtp_host"))
    smtp_port: int = Field(25, validation_alias=_alias("ANTING_SMTP_PORT", "smtp_port"))
    smtp_from: str = Field("anting@localhost", validation_alias=_alias("ANTING_SMTP_FROM", "smtp_from"))
    smtp_username: str | None = Field(None, validation_alias=_alias("ANTING_SMTP_USERNAME", "smtp_username"))
    smtp_password: str | None = Field(None, validation_alias=_alias("ANTING_SMTP_PASSWORD", "smtp_password"))
    smtp_starttls: bool = Field(False, validation_alias=_alias("ANTING_SMTP_STARTTLS", "smtp_starttls"))

    # shared names, read without the service prefix
    api_keys: str = Field("", validation_alias=_alias("ANTING_API_KEYS", "api_keys"))
    # tenants' keys: lines "<sha256-hex> <tenant> <scope,...>" (shared/access.py)
    api_keys_file: str = Field("", validation_alias=_alias("ANTING_API_KEYS_FILE", "api_keys_file"))
    # per tenant key on the write endpoints (limits' notation; "off": none); admin keys are not limited
    rate_limit: str = Field("100/second", validation_alias=_alias("ANTING_RATE_LIMIT", "rate_limit"))
    # web pages allowed to call the API from a browser (comma-separated origins; "*": any)
    cors_origins: str = Field("", validation_alias=_alias("ANTING_CORS_ORIGINS", "cors_origins"))
    # concurrent SSE streams (GET /v1/stream) one API key, and one tenant (its keys and stream
    # tokens together), may hold open on this instance: each holds a Kafka consumer and its
    # buffers, so without a cap one key's 500 streams slowed every tenant's deliveries
    max_streams_per_key: int = Field(10, ge=1, le=100000)
    max_streams_per_tenant: int = Field(50, ge=1, le=100000)
    # signs stream tokens; unset: random per process (a token works only where it was issued)
    stream_token_secret: str = Field(
        "", validation_alias=_alias("ANTING_STREAM_TOKEN_SECRET", "stream_token_secret"))
    # a stream token's life, and the longest a request may ask for
    stream_token_ttl_seconds: int = Field(
        300, ge=1, le=3600,
        validation_alias=_alias("ANTING_STREAM_TOKEN_TTL_SECONDS", "stream_token_ttl_seconds"))

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, v: str) -> str:
        return RateLimit.check(v)  # ValueError names the notation

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: object) -> object:
        given = set(data) if isinstance(data, dict) else set()
        for name, instead in _REPLACED.items():
            if name in given or f"ANTING_NOTIFY_{name.upper()}" in os.environ:
                raise ValueError(f"ANTING_NOTIFY_{name.upper()} is no longer read: use {instead}")
        return data

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        parse_schedule(v)  # ValueError says what is wrong
        return v

    def default_retry(self) -> RetryPolicy:
        """The retry policy of subscriptions that set none."""
        return parse_schedule(self.retry_schedule)

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for part in v.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad one
        return v

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in self.allow_networks.split(",") if p.strip()]

    @field_validator("apprise_schemes")
    @classmethod
    def _schemes(cls, v: str) -> str:
        parse_schemes(v)  # ValueError names a scheme that cannot be checked
        return v

    def egress(self) -> EgressPolicy:
        """Where deliveries may go: the allowed networks and apprise schemes."""
        return EgressPolicy(self.networks(), parse_schemes(self.apprise_schemes))


__all__ = ["NotifySettings", "parse_schedule"]
