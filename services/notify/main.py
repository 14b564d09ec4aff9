"""``anting serve notify``: the API on ``ANTING_NOTIFY_PORT`` and the delivery
pipeline in one process, until SIGTERM/SIGINT (graceful: stop fetching, finish
in-flight deliveries, commit, flush)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from services.notify.api import create_app
from services.notify.pipeline import Notifier
from services.notify.settings import NotifySettings
from shared import logs
from shared.http import EmbeddedServer
from shared.runtime import quiet_gc, run_service
from shared.settings import load

log = logging.getLogger(__name__)




async def serve(settings: NotifySettings, stop: asyncio.Event) -> None:
    notifier = Notifier(settings)
    app = create_app(settings, notifier.store, ready=notifier.ready)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="off")
    server = EmbeddedServer(config)
    try:
        await notifier.start()
        quiet_gc()
        api = asyncio.create_task(server.serve())
        log.info("notify ready", extra={"port": settings.port, "subscriptions": len(notifier.store.all())})
        await notifier.run(stop)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api, 10)
    finally:
        await notifier.close()


def run() -> None:
    settings = load(NotifySettings)
    logs.configure("notify", settings.log_level)
    # httpx logs every request at INFO: per-delivery detail belongs on `notifications`
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    run_service("notify", lambda stop: serve(settings, stop))
