"""Configuration of the insights service (``ANTING_INSIGHTS_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.settings import AntingSettings
from shared.topology import INSIGHTS
from shared.where import default_port

__all__ = ["InsightsSettings"]


class InsightsSettings(AntingSettings):
    """Where insights listens, how other instances reach it, and its faust app.

    ``group`` is the faust app id under ``ANTING_TOPIC_PREFIX``: the consumer group and
    the prefix of the table's changelog topic (``<prefix><group>-entities-changelog``).
    ``advertised_url`` is the URL other instances forward a key's query to (faust's
    ``canonical_url``); by default ``http://<host>:<port>``, which only works when
    ``host`` is an address the others can reach (set it in a container)."""

    model_config = SettingsConfigDict(env_prefix="ANTING_INSIGHTS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default_factory=lambda: default_port("insights"), ge=1, le=65535)
    advertised_url: str = ""
    group: str = str(INSIGHTS.group_prefix)  # the declared one (shared/topology.py)
    # partitions of insights-facts and of the changelog (they must be equal: co-partitioned)
    partitions: int = Field(3, ge=1, le=1000)
    # unset: the contract's, min(3, brokers) of the cluster at start (shared/kafka.py)
    replication_factor: int | None = Field(None, ge=1, le=10)
    # facts folded per batch: each entity a batch touches is written to the changelog once
    batch_size: int = Field(2000, ge=1, le=100_000)
    batch_seconds: float = Field(0.5, gt=0, le=60)
    commit_interval_seconds: float = Field(1.0, gt=0, le=60)
    session_timeout_ms: int = Field(10000, ge=6000, le=300000)
    # a table recovery whose remaining changelog offsets stand still this long is started
    # over (faust's recovery can wait for ever: see RecoveryWatchdog in streams.py)
    recovery_stall_seconds: float = Field(20.0, gt=0, le=3600)
    # faust's working directory (nothing durable lives there: state is in the changelog)
    data_dir: str = ""
    # how long a query forwarded to the owning instance may take
    forward_timeout_seconds: float = Field(5.0, gt=0, le=60)

    api_keys: str = Field("", validation_alias=AliasChoices("ANTING_API_KEYS", "api_keys"))
    # tenants' keys: lines "<sha256-hex> <tenant> <scope,...>"; reading needs insights:read
    api_keys_file: str = Field("", validation_alias=AliasChoices("ANTING_API_KEYS_FILE", "api_keys_file"))

    def url(self) -> str:
        """This instance's URL as the others use it (see ``advertised_url``)."""
        return self.advertised_url.rstrip("/") or f"http://{self.host}:{self.port}"
