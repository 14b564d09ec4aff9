"""Configuration of the enrich service (``ANTING_ENRICH_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.enrich.resolve import DEFAULT_THRESHOLD
from shared.settings import AntingSettings


class EnrichSettings(AntingSettings):
    model_config = SettingsConfigDict(env_prefix="ANTING_ENRICH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8002, ge=0, le=65535)
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    group: str = Field("anting-enrich", min_length=1)
    fuzzy_threshold: float = Field(DEFAULT_THRESHOLD, ge=50, le=100)
    # records per poll; one transaction per input partition per poll
    batch_max_records: int = Field(2000, ge=1)
    batch_wait_ms: int = Field(100, ge=0)
    # a killed worker's open transaction is aborted at once when its successor
    # (same transactional id) starts; this bounds it when no successor comes
    transaction_timeout_ms: int = Field(10000, ge=1000)
