"""Configuration from the environment (pydantic-settings), one settings object per service.

Every service's settings extend :class:`AntingSettings`, which carries the Kafka
connection (``KAFKA_*``) and the topic prefix. :func:`load` turns a bad setting
into one message that names the environment variable.
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.where import default_port

if TYPE_CHECKING:  # topics import the contract, which needs no settings
    from shared.topics import Topic


class KafkaSettings(BaseSettings):
    """The broker and how to reach it (``KAFKA_*``), checked once at start: a combination
    that cannot work, or that would send a password in clear text, is refused here with
    one message naming the variables, before any connection is tried.

    TLS (``SSL``, ``SASL_SSL``) always verifies the broker's certificate and its host
    name (``ssl.create_default_context``): against ``KAFKA_SSL_CAFILE`` when set, else
    the system's CAs. There is deliberately no switch to turn either off: a client that
    does not check the name sends its SASL credentials to whoever answers."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    # the local broker's port, moved by ANTING_PORT_OFFSET (shared/where.py)
    bootstrap_servers: str = Field(default_factory=lambda: f"localhost:{default_port('kafka')}")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    # Kafka's request.timeout.ms for producers: how long a write waits for the broker's
    # answer before it fails (and the stage writes it again on a new producer)
    request_timeout_ms: int = Field(30000, ge=1000, le=900000)
    # PLAIN over an unencrypted connection sends the password as it is: refused unless
    # someone says, for a broker on a network they trust, that it is what they want
    allow_insecure_sasl: bool = Field(
        False, validation_alias=AliasChoices("ANTING_ALLOW_INSECURE_SASL", "allow_insecure_sasl"))

    @property
    def mechanism(self) -> str:
        """The SASL mechanism the clients use (``PLAIN`` when unset, as aiokafka's default)."""
        return self.sasl_mechanism or "PLAIN"

    @property
    def tls(self) -> bool:
        """Whether connections are TLS (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        """Whether connections authenticate with SASL."""
        return self.security_protocol.startswith("SASL")

    @model_validator(mode="after")
    def _secure_enough(self) -> Self:
        """Refuse what cannot work or leaks a secret; each message names the variables."""
        if self.sasl:
            missing = [name for name, value in (("KAFKA_SASL_USERNAME", self.sasl_username),
                                                ("KAFKA_SASL_PASSWORD", self.sasl_password)) if not value]
            if missing:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} authenticates with "
                    f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD; {' and '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not set")
            if (self.security_protocol == "SASL_PLAINTEXT" and self.mechanism == "PLAIN"
                    and not self.allow_insecure_sasl):
                raise ValueError(
                    "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with KAFKA_SASL_MECHANISM=PLAIN"
                    f"{'' if self.sasl_mechanism else ' (its default)'} sends KAFKA_SASL_PASSWORD unencrypted to the broker; use KAFKA_SECURITY_PROTOCOL=SASL_SSL "
                    "(with KAFKA_SSL_CAFILE), or set ANTING_ALLOW_INSECURE_SASL=true for a broker on a "
                    "network you trust")
        elif self.sasl_username or self.sasl_password or self.sasl_mechanism:
            raise ValueError(
                f"KAFKA_SASL_* is set but KAFKA_SECURITY_PROTOCOL={self.security_protocol} does not "
                "authenticate with SASL; set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or unset KAFKA_SASL_*)")
        if self.tls and self.ssl_cafile is not None:
            _check_cafile(self.ssl_cafile)
        return self

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
        if self.sasl:
            opts["sasl_mechanism"] = self.mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password
        if self.tls:
            # verifies the certificate chain and the host name (check_hostname): keep it so
            opts["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        return opts


def _check_cafile(path: str) -> None:
    """Raise ``ValueError`` naming ``KAFKA_SSL_CAFILE`` when ``path`` is not a readable
    file of PEM certificates (what ``ssl.create_default_context(cafile=...)`` loads)."""
    where = f"KAFKA_SSL_CAFILE={path}"
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file")  # a directory too
    try:
        ssl.create_default_context(cafile=path)
    except PermissionError:
        raise ValueError(f"{where}: not readable by this process (permission denied)") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a file of PEM CA certificates ({exc})") from None


#: the values ANTING_LOG_LEVEL takes (any case): Python's logging levels, most verbose first
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class AntingSettings(BaseSettings):
    """What every service shares: the broker and the topic prefix."""

    model_config = SettingsConfigDict(env_prefix="ANTING_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    # read under their own names whatever a service's env_prefix is
    topic_prefix: str = Field("", validation_alias=AliasChoices("ANTING_TOPIC_PREFIX", "topic_prefix"))
    log_level: str = Field("INFO", validation_alias=AliasChoices("ANTING_LOG_LEVEL", "log_level"))

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        # refused here, by name, rather than by logging's setLevel as a traceback at start
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level: one of {', '.join(LOG_LEVELS)}")
        return level

    def topic(self, topic: Topic) -> str:
        """The full name of a registered topic under this prefix."""
        return str(topic.qualified(self.topic_prefix))


class SettingsError(SystemExit):
    """Raised at start-up for a bad setting; its message names the variable."""


S = TypeVar("S", bound=BaseSettings)


def variable_names(cls: type[BaseSettings]) -> dict[str, str]:
    """``{name: environment variable}`` for every field of ``cls`` and every alias of one:
    a field is read from ``<env_prefix><NAME>``, or, when it has a validation alias, from
    its first choice alone (``ANTING_RATE_LIMIT`` whatever the service's prefix)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        choices = [c for c in alias.choices if isinstance(c, str)] if isinstance(alias, AliasChoices) \
            else [alias] if isinstance(alias, str) else []
        env = choices[0].upper() if choices else (prefix + name).upper()
        names[name] = env
        for choice in choices:
            names[choice] = env
    return names


def _build(cls: type[S], **kwargs: Any) -> S:  # Any: pydantic-settings' own init arguments
    try:
        return cls(**kwargs)
    except ValidationError as exc:
        names = variable_names(cls)
        lines = []
        for e in exc.errors(include_url=False):
            # a check across fields (no loc) names its variables itself, without pydantic's
            # "Value error, " in front
            error = (e.get("ctx") or {}).get("error")
            msg = str(error) if e["type"] == "value_error" and error is not None else e["msg"]
            if not e["loc"]:
                lines.append(f"  {msg}")
                continue
            # the error's loc is the field's name, or the alias it was read by: either way
            # the variable a user typed (never the prefix glued to an alias)
            first, *rest = (str(p) for p in e["loc"])
            variable = "_".join([names.get(first, first.upper()), *(p.upper() for p in rest)])
            # the value is not echoed: the variable may hold a password or a key
            lines.append(f"  {variable}: {msg}")
        raise SettingsError("bad setting:\n" + "\n".join(lines)) from None


def load(cls: type[S], **overrides: Any) -> S:  # Any: field values of any type
    """Build settings from the environment or exit with a message naming each bad variable."""
    if "kafka" not in overrides and "kafka" in cls.model_fields:
        overrides["kafka"] = _build(KafkaSettings)
    return _build(cls, **overrides)


__all__ = ["LOG_LEVELS", "AntingSettings", "KafkaSettings", "SettingsError", "load", "variable_names"]
