"""Open-loop load generator (its own process): POSTs one event to ingest on a fixed
schedule and never waits for the system — a request that is slow to answer does
not delay the next one, so latency is measured from the *scheduled* send time
(no coordinated omission).

Writes ``{"scheduled": {event id: monotonic send time}, "status": {code: count},
"late_ms": {p50, p99, max}}`` as JSON to ``--out``.

    python -m bench.loadgen --url http://127.0.0.1:8001/v1/events --rate 1000 \
        --seconds 10 --run abcd1234 --tag r1000 --out /tmp/sched.json
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

from bench import payload


async def generate(url: str, rate: float, seconds: float, run: str, tag: str,
                   key: str) -> dict[str, object]:
    n = max(1, int(rate * seconds))
    bodies = payload.event_bytes(n, run, tag)
    ids = [f"bench-{run}-{tag}-{i}" for i in range(n)]
    scheduled: dict[str, float] = {}
    status: Counter[str] = Counter()
    late: list[float] = []
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=512, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(body: bytes) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status[str(resp.status)] += 1
            except Exception as exc:
                status[type(exc).__name__] += 1

        t0 = time.monotonic() + 0.05
        for i in range(n):
            at = t0 + i / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(max(0.0, time.monotonic() - at) * 1000)
            scheduled[ids[i]] = at
            task = asyncio.create_task(post(bodies[i]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    late.sort()
    return {
        "scheduled": scheduled,
        "status": dict(status),
        "late_ms": {"p50": late[len(late) // 2], "p99": late[int(len(late) * 0.99)],
                    "max": late[-1]},
        "sent": n,
    }


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = uvloop.run(generate(args.url, args.rate, args.seconds, args.run, args.tag, args.key))
    args.out.write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
