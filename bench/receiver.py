"""A minimal, fast HTTP receiver on 127.0.0.1 (its own process): the raw HTTP
baseline's target and the webhook endpoint the notify stage delivers to.

Any POST/PUT is answered ``200`` at once (or after ``--delay-ms``, to stand for a
real endpoint's own latency) and its arrival time recorded
(``time.monotonic()``, which is one clock for every process on Linux), with the
first benchmark event id found in the body. ``GET /__stats`` gives the count,
``GET /__arrivals`` every arrival, ``POST /__reset`` clears them.

    python -m bench.receiver --port 18080 [--delay-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

from bench.payload import ID_PATTERN


class Receiver:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.times: list[float] = []
        self.ids: dict[str, float] = {}
        self.duplicates = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method in ("POST", "PUT"):
            body = await request.read()
            t = time.monotonic()
            if request.path == "/__reset":
                self.times.clear()
                self.ids.clear()
                self.duplicates = 0
                return web.Response(status=204)
            self.times.append(t)
            m = ID_PATTERN.search(body)
            if m is not None:
                key = m.group(0).decode()
                if key in self.ids:
                    self.duplicates += 1
                else:
                    self.ids[key] = t
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.Response(status=200)
        if request.path == "/__stats":
            return web.Response(
                body=orjson.dumps({"count": len(self.times), "ids": len(self.ids),
                                   "duplicates": self.duplicates}),
                content_type="application/json",
            )
        if request.path == "/__arrivals":
            return web.Response(
                body=orjson.dumps({"times": self.times, "ids": self.ids,
                                   "duplicates": self.duplicates}),
                content_type="application/json",
            )
        return web.Response(status=200, text="ok")


async def serve(port: int, delay: float = 0.0) -> None:
    receiver = Receiver(delay)
    server = web.Server(receiver.handle, access_log=None)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, "127.0.0.1", port, backlog=1024)
    print(f"receiver listening on 127.0.0.1:{port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer each POST this much later")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
