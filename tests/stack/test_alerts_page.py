"""`make run` names the alerts page its Prometheus really serves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools.prometheus import alerts_page


def _server(alerts_status: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(alerts_status if self.path == "/alerts" else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(params=[200, 404])
def prometheus(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    server = _server(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", request.param
    finally:
        server.shutdown()
        server.server_close()


def test_alerts_page_follows_the_ui_the_binary_has(prometheus: tuple[str, int]) -> None:
    """/alerts where the React UI answers; /classic/alerts where it is 404 (Debian's package)."""
    url, status = prometheus
    assert alerts_page(url) == (f"{url}/alerts" if status == 200 else f"{url}/classic/alerts")
