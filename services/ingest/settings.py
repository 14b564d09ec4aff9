"""Configuration of the ingest service (``ANTING_INGEST_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.access import RateLimit
from shared.settings import AntingSettings
from shared.where import default_port


class IngestSettings(AntingSettings):
    model_config = SettingsConfigDict(env_prefix="ANTING_INGEST_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default_factory=lambda: default_port("ingest"), ge=1, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    # POST /v1/documents: an HTML page is several times its text (the text itself is
    # bounded by shared.documents.MAX_DOCUMENT_TEXT_BYTES)
    max_document_body_bytes: int = Field(4 * 1024 * 1024, ge=1)
    # the `source` of events posted as bare data to /v1/announcements and /v1/agreements
    source: str = "/anting/ingest"
    # the whole budget of one publish (sends + broker acks) before answering 503
    publish_timeout_seconds: float = Field(4.0, gt=0, le=60)
    # 0: a lone request's records go out at once (a linger is added to every request's
    # latency at low load); under load records still batch while a send is in flight
    linger_ms: int = Field(0, ge=0)
    max_batch_bytes: int = Field(512 * 1024, ge=1024)

    # shared names, read without the service prefix
    api_keys: str = Field("", validation_alias=AliasChoices("ANTING_API_KEYS", "api_keys"))
    # tenants' keys: lines "<sha256-hex> <tenant> <scope,...>" (shared/access.py)
    api_keys_file: str = Field("", validation_alias=AliasChoices("ANTING_API_KEYS_FILE", "api_keys_file"))
    # per tenant key on the publish endpoints (limits' notation; "off": none); admin keys,
    # and every request while no key is set, are not limited
    rate_limit: str = Field("100/second", validation_alias=AliasChoices("ANTING_RATE_LIMIT", "rate_limit"))

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, v: str) -> str:
        return RateLimit.check(v)  # ValueError names the notation


__all__ = ["IngestSettings"]
