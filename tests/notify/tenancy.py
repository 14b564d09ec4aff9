"""A real notify API (uvicorn, its subscriptions store on the real broker) run in a thread
of its own, so that synchronous clients (Hypothesis, a browser) can call it while it
runs; and a key file of two tenants."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from devtools.localkafka import free_port
from services.notify.api import create_app
from services.notify.ledger import Ledger
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore
from shared.access import hash_key, new_key
from shared.http import EmbeddedServer
from shared.kafka import make_producer

from .helpers import notify_settings


@dataclass(frozen=True)
class Keys:
    """An admin key, two tenants' keys with every scope but admin, and keys of one scope."""

    admin: str
    a: str
    b: str
    stream_only: str
    publish_only: str

    def header(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}


def write_keys(path: Path) -> Keys:
    """A key file at ``path``: tenant ``acme`` (key ``a``), ``globex`` (``b``), and
    ``acme`` keys of ``stream:read`` alone and ``events:publish`` alone."""
    keys = Keys(admin=new_key(), a=new_key(), b=new_key(), stream_only=new_key(), publish_only=new_key())
    manage = "subscriptions:manage,stream:read,events:publish"
    path.write_text(
        f"# two tenants\n{hash_key(keys.a)} acme {manage}\n{hash_key(keys.b)} globex {manage}\n"
        f"{hash_key(keys.stream_only)} acme stream:read\n"
        f"{hash_key(keys.publish_only)} acme events:publish\n")
    return keys


@contextlib.contextmanager
def notify_in_thread(base: Any, keys_file: Path, admin_key: str, *, health: bool = False,
                     **overrides: Any) -> Iterator[tuple[str, NotifySettings]]:
    """notify's API on a free port of 127.0.0.1, on the real broker, in a thread with its
    own event loop; yields its base URL and settings, then stops it. With ``health``, each
    subscription shows its delivery health from a ledger following ``notifications``, as
    in a running notify."""
    settings = notify_settings(base, port=free_port(), api_keys=admin_key,
                               api_keys_file=str(keys_file), **overrides)
    started = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        producer = make_producer(settings)
        await producer.start()
        store = SubscriptionStore(settings, producer)
        await store.start()
        ledger = Ledger(settings, producer) if health else None
        if ledger is not None:
            await ledger.view.start()
            store.health = ledger.health
        server = EmbeddedServer(uvicorn.Config(app := create_app(settings, store), host="127.0.0.1",
                                               port=settings.port, log_config=None, lifespan="off"))
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.05)
            started.set()
            await stop.wait()
        finally:
            server.should_exit = True
            await task
            await app.state.stream_tail.stop()
            if ledger is not None:
                await ledger.view.stop()
            await store.stop()
            await producer.stop()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported by the caller
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="notify-api", daemon=True)
    thread.start()
    assert started.wait(60), "notify did not start within 60 s"
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{settings.port}", settings
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        assert not thread.is_alive(), "notify did not stop"
        if failure:
            raise failure[0]
