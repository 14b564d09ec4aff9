"""Configuration from the environment (pydantic-settings), one settings object per service.

Every service's settings extend :class:`AntingSettings`, which carries the Kafka
connection (``KAFKA_*``) and the topic prefix. :func:`load` turns a bad setting
into one message that names the environment variable.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # topics import the contract, which needs no settings
    from shared.topics import Topic


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "localhost:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {v!r}")
        return v

    def client_options(self) -> dict[str, Any]:
        """Connection and security options for any aiokafka client."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return opts


class AntingSettings(BaseSettings):
    """What every service shares: the broker and the topic prefix."""

    model_config = SettingsConfigDict(env_prefix="ANTING_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # read under their own names whatever a service's env_prefix is
    topic_prefix: str = Field("", validation_alias=AliasChoices("ANTING_TOPIC_PREFIX", "topic_prefix"))
    log_level: str = Field("INFO", validation_alias=AliasChoices("ANTING_LOG_LEVEL", "log_level"))

    def topic(self, topic: Topic) -> str:
        """The full name of a registered topic under this prefix."""
        return str(topic.qualified(self.topic_prefix))


class SettingsError(SystemExit):
    """Raised at start-up for a bad setting; its message names the variable."""


S = TypeVar("S", bound=BaseSettings)


def _build(cls: type[S], **kwargs: Any) -> S:  # Any: pydantic-settings' own init arguments
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = [
            f"  {(prefix + '_'.join(str(p) for p in e['loc'])).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False)
        ]
        raise SettingsError("bad setting:\n" + "\n".join(lines)) from None


def load(cls: type[S], **overrides: Any) -> S:  # Any: field values of any type
    """Build settings from the environment or exit with a message naming each bad variable."""
    if "kafka" not in overrides and "kafka" in cls.model_fields:
        overrides["kafka"] = _build(KafkaSettings)
    return _build(cls, **overrides)


__all__ = ["AntingSettings", "KafkaSettings", "SettingsError", "load"]
