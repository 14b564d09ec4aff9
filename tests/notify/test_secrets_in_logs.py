"""API keys and stream tokens never reach notify's logs: neither `anting serve notify`'s
own output at DEBUG, nor uvicorn's access log (which writes each request's path and query)
when it is turned on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess, create_topics
from shared.access import OPEN, StreamTokens
from shared.settings import AntingSettings

from .tenancy import Keys, notify_in_thread, write_keys

pytestmark = pytest.mark.kafka


def _requests(client: httpx.Client, keys: Keys) -> list[str]:
    """Requests with keys and tokens, good, bad and expired; returns every secret sent."""
    secrets = [keys.a, keys.admin, keys.stream_only]
    r = client.post("/v1/subscriptions", headers=keys.header(keys.a),
                    json={"name": "s", "channel": {"type": "log"}})
    assert r.status_code == 201, r.text
    assert client.get("/v1/subscriptions", headers=keys.header(keys.admin)).status_code == 200
    wrong = "ak_wrong-key-that-is-not-in-the-file"
    secrets.append(wrong)
    assert client.get("/v1/subscriptions", headers={"authorization": f"Bearer {wrong}"}).status_code == 401
    short = client.post("/v1/stream-tokens", headers=keys.header(keys.stream_only),
                        params={"ttl_seconds": 1}).json()["token"]
    good = client.post("/v1/stream-tokens", headers=keys.header(keys.stream_only)).json()["token"]
    secrets += [short, good]
    with client.stream("GET", "/v1/stream", params={"types": "agreement.signed", "access_token": good}) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == ": connected":
                break
    time.sleep(1.1)
    assert client.get("/v1/stream", params={"access_token": short}).status_code == 401
    forged = StreamTokens("not notify's secret").issue(OPEN, 60)[0]  # signed by someone else
    secrets.append(forged)
    assert client.get("/v1/stream", params={"access_token": forged}).status_code == 401
    return secrets


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore")):
            return  # the test's own client, which logs the URLs it asks for
        self.lines.append(f"{record.name} {record.getMessage()} {record.__dict__}")


@pytest.fixture
def every_log_line() -> Iterator[_Everything]:
    handler = _Everything()
    root, access = logging.getLogger(), logging.getLogger("uvicorn.access")
    levels = root.level, access.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    access.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        access.setLevel(levels[1])


def test_the_access_log_shows_requests_without_their_token(
        settings: AntingSettings, tmp_path: Path, every_log_line: _Everything) -> None:
    """uvicorn with its access log on (the default of uvicorn.Config): each request is
    logged, the stream's with its other parameters, none with a key or a token."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    with notify_in_thread(settings, tmp_path / "keys", keys.admin) as (url, _), \
            httpx.Client(base_url=url, timeout=20) as client:
        secrets = _requests(client, keys)
    access = [line for line in every_log_line.lines if line.startswith("uvicorn.access")]
    assert any("/v1/stream?types=agreement.signed" in line for line in access), access
    assert any("/v1/stream-tokens" in line for line in access)
    leaked = [(s[:12], line) for s in secrets for line in every_log_line.lines if s in line]
    assert leaked == []


def test_serve_notify_logs_no_key_and_no_token(settings: AntingSettings, tmp_path: Path) -> None:
    """`anting serve notify` at DEBUG, after requests with keys and tokens (good, wrong,
    expired, forged): its whole output names none of them."""
    asyncio.run(create_topics(settings))
    keys = write_keys(tmp_path / "keys")
    port = free_port()
    log = tmp_path / "notify.log"
    service = ServiceProcess("notify", settings, log, ANTING_NOTIFY_PORT=str(port),
                             ANTING_API_KEYS=keys.admin, ANTING_API_KEYS_FILE=str(tmp_path / "keys"),
                             ANTING_LOG_LEVEL="DEBUG")
    service.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, service.log()[-3000:]
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=20) as client:
            secrets = _requests(client, keys)
    finally:
        code = service.terminate()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "notify ready" in text  # the log is the service's
    assert [s[:12] for s in secrets if s in text] == []
