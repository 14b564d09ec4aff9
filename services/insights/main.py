"""``anting serve insights``: the route, the faust app (fold and table) and the API on
``ANTING_INSIGHTS_PORT`` in one process, until SIGTERM/SIGINT (graceful: the API stops,
the route and faust commit what they processed and leave their groups)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import uvicorn

from services.insights.api import create_app
from services.insights.settings import InsightsSettings
from services.insights.streams import Insights
from shared import logs
from shared.http import EmbeddedServer
from shared.kafka import cluster_replication, ensure_topics
from shared.kafka_access import AccessStatus, Doing, until_allowed
from shared.lag import LagMonitor
from shared.runtime import run_service
from shared.settings import load
from shared.topics import INSIGHTS_CHANGELOG
from shared.topology import INSIGHTS, INSIGHTS_TABLE

__all__ = ["run", "serve"]

log = logging.getLogger(__name__)


async def serve(settings: InsightsSettings, stop: asyncio.Event) -> None:
    """Topics, the faust app, the API; until ``stop`` is set."""
    # what start-up checks, as declared; the registered changelog's name is the default
    # app id's, so another app id's is faust's to create
    topics = [t for t in INSIGHTS.checks
              if t.name != INSIGHTS_CHANGELOG.name or settings.group == INSIGHTS.group_prefix]
    # the broker refusing the credentials, the certificate or an ACL: one line per 30 s, tried
    # again with backoff (no readiness yet: the API starts once the cluster is known)
    access = AccessStatus()
    create = Doing(topic_operation="Create", cluster_operation="Create")
    await until_allowed(lambda: ensure_topics(settings, topics, replication=settings.replication_factor),
                        access, settings.kafka, create, stop)
    if stop.is_set():
        return
    if settings.replication_factor is None:  # faust creates topics of its own and needs a number
        rf = await until_allowed(lambda: cluster_replication(settings), access, settings.kafka, create, stop)
        if rf is None:
            return
        settings = settings.model_copy(update={"replication_factor": rf})
    insights = Insights(settings, access)
    lag = LagMonitor(settings, {insights.route.group: [insights.route.source],
                                insights.app.conf.id: list(INSIGHTS_TABLE.inputs(settings.topic_prefix))})
    lag.start()
    app = create_app(settings, insights)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="off")
    server = EmbeddedServer(config)
    api = asyncio.create_task(server.serve())
    try:
        # faust's start returns once its tables are recovered, which can take long (or, with
        # the broker gone, for ever): a stop meanwhile must not wait for it
        starting = asyncio.create_task(insights.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            # what start-up made (modules, the faust app, the recovered table) lives as long as
            # the process: out of the collector's full passes, which otherwise walk it again
            # and again while the route and the fold allocate
            gc.collect()
            gc.freeze()
            log.info("insights started", extra={"port": settings.port, "url": insights.url})
            await stopping
        else:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(starting, 1)
        stopping.cancel()
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api, 2)
        # within the process's stop bound (shared/runtime.py), which ends it if this hangs
        with contextlib.suppress(Exception):
            await asyncio.wait_for(insights.stop(), 5)
        await lag.stop()


def run() -> None:
    """The process entry point (``anting serve insights``)."""
    settings = load(InsightsSettings)
    logs.configure("insights", settings.log_level)
    # the route and the fold allocate ~100 short-lived containers per event (JSON objects,
    # rows); with the default threshold (700) the cyclic collector ran every few events and
    # took about a third of the route's time (measured on its decoding and rows alone). The
    # documents and rows form no cycles and die with their batch; what does (asyncio's
    # futures, tracebacks) is still collected, only less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    # faust and mode log every rebalance step at INFO
    for noisy in ("faust", "mode", "aiokafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # faust's shutdown can hang (its recovery, its consumer thread): insights is gone within
    # 10 s of SIGTERM in every state, its graceful steps bounded below that
    run_service("insights", lambda stop: serve(settings, stop), stop_within=9.0)
