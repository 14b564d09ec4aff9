"""A real browser on the stream: headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it, and the test fails without it) loads a page of another origin that opens
``new EventSource(notify + "/v1/stream?access_token=" + token)`` and writes what it
receives into the page. The enriched event published while the page is open arrives;
when the token expires the stream ends, the browser's reconnection gets 401 and the
EventSource is closed for good (``readyState`` 2).

Chromium is driven over the DevTools protocol (a WebSocket) rather than with
``--dump-dom``: ``--virtual-time-budget`` never elapses while a fetch is pending, and an
EventSource is a fetch that never ends, so the page is read while it runs instead."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest

from devtools.localkafka import free_port
from devtools.testing import create_topics, produce
from shared.settings import AntingSettings
from shared.topics import ENRICHED_EVENTS

from .helpers import ACME, agreement, encode
from .tenancy import notify_in_thread, write_keys

pytestmark = pytest.mark.kafka

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>stream</title></head>
<body data-opened="0" data-state="">
<ul id="events"></ul>
<script>
const params = new URLSearchParams(location.search);
const url = params.get("notify") + "/v1/stream?from=earliest&access_token="
  + encodeURIComponent(params.get("token"));
const source = new EventSource(url);
source.onopen = () => { document.body.dataset.opened = String(Number(document.body.dataset.opened) + 1); };
source.addEventListener("agreement.signed", (e) => {
  const li = document.createElement("li");
  li.textContent = JSON.parse(e.data).id;
  document.getElementById("events").appendChild(li);
});
source.onerror = () => { document.body.dataset.state = String(source.readyState); };
</script></body></html>
"""

READ_PAGE = ("JSON.stringify({opened: document.body.dataset.opened, state: document.body.dataset.state,"
             " events: [...document.querySelectorAll('#events li')].map(li => li.textContent)})")


def chromium_binary() -> str:
    """Debian's ``chromium``; the test fails, not skips, without it (as the Prometheus tests)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is missing: install Debian's `chromium` package (.ci/run does)"
    return binary


@contextlib.contextmanager
def page_server(root: Path) -> Iterator[str]:
    """The page, served from ``root`` on a port of its own: another origin than notify's."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", free_port()),
                                 partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Browser:
    """Headless Chromium with the DevTools protocol on a free port."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().strip()):
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 30 s"
            time.sleep(0.1)
        self.port = int(active.read_text().split()[0])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)

    @contextlib.asynccontextmanager
    async def tab(self, url: str) -> AsyncIterator[Tab]:
        """A new tab on ``url``, driven over its DevTools WebSocket."""
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=20) as http:
            target = (await http.put("/json/new?about:blank")).json()
            try:
                async with aiohttp.ClientSession() as session, \
                        session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    tab = Tab(ws)
                    # navigated here: /json/new takes its URL raw, cut at the first "&"
                    await tab.call("Page.navigate", url=url)
                    yield tab
            finally:
                await http.get(f"/json/close/{target['id']}")


class Tab:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> Any:
        """A DevTools protocol command's result."""
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=20)
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (``Runtime.evaluate``)."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, what: str, check: Any, timeout: float = 30) -> dict[str, Any]:
        """Read the page until ``check(state)`` holds; fails naming ``what`` and the last state."""
        import orjson

        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            raw = await self.evaluate(READ_PAGE)
            state = orjson.loads(raw) if raw else {}
            if state and check(state):
                return state
            await asyncio.sleep(0.2)
        raise AssertionError(f"the page never showed {what}; last: {state}")


async def test_a_browser_streams_with_a_token_until_it_expires(settings: AntingSettings, tmp_path: Path) -> None:
    await create_topics(settings)
    keys = write_keys(tmp_path / "keys")
    browser = Browser(tmp_path / "profile")
    browser.start()
    try:
        with page_server(tmp_path / "site") as origin, \
                notify_in_thread(settings, tmp_path / "keys", keys.admin, cors_origins=origin) as (notify, _):
            async with httpx.AsyncClient(base_url=notify, timeout=20) as client:
                issued = await client.post("/v1/stream-tokens", headers=keys.header(keys.stream_only),
                                           params={"ttl_seconds": 8})
                assert issued.status_code == 200, issued.text
            token = issued.json()["token"]
            page = f"{origin}/index.html?{urlencode({'notify': notify, 'token': token})}"
            async with browser.tab(page) as tab:
                await tab.wait_for("the stream open", lambda s: s["opened"] == "1", timeout=15)
                event = agreement([ACME], event_id=f"browser-{time.time_ns()}")
                await produce(settings, settings.topic(ENRICHED_EVENTS), [encode(event)], [event.key])
                shown = await tab.wait_for("the event", lambda s: event.id in s["events"], timeout=20)
                assert shown["state"] == ""  # no error while the token lives
                # the token expires (8 s): notify ends the stream, the browser reconnects on
                # its own, gets 401, and an EventSource that gets an error status closes for good
                closed = await tab.wait_for("the EventSource closed", lambda s: s["state"] == "2", timeout=30)
                assert closed["events"] == [event.id] and closed["opened"] == "1"
            # the same page with the same token, later: refused at once, nothing received
            async with browser.tab(page) as tab:
                again = await tab.wait_for("the EventSource closed", lambda s: s["state"] == "2", timeout=15)
                assert again["opened"] == "0" and again["events"] == []
    finally:
        browser.stop()
