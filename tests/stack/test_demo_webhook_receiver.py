"""`make run`'s demo webhook receiver keeps up with notify under a burst: it answers on the
connections notify keeps open (HTTP/1.1), so deliveries do not each queue for a new one."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from devtools.console import Printer
from devtools.demo_receiver import WebhookReceiver
from services.notify.channels import http1
from services.notify.channels.http1 import WebhookClient
from services.notify.channels.webhook import sign
from services.notify.ssrf import GuardedResolver

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"  # base64 of a 24-byte key
CONCURRENCY = 64  # notify's default ANTING_NOTIFY_CONCURRENCY
DELIVERIES = 640


async def test_a_burst_of_signed_deliveries_reuses_connections_and_all_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """640 signed POSTs, 64 at a time through notify's own client: every one answered 204 well
    within notify's timeout, on at most one connection per concurrent delivery, each signature ok."""
    printer = Printer()
    out = io.StringIO()
    printer.console = Console(file=out, width=200, highlight=False)
    receiver = WebhookReceiver(printer)
    receiver.secret = SECRET
    receiver.start()
    opened = 0
    real_open = http1.open_connection

    async def counting_open(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(http1, "open_connection", counting_open)
    client = WebhookClient(GuardedResolver([ipaddress.ip_network("127.0.0.0/8")]), 15.0,
                           max_idle_per_origin=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)
    slowest = 0.0

    async def deliver(i: int) -> int:
        nonlocal slowest
        body = b'{"type":"agreement.signed","id":"burst-%d"}' % i
        now = datetime.now(UTC)
        headers = [("webhook-id", f"msg_{i}"), ("webhook-timestamp", str(int(now.timestamp()))),
                   ("webhook-signature", sign([SECRET], f"msg_{i}", now, body))]
        async with gate:
            t0 = time.monotonic()
            response = await client.post(receiver.url, body, headers)
            slowest = max(slowest, time.monotonic() - t0)
            return response.status

    try:
        statuses = await asyncio.gather(*(deliver(i) for i in range(DELIVERIES)))
    finally:
        await client.aclose()
        receiver.stop()
    assert statuses == [204] * DELIVERIES
    assert receiver.received == DELIVERIES
    assert opened <= CONCURRENCY, f"{opened} connections for {DELIVERIES} deliveries"
    assert slowest < 5, f"the slowest delivery took {slowest:.1f}s"
    lines = out.getvalue().splitlines()
    assert sum("signature ok agreement.signed burst-" in line for line in lines) == DELIVERIES, lines[:5]
