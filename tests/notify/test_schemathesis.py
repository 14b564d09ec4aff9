"""schemathesis' command line, run as a user would with all its checks (``/v1/stream``
excluded: it never ends), against `anting serve notify` on the real test broker, and
the document it serves validated as OpenAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, create_topics, settings_for
from tests.ingest.test_schemathesis import run_schemathesis_cli, served_document

pytestmark = pytest.mark.kafka


@pytest.fixture
def notify_url(kafka_bootstrap: str, tmp_path: Path) -> Iterator[str]:
    """The base URL of a running notify service (a child process on a free port)."""
    base = settings_for(kafka_bootstrap)
    asyncio.run(create_topics(base))
    port = free_port()
    # every network allowed: which hosts a webhook may reach is configuration, not schema
    service = ServiceProcess("notify", base, tmp_path / "notify.log",
                             ANTING_NOTIFY_PORT=str(port),
                             ANTING_NOTIFY_ALLOW_NETWORKS="0.0.0.0/0,::/0")
    service.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        code = service.terminate()
        assert code == 0, f"notify exited with {code} on SIGTERM:\n{service.log()[-3000:]}"


def test_document_is_valid_openapi(notify_url: str) -> None:
    """The served document passes openapi-spec-validator and names no ``$defs``."""
    doc = served_document(notify_url)
    validate(doc)
    assert "$defs" not in httpx.get(f"{notify_url}/openapi.json").text


def test_schemathesis_cli_finds_nothing(notify_url: str) -> None:
    """schemathesis with all its checks finds nothing (``/v1/stream`` excluded)."""
    served_document(notify_url)
    run_schemathesis_cli(notify_url, "--exclude-path", "/v1/stream")
