"""Property-based run of the OpenAPI spec (schemathesis) against `anting serve ingest`
wired to the real test broker: no server error, no status the spec does not document;
the document as served valid OpenAPI, and schemathesis' command line, run as a user
would with its checks, finding nothing."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
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
def ingest_url(kafka_bootstrap: str, tmp_path: Path) -> Iterator[str]:
    """The base URL of a running ingest service (a child process on a free port)."""
    base = settings_for(kafka_bootstrap)
    asyncio.run(create_topics(base))
    port = free_port()
    service = ServiceProcess("ingest", base, tmp_path / "ingest.log",
                             ANTING_INGEST_PORT=str(port), ANTING_INGEST_MAX_BODY_BYTES="65536")
    service.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        code = service.terminate()
        assert code == 0, f"ingest exited with {code} on SIGTERM:\n{service.log()[-3000:]}"


@pytest.fixture
def ingest_api(ingest_url: str) -> Any:
    """The OpenAPI schema of a running ingest service."""
    return schemathesis.openapi.from_url(f"{ingest_url}/openapi.json", wait_for_schema=60)


# Every check runs, positive_data_acceptance included: what a document says is valid is
# accepted. Rules that have no JSON Schema are taught to the generator by the hooks
# below: notify's egress policy (which hosts a webhook may reach — notify runs here with
# every network allowed — and which apprise URLs it can check: a URL apprise cannot read,
# or a scheme the deployment does not allow, is refused by configuration, not schema) and
# the bound on a retry schedule's total.
EXCLUDED_CHECKS = ""


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    """Keep the cases whose body the rules without a JSON Schema accept (see
    :func:`acceptable_body`), in every phase (the coverage phase applies case hooks, not
    body hooks); a negative case is kept as it is."""
    meta = getattr(case, "meta", None)
    if meta is not None and str(getattr(getattr(meta, "generation", None), "mode", "")).lower().endswith("negative"):
        return True
    return acceptable_body(getattr(case, "body", None))


def acceptable_body(body: Any) -> bool:
    """Whether the rules without a JSON Schema accept ``body``: a webhook URL whose host
    the webhook client can parse, an apprise URL the egress policy can check, email
    addresses whose domains IDNA can write, a retry schedule within its total bound, a document that is text (no control characters)
    once its markup is removed."""
    if isinstance(body, str):
        from services.ingest.documents import decode_document
        from shared.http import Problem

        try:
            for media in ("text/plain", "text/markdown", "text/html"):
                decode_document(body.encode(), media, source="/s")
        except Problem:
            return False
        return True
    if not isinstance(body, dict):
        return True
    channel = body.get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("url"), str):
        from services.notify.ssrf import literal_refusal

        everywhere = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
        if literal_refusal(channel["url"], everywhere):
            return False
        if channel.get("type") == "apprise":
            from services.notify.egress import EgressPolicy, apprise_refusal

            if apprise_refusal(channel["url"], EgressPolicy(everywhere)):
                return False
    if isinstance(channel, dict) and channel.get("type") == "email" and isinstance(channel.get("to"), list):
        from services.notify.channels.smtp import smtp_address

        try:  # an address is sent with its domain in IDNA: one IDNA cannot write is refused
            for address in channel["to"]:
                smtp_address(address)
        except (ValueError, TypeError):
            return False
    retry = body.get("retry")
    if isinstance(retry, dict):
        from shared.subscriptions import RetryPolicy

        try:
            RetryPolicy.model_validate(retry)
        except ValueError:
            return False
    return True


def run_schemathesis_cli(base_url: str, *extra: str) -> None:
    """``schemathesis run`` on the service's document with every check (but
    :data:`EXCLUDED_CHECKS`), a few examples each; fails with its report on any finding."""
    cli = Path(sys.executable).parent / "schemathesis"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(repo)}
    with tempfile.TemporaryDirectory() as scratch:  # where it keeps its replay files
        out = subprocess.run(
            [str(cli), "run", f"{base_url}/openapi.json", "--checks", "all",
             *(["--exclude-checks", EXCLUDED_CHECKS] if EXCLUDED_CHECKS else []), "--max-examples", "10",
             "--wait-for-schema", "60", "--no-color", *extra],
            capture_output=True, text=True, timeout=240, env=env, check=False, cwd=scratch)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "Failures:" not in out.stdout and " passed" in out.stdout, out.stdout[-3000:]


def served_document(base_url: str) -> dict[str, Any]:
    """The service's ``/openapi.json``, once it serves it (within a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = httpx.get(f"{base_url}/openapi.json", timeout=5)
            if r.status_code == 200:
                doc: dict[str, Any] = r.json()
                return doc
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_document_is_valid_openapi(ingest_url: str) -> None:
    """The document the running service serves passes openapi-spec-validator, and with
    no API keys configured it declares no security."""
    doc = served_document(ingest_url)
    validate(doc)
    assert "securitySchemes" not in doc.get("components", {})


def test_schemathesis_cli_finds_nothing(ingest_url: str) -> None:
    """schemathesis' command line, with all its checks, finds nothing."""
    served_document(ingest_url)
    run_schemathesis_cli(ingest_url)


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
