"""The peers' workers (bench/peers.py), as child processes: ``python -m bench.peer_workers
quix|faust`` with PEER_BOOTSTRAP, PEER_GROUP, PEER_INPUTS (comma-separated), PEER_OUTPUT.
Imports only the peer's runtime and Anting's pure enrichment (the Quix one runs in a
virtualenv of its own, without the bench's dependencies)."""

from __future__ import annotations

import os
import sys
from typing import Any


def _transform() -> Any:
    """Anting's enrichment over the shipped catalog: bytes in, bytes out."""
    from services.enrich.catalog import shipped
    from services.enrich.enrich import enrich_bytes
    from services.enrich.resolve import build_index

    index = build_index(shipped())

    def enrich(value: bytes) -> bytes:
        out: bytes = enrich_bytes(value, index, "peer")[1].dump()
        return out

    return enrich


# --- the peers' workers (child processes) ----------------------------------------------


def quix_worker() -> None:
    from quixstreams import Application

    enrich = _transform()
    # PEER_COMMIT_INTERVAL: seconds a transaction stays open (Quix's default is 5)
    interval = float(os.environ.get("PEER_COMMIT_INTERVAL") or 5.0)
    app = Application(broker_address=os.environ["PEER_BOOTSTRAP"],
                      consumer_group=os.environ["PEER_GROUP"], auto_offset_reset="earliest",
                      processing_guarantee="exactly-once", loglevel="WARNING",
                      commit_interval=interval, state_dir=os.environ["PEER_STATE_DIR"])
    out = app.topic(os.environ["PEER_OUTPUT"], value_serializer="bytes", key_serializer="bytes")
    for name in os.environ["PEER_INPUTS"].split(","):
        sdf = app.dataframe(app.topic(name, value_deserializer="bytes", key_deserializer="bytes"))
        sdf.apply(enrich).to_topic(out)
    app.run()


def faust_worker() -> None:
    import faust

    enrich = _transform()
    app = faust.App(os.environ["PEER_GROUP"], broker=f"kafka://{os.environ['PEER_BOOTSTRAP']}",
                    processing_guarantee="at_least_once", store="memory://", web_enabled=False,
                    consumer_auto_offset_reset="earliest", datadir=os.environ["PEER_STATE_DIR"])
    src = app.topic(*os.environ["PEER_INPUTS"].split(","), value_serializer="raw", key_serializer="raw")
    dst = app.topic(os.environ["PEER_OUTPUT"], value_serializer="raw", key_serializer="raw")

    @app.agent(src)
    async def forward(stream: Any) -> None:
        async for event in stream.events():
            await dst.send(key=event.key, value=enrich(event.value))

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    {"quix": quix_worker, "faust": faust_worker}[sys.argv[1]]()
