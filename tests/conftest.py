"""The real Kafka broker for the whole run, and per-test settings with their own topics."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.testing import broker_for_tests, create_topics, settings_for
from shared.settings import AntingSettings

# Every `anting run` a test starts and every `anting` command it runs keep their state (a
# broker's data, the stack profile `.local/stack.env`) in this test process's own folder:
# never the checkout's `.local`, where a developer's running stack or another worker's
# would be found (and written over). A test that needs a folder of its own still sets it.
_STATE = tempfile.mkdtemp(prefix="anting-test-state-")
os.environ["ANTING_RUN_STATE_DIR"] = _STATE
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)


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
