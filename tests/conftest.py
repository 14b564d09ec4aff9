"""The real Kafka broker for the whole run, and per-test settings with their own topics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.testing import broker_for_tests, create_topics, settings_for
from shared.settings import AntingSettings


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[tuple[str, str, Any]]:
    """(bootstrap, how, handle): KAFKA_BOOTSTRAP_SERVERS, else testcontainers' Kafka,
    else the local KRaft broker (handle is then its LocalKafka)."""
    t0 = time.monotonic()
    with broker_for_tests() as (bootstrap, how, handle):
        print(f"\nkafka: {how} broker at {bootstrap} ready in {time.monotonic() - t0:.1f}s")
        yield bootstrap, how, handle


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: tuple[str, str, Any]) -> str:
    return kafka_broker[0]


@pytest.fixture
def settings(kafka_bootstrap: str) -> AntingSettings:
    """Settings on the session broker with a topic prefix of this test's own."""
    return settings_for(kafka_bootstrap)


@pytest.fixture
async def topics(settings: AntingSettings) -> AntingSettings:
    """Like ``settings``, with every registered topic created."""
    await create_topics(settings)
    return settings
