"""``anting serve enrich``: the catalog, the enrich worker, the documents stage (documents
→ the events they report; ``ANTING_ENRICH_DOCUMENTS=false`` leaves it out), and /metrics,
/healthz, /readyz on uvicorn, all in one event loop.

SIGTERM/SIGINT (via :func:`shared.runtime.run_service`) stop fetching; the batch
in flight commits its transactions, then producers and consumers close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from fastapi import FastAPI

from services.enrich.catalog import Catalog
from services.enrich.documents import DocumentStage
from services.enrich.pipeline import Worker
from services.enrich.settings import EnrichSettings
from shared import logs
from shared import settings as settings_mod
from shared.http import EmbeddedServer, health_router, install_request_metrics
from shared.kafka import ensure_topics
from shared.kafka_access import Doing, until_allowed
from shared.lag import LagMonitor
from shared.runtime import quiet_gc, run_service
from shared.topology import ENRICH, ENRICH_CATALOG

log = logging.getLogger(__name__)



def create_app(worker: Worker) -> FastAPI:
    async def ready() -> tuple[bool, str]:
        if worker.access.reason is not None:
            return False, worker.access.reason
        if not worker.catalog.table.ready.is_set():
            return False, "loading the organization catalog"
        if not worker.running:
            return False, "not connected to the input topics"
        if worker.trouble is not None:  # nothing is committed while it lasts
            return False, f"enrich is stuck: {worker.trouble}"
        return True, f"catalog {worker.catalog.version}, {len(worker.catalog.organizations)} organizations"

    app = FastAPI(title="Anting enrich", version="0.1.0")
    app.include_router(health_router(ready))
    install_request_metrics(app, "enrich")
    return app


async def serve(settings: EnrichSettings, stop: asyncio.Event, *, tune_gc: bool = False) -> None:
    """Run enrich until ``stop`` is set (usable from Python, e.g. benchmarks);
    ``tune_gc`` applies :func:`quiet_gc` once the catalog is loaded (``anting serve`` does)."""
    catalog = Catalog(settings, settings.fuzzy_threshold)
    worker = Worker(settings, catalog)
    config = uvicorn.Config(
        create_app(worker), host=settings.host, port=settings.port, log_config=None,
        access_log=False, lifespan="off", timeout_graceful_shutdown=5,
    )
    server = EmbeddedServer(config)
    http = asyncio.create_task(server.serve())
    # lag from the committed offsets, for the whole life of the process: it keeps
    # growing while the worker's consumer session fails and starts again, committing nothing
    documents = DocumentStage(settings, catalog) if settings.documents else None
    groups = {worker.group: worker.inputs}
    if documents is not None:
        groups[documents.group] = [documents.topic]
    lag = LagMonitor(settings, groups, interval=2.0)
    lag.start()
    try:
        # a broker refusing the credentials, the certificate or an ACL: said once per 30 s and
        # on /readyz, tried again with backoff; never an exit with a traceback
        if await until_allowed(lambda: ensure_topics(settings, ENRICH.checks), worker.access, settings.kafka,
                               Doing(topic_operation="Create", cluster_operation="Create"), stop) is None:
            return
        await until_allowed(catalog.start, worker.access, settings.kafka,
                            ENRICH_CATALOG.reading(settings.topic_prefix), stop)
        if stop.is_set():
            return
        log.info("catalog loaded", extra={
            "organizations": len(catalog.organizations), "version": catalog.version})
        if tune_gc:
            quiet_gc()
        if documents is None:
            await worker.run(stop)
        else:  # the stage shares the catalog; each stops with stop
            await asyncio.gather(worker.run(stop), documents.run(stop))
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await http
        await catalog.stop()
        await lag.stop()


def run() -> None:
    settings = settings_mod.load(EnrichSettings)
    logs.configure("enrich", settings.log_level)
    log.info("enrich starting", extra={
        "guarantee": settings.guarantee, "group": settings.group, "port": settings.port})

    async def main(stop: asyncio.Event) -> None:
        await serve(settings, stop, tune_gc=True)

    run_service("enrich", main)


__all__ = ["create_app", "run", "serve"]
