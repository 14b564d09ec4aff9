"""``anting serve ingest``: the HTTP API on uvicorn with one shared producer.

SIGTERM/SIGINT (via :func:`shared.runtime.run_service`) stop accepting connections,
let in-flight requests finish, then flush and close the producer.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from services.ingest.api import create_app
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from shared import logs
from shared import settings as settings_mod
from shared.http import EmbeddedServer
from shared.runtime import quiet_gc, run_service
from shared.topics import DOCUMENT_MAX_MESSAGE_BYTES
from shared.topology import INGEST_DOCUMENTS

log = logging.getLogger(__name__)



def make_publisher(settings: IngestSettings) -> Publisher:
    return Publisher(
        settings, timeout=settings.publish_timeout_seconds,
        linger_ms=settings.linger_ms, max_batch_bytes=settings.max_batch_bytes,
    )


def make_document_publisher(settings: IngestSettings) -> Publisher:
    """The producer of ``documents``: its records are up to a thousand times an event's,
    so it compresses (gzip, which aiokafka has built in) and may send a request as large
    as the topic takes; events keep their own uncompressed, low-latency producer."""
    return Publisher(
        settings, timeout=max(settings.publish_timeout_seconds, 10.0),
        max_batch_bytes=DOCUMENT_MAX_MESSAGE_BYTES, compression_type="gzip",
        max_request_size=DOCUMENT_MAX_MESSAGE_BYTES, topics=INGEST_DOCUMENTS.output_topics,
    )


async def serve(settings: IngestSettings, stop: asyncio.Event, *, tune_gc: bool = False) -> None:
    """Run the API until ``stop`` is set (usable from Python, e.g. benchmarks);
    ``tune_gc`` applies :func:`quiet_gc` to the whole process (``anting serve`` does)."""
    publisher = make_publisher(settings)
    await publisher.start()
    documents = make_document_publisher(settings)
    app = create_app(settings, publisher, documents)
    if tune_gc:
        quiet_gc()
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, access_log=False,
        lifespan="off", timeout_graceful_shutdown=10,
    )
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        await task
        stopped.cancel()
        await publisher.stop()
        await documents.stop()


def run() -> None:
    settings = settings_mod.load(IngestSettings)
    logs.configure("ingest", settings.log_level)
    log.info("ingest listening", extra={"host": settings.host, "port": settings.port})

    async def main(stop: asyncio.Event) -> None:
        await serve(settings, stop, tune_gc=True)

    run_service("ingest", main)


__all__ = ["make_document_publisher", "make_publisher", "run", "serve"]
