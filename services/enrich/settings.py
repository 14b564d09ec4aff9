"""Configuration of the enrich service (``ANTING_ENRICH_*`` plus the shared ``KAFKA_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.enrich.resolve import DEFAULT_THRESHOLD
from shared.settings import AntingSettings
from shared.topology import ENRICH_DOCUMENTS, ENRICH_EVENTS
from shared.where import default_port


class EnrichSettings(AntingSettings):
    model_config = SettingsConfigDict(env_prefix="ANTING_ENRICH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default_factory=lambda: default_port("enrich"), ge=0, le=65535)
    guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    # the groups' defaults are the declared ones (shared/topology.py)
    group: str = Field(str(ENRICH_EVENTS.group), min_length=1)
    fuzzy_threshold: float = Field(DEFAULT_THRESHOLD, ge=50, le=100)
    # records per poll
    batch_max_records: int = Field(2000, ge=1)
    batch_wait_ms: int = Field(100, ge=0)
    # exactly once: one transaction spans polls until one of these bounds is reached
    # (Kafka Streams' commit.interval.ms, 100 ms under exactly-once, is the first), or
    # until the consumer has had nothing more for commit_linger_ms (0: commit as soon as
    # a poll comes back empty, so a quiet stream is not held back). README: how chosen.
    commit_interval_ms: int = Field(100, ge=1)
    commit_max_records: int = Field(10000, ge=1)
    commit_linger_ms: int = Field(0, ge=0)
    # the broker aborts a transaction open this long (a worker killed mid-transaction);
    # it must outlast commit_interval_ms
    transaction_timeout_ms: int = Field(10000, ge=1000)
    # the transactional id is <group>-<instance_id>: give each worker a stable one (a pod
    # name) so that a restarted worker aborts its predecessor's open transaction at once;
    # without it, a random one per process (the transaction then ends at its timeout)
    instance_id: str | None = Field(None, min_length=1)
    # how long the group waits for a silent worker before giving its partitions away
    session_timeout_ms: int = Field(10000, ge=1000)
    # the documents stage (services/enrich/documents.py): documents → the events they
    # report, at least once, in a consumer group of its own; off: this process runs
    # only the enrich worker (run the stage in another one)
    documents: bool = True
    documents_group: str = Field(str(ENRICH_DOCUMENTS.group), min_length=1)

    @model_validator(mode="after")
    def _transaction_outlasts_commit_interval(self) -> EnrichSettings:
        if self.transaction_timeout_ms <= self.commit_interval_ms:
            raise ValueError(
                f"transaction_timeout_ms ({self.transaction_timeout_ms}) must be larger than "
                f"commit_interval_ms ({self.commit_interval_ms}): the broker would abort "
                "every transaction kept open for the interval")
        return self


__all__ = ["EnrichSettings"]
