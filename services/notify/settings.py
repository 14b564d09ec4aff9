"""Configuration of the notify service (``ANTING_NOTIFY_*``, ``ANTING_SMTP_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

import ipaddress

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.settings import AntingSettings


def _alias(env: str, name: str) -> AliasChoices:
    return AliasChoices(env, name)


class NotifySettings(AntingSettings):
    model_config = SettingsConfigDict(env_prefix="ANTING_NOTIFY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8003, ge=0, le=65535)
    group: str = "anting-notify"
    # CIDR ranges outbound webhooks may reach although private/loopback/link-local
    allow_networks: str = ""
    # deliveries in flight at once (outbound HTTP/SMTP calls)
    concurrency: int = Field(64, ge=1, le=10000)
    timeout_seconds: float = Field(15.0, gt=0, le=600)
    # attempts per delivery before it is dead (the first one included)
    max_attempts: int = Field(6, ge=1, le=50)
    # exponential backoff with full jitter: uniform(0, min(max, base * 2**n)) seconds
    backoff_base_seconds: float = Field(2.0, gt=0)
    backoff_max_seconds: float = Field(3600.0, gt=0)
    # a Retry-After longer than this is capped (a receiver cannot park a delivery for days)
    retry_after_max_seconds: float = Field(3600.0, gt=0)
    # how long the previous webhook secret stays valid after a rotation
    secret_grace_seconds: int = Field(24 * 3600, ge=0)
    commit_interval_seconds: float = Field(1.0, gt=0)
    # how soon the group notices a crashed instance (its partitions wait until then)
    session_timeout_ms: int = Field(10000, ge=6000, le=300000)
    # the log channel's default destination when a subscription gives no path ("-" = stdout)
    log_path: str = "-"

    smtp_host: str = Field("localhost", validation_alias=_alias("ANTING_SMTP_HOST", "smtp_host"))
    smtp_port: int = Field(25, validation_alias=_alias("ANTING_SMTP_PORT", "smtp_port"))
    smtp_from: str = Field("anting@localhost", validation_alias=_alias("ANTING_SMTP_FROM", "smtp_from"))
    smtp_username: str | None = Field(None, validation_alias=_alias("ANTING_SMTP_USERNAME", "smtp_username"))
    smtp_password: str | None = Field(None, validation_alias=_alias("ANTING_SMTP_PASSWORD", "smtp_password"))
    smtp_starttls: bool = Field(False, validation_alias=_alias("ANTING_SMTP_STARTTLS", "smtp_starttls"))

    # shared names, read without the service prefix
    api_keys: str = Field("", validation_alias=_alias("ANTING_API_KEYS", "api_keys"))

    @field_validator("allow_networks")
    @classmethod
    def _cidrs(cls, v: str) -> str:
        for part in v.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad one
        return v

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p.strip(), strict=False) for p in self.allow_networks.split(",") if p.strip()]
