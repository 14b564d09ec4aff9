"""``anting serve notify``: the API on ``ANTING_NOTIFY_PORT`` and the delivery
pipeline in one process, until SIGTERM/SIGINT (graceful: stop fetching, finish
in-flight deliveries, commit, flush)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from services.notify.api import create_app
from services.notify.bootstrap import Notifier
from services.notify.settings import NotifySettings
from shared import logs
from shared.dlq_monitor import DeadLetterMonitor
from shared.http import EmbeddedServer
from shared.lag import LagMonitor
from shared.runtime import quiet_gc, run_service
from shared.settings import load
from shared.topology import NOTIFY, NOTIFY_EVENTS, NOTIFY_RETRY_SCHEDULE

log = logging.getLogger(__name__)


def consumer_groups(settings: NotifySettings) -> dict[str, list[str]]:
    """The consumer groups :meth:`Notifier.run` joins, each with the topic it reads."""
    return {
        settings.group: [NOTIFY_EVENTS.input(settings.topic_prefix)],
        NOTIFY.group_under(NOTIFY_RETRY_SCHEDULE, settings.group):
            [NOTIFY_RETRY_SCHEDULE.input(settings.topic_prefix)],
    }


async def serve(settings: NotifySettings, stop: asyncio.Event) -> None:
    notifier = Notifier(settings)
    app = create_app(settings, notifier.store, ready=notifier.ready)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="off")
    server = EmbeddedServer(config)
    # lag from the committed offsets, for the whole life of the process: it goes on
    # while the groups' consumers are loading, failing or gone
    lag = LagMonitor(settings, consumer_groups(settings))
    lag.start()
    # every dead letter, whoever wrote it (anting publish, kcat, ...), counted from the
    # topic for Prometheus; notify runs it as the one long-running reader (see the module)
    dead_letters = DeadLetterMonitor(settings)
    dead_letters.start()
    # the API answers from the start: /readyz says what notify waits for (the state loading,
    # or the broker refusing it: who may not do what); until then a subscription cannot be
    # stored (503: the producer is not started) and lists are empty, as readiness warns
    api = asyncio.create_task(server.serve())
    try:
        await notifier.start(stop)
        if notifier.started:
            quiet_gc()
            log.info("notify ready", extra={"port": settings.port, "subscriptions": len(notifier.store.all())})
            await notifier.run(stop)
    finally:
        server.should_exit = True
        # the SSE streams' shared reader, if one started: its streams end now (saying so)
        # rather than hold the server's shutdown; again after, for one opened meanwhile
        await app.state.stream_tail.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api, 10)
        await app.state.stream_tail.stop()
        await notifier.close()
        await lag.stop()
        await dead_letters.stop()


def run() -> None:
    settings = load(NotifySettings)
    logs.configure("notify", settings.log_level)
    # httpx logs every request at INFO: per-delivery detail belongs on `notifications`
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    run_service("notify", lambda stop: serve(settings, stop))


__all__ = ["consumer_groups", "run", "serve"]
