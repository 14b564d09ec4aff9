"""Property-based run of the OpenAPI spec (schemathesis) against `anting serve ingest`
wired to the real test broker: no server error, no status the spec does not document."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, create_topics, settings_for

MAX_EXAMPLES = 30


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: Any, value: Any) -> bytes:
    """NDJSON bodies as generated: text as is, anything else as one JSON line."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode() + b"\n"  # json: any int, unlike orjson


@pytest.fixture
def ingest_api(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Any]:
    """The OpenAPI schema of a running ingest service (a child process on a free port)."""
    base = settings_for(kafka_bootstrap)
    asyncio.run(create_topics(base))
    port = free_port()
    service = ServiceProcess("ingest", base, tmp_path / "ingest.log",
                             ANTING_INGEST_PORT=str(port), ANTING_INGEST_MAX_BODY_BYTES="65536")
    service.start()
    try:
        schema = schemathesis.openapi.from_url(
            f"http://127.0.0.1:{port}/openapi.json", wait_for_schema=60)
        yield schema
    finally:
        code = service.terminate()
        assert code == 0, f"ingest exited with {code} on SIGTERM:\n{service.log()[-3000:]}"


# schemathesis' own pytest integration (from_fixture/parametrize) does not run under
# this pytest (it sets a node attribute pytest 9 no longer has), so each operation's
# Hypothesis strategy is driven here directly: the same generation and checks.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_conformance(ingest_api: Any, mode: GenerationMode) -> None:
    """Every generated request (valid and invalid) gets a documented status and no server error
    other than the documented 503."""
    operations = [result.ok() for result in ingest_api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/events", "/v1/announcements", "/v1/agreements"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to make invalid in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error, status_code_conformance],
                                   timeout=30)

        check()
