"""The demo webhook receiver ``anting run`` subscribes agreements to.

A newcomer running ``make run`` sees a webhook delivered end to end without a
receiver of their own: a small HTTP server on 127.0.0.1 (a random port) that answers
every POST with 204, checks its Standard Webhooks signature with the secret notify
returned for the subscription, and prints one line per delivery. It is built to keep
up with notify under a burst (HTTP/1.1 keep-alive, a deep listen queue).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from devtools.console import Printer

__all__ = ["WebhookReceiver", "loopback_allowed"]


def loopback_allowed(networks: str) -> bool:
    """True when ``networks`` (ANTING_NOTIFY_ALLOW_NETWORKS: comma-separated CIDRs or
    addresses; an unparsable part is ignored) includes 127.0.0.1, so notify may
    deliver to this receiver."""
    addr = ipaddress.ip_address("127.0.0.1")
    for part in networks.split(","):
        with contextlib.suppress(ValueError):
            if part.strip() and addr in ipaddress.ip_network(part.strip(), strict=False):
                return True
    return False


class _ReceiverServer(ThreadingHTTPServer):
    """The demo receiver's server: a thread per connection, and a listen queue for a burst.

    socketserver's default queue holds 5 connections; notify opens up to
    ``ANTING_NOTIFY_CONCURRENCY`` (64) at once, and the kernel drops a connection that
    finds the queue full: the client's SYN is retried after 1, 3, 7 s ..., so under a
    burst some first attempts ran into notify's 15 s timeout and were retried.
    """

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True


class WebhookReceiver:
    """A tiny local endpoint for the demo webhook subscription; checks each
    signature (Standard Webhooks) with the secret notify returned.

    Bound on construction (127.0.0.1, a free port); serves after ``start()`` on a
    daemon thread until ``stop()``. Set ``secret`` (``whsec_...``) once notify has
    returned it; until then deliveries print as unsigned. ``received`` counts POSTs.
    """

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.secret: str | None = None
        self.received = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: notify keeps its connections open and sends request after request on
            # them; HTTP/1.0 would close each one, so every delivery would need a new TCP
            # connection through the listen queue.
            protocol_version = "HTTP/1.1"
            timeout = 60  # an idle kept-alive connection is closed (notify drops its own at 30 s)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # the receiver prints its own line
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/hook``: the subscription's webhook URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> None:
        """Serve on a daemon thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (waits for the serving loop to end)."""
        self.server.shutdown()
        self.server.server_close()

    def handle(self, body: bytes, headers: dict[str, str]) -> None:
        """Count one delivery (``body`` as sent, ``headers`` lower-cased) and print it:
        its webhook-id, whether its signature verifies, and the event's type and id."""
        self.received += 1
        verdict = "unsigned"
        if self.secret and "webhook-signature" in headers:
            from standardwebhooks import Webhook

            try:
                Webhook(self.secret).verify(body, headers)
                verdict = "signature ok"
            except Exception as exc:
                verdict = f"BAD SIGNATURE ({exc})"
        summary = ""
        with contextlib.suppress(Exception):
            doc = orjson.loads(body)
            event = doc.get("event", doc) if isinstance(doc, dict) else {}
            summary = f"{event.get('type', '?')} {event.get('id', '?')}"
        self.printer.say("webhook", f"POST received: webhook-id={headers.get('webhook-id')} "
                         f"{verdict} {summary}")
