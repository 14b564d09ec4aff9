"""``anting run`` (what ``make run`` calls): the whole stack on this machine, supervised.

A local Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one), the topics,
the catalog, ``anting serve ingest|enrich|notify`` as child processes (output
interleaved and labelled), Prometheus when its binary is installed, a demo
subscription, the seed's events published through the ingest API, and the
enriched events and notifications printed as they arrive. A child that dies is
restarted with backoff; Ctrl-C, SIGTERM or SIGHUP stops every child, then the broker.
So does the death of whatever started ``anting run`` (a ``kill -9`` of ``make run``):
the kernel sends it SIGTERM then (the parent-death signal), and each child gets the
same signal should ``anting run`` itself be killed.

This is a module, not a service: it owns no topic and exports no metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.text import Text

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = REPO_ROOT / "services" / "ingest" / "samples" / "world-metaverse-conference.ndjson"
PROMETHEUS_CONFIG = REPO_ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERT_RULES = REPO_ROOT / "ops" / "prometheus" / "alerts.yml"
DEMO_PREFIX = "make-run"  # names of the demo subscriptions, replaced on every run

COLOURS = {
    "run": "bold white", "kafka": "bright_black", "ingest": "cyan", "enrich": "magenta",
    "notify": "green", "prometheus": "yellow", "catalog": "blue", "webhook": "bright_green",
    "event": "bright_cyan", "delivery": "bright_magenta",
}


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    default_port: int

    @property
    def port(self) -> int:
        return int(os.environ.get(f"ANTING_{self.name.upper()}_PORT", self.default_port))

    @property
    def url(self) -> str:
        host = os.environ.get(f"ANTING_{self.name.upper()}_HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # bound to every interface: reach it on loopback
        return f"http://{host}:{self.port}"


SERVICES = (ServiceSpec("ingest", 8001), ServiceSpec("enrich", 8002), ServiceSpec("notify", 8003))


@dataclass
class Options:
    kafka_port: int = 9092
    prometheus: bool = True
    prometheus_port: int = 9090
    scrape_interval: float = 5.0
    seed: Path = SEED
    state_dir: Path = REPO_ROOT / ".local"
    ready_timeout: float = 180.0
    max_backoff: float = 30.0


class Stop(Exception):
    """SIGTERM or SIGINT before the supervisor loop runs."""


class StartupError(Exception):
    """The stack cannot start; the message says what to do."""


# --------------------------------------------------------------------------- output


class Printer:
    """One line per message, labelled and (on a terminal) coloured per source.

    Children log JSON lines when not on a terminal (shared.logs); they are
    rendered back into one readable line each here.
    """

    def __init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True)
        self.lock = threading.Lock()

    def say(self, label: str, message: str, style: str | None = None) -> None:
        line = Text.assemble((f"{label:>10} │ ", COLOURS.get(label, "white")), (message, style or ""))
        # a closed terminal or pipe (the shell that ran `make run` is gone) must not stop
        # the shutdown half-way: the line is lost, the children are still stopped
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.console.print(line)

    def child_line(self, label: str, raw: str) -> None:
        self.say(label, readable(raw))


def readable(raw: str) -> str:
    """A JSON log line from shared.logs as ``level msg k=v ...``; anything else as is."""
    raw = raw.rstrip()
    if not raw.startswith("{"):
        return raw
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(doc, dict):
        return raw
    if "msg" not in doc:
        event = doc.get("event")
        if isinstance(event, dict) and "subscription" in doc:  # a log-channel notification
            return (f"log channel: {event.get('type')} {event.get('id')} for subscription "
                    f"{doc['subscription']} ({_title(event)!r})")
        return raw
    level = str(doc.pop("level", "info"))
    msg = str(doc.pop("msg"))
    for k in ("ts", "service", "logger", "color_message"):
        doc.pop(k, None)
    exc = doc.pop("exc", None)
    extras = " ".join(f"{k}={v}" for k, v in doc.items())
    line = f"{level:<5} {msg}" + (f"  {extras}" if extras else "")
    return f"{line}\n{exc}" if exc else line


# --------------------------------------------------------------------------- processes


PR_SET_PDEATHSIG = 1  # prctl(2), Linux


def _parent_death_signal(sig: signal.Signals) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only;
    elsewhere nothing happens)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def _child_setup() -> None:
    """Runs in each child before exec: it dies with us, and sits in its own session
    so that a Ctrl-C at the terminal reaches only us and we decide the stop order."""
    _parent_death_signal(signal.SIGTERM)
    os.setsid()


def _stop_with_parent() -> None:
    """SIGTERM to ourselves when the process that started us dies: a ``kill -9`` of
    ``make run`` leaves ``anting run`` re-parented and still running otherwise, with
    the broker, the services and Prometheus holding their ports. Our SIGTERM handler
    then stops everything in order, as Ctrl-C does."""
    parent = os.getppid()
    _parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the kernel was asked: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def anting_command() -> str:
    beside = Path(sys.executable).parent / "anting"
    return str(beside) if beside.exists() else (shutil.which("anting") or "anting")


@dataclass
class Child:
    """A supervised process: restarted with exponential backoff when it dies."""

    label: str
    argv: list[str]
    env: dict[str, str]
    restart: bool = True
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class Supervisor:
    def __init__(self, opts: Options, printer: Printer) -> None:
        self.opts = opts
        self.out = printer
        self.children: list[Child] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = asyncio.Event()

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, env=child.env, cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=_child_setup, limit=4 * 1024 * 1024,
        )
        child.pids.append(child.proc.pid)

    async def _pump(self, child: Child, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the limit: show what fits
                line = await proc.stdout.read(64 * 1024)
            if not line:
                return
            self.out.child_line(child.label, line.decode(errors="replace"))

    async def start(self, child: Child) -> None:
        await self._spawn(child)
        self.children.append(child)
        self.out.say("run", f"started {child.label} (pid {child.pid})")
        self.tasks.append(asyncio.create_task(self._watch(child), name=f"watch-{child.label}"))

    async def _watch(self, child: Child) -> None:
        """Wait for the child to exit; restart it unless we are stopping."""
        backoff = 1.0
        while True:
            proc = child.proc
            assert proc is not None
            started = time.monotonic()
            pump = asyncio.create_task(self._pump(child, proc))
            rc = await proc.wait()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pump, 2)
            if self.stopping.is_set() or not child.restart:
                if not self.stopping.is_set():
                    self.out.say("run", f"{child.label} exited with code {rc}", "yellow")
                return
            if time.monotonic() - started > 60:
                backoff = 1.0  # it ran for a while: a fresh failure, not a crash loop
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
            self.out.say("run", f"{child.label} (pid {proc.pid}) {how}; restarting in {backoff:.0f}s",
                         "bold red")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return
            backoff = min(backoff * 2, self.opts.max_backoff)
            try:
                await self._spawn(child)
            except OSError as exc:
                self.out.say("run", f"could not restart {child.label}: {exc}", "bold red")
                continue
            child.restarts += 1
            self.out.say("run", f"restarted {child.label} (pid {child.pid}, restart #{child.restarts})",
                         "bold yellow")

    def kill_all(self) -> None:
        """SIGKILL every child's session now (a second Ctrl-C)."""
        for c in self.children:
            if c.proc and c.proc.returncode is None:
                self.out.say("run", f"killing {c.label} (pid {c.pid})", "red")
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)

    async def stop_all(self, timeout: float = 25.0) -> None:
        """SIGTERM every child (services before Prometheus), then SIGKILL what is left."""
        self.stopping.set()
        for group in (
            [c for c in self.children if c.label != "prometheus"],
            [c for c in self.children if c.label == "prometheus"],
        ):
            for c in group:
                if c.proc and c.proc.returncode is None:
                    self.out.say("run", f"stopping {c.label} (pid {c.pid})")
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.send_signal(signal.SIGTERM)
            for c in group:
                if c.proc is None:
                    continue
                try:
                    await asyncio.wait_for(c.proc.wait(), timeout)
                except TimeoutError:
                    self.out.say("run", f"{c.label} did not stop in {timeout:.0f}s: killing it", "red")
                # the child's session may hold processes of its own: none may outlive it
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()
        for t in self.tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(t, 5)


# --------------------------------------------------------------------------- the broker


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def start_broker(opts: Options, printer: Printer) -> tuple[str, Any]:
    """(bootstrap, LocalKafka or None): KAFKA_BOOTSTRAP_SERVERS when set, else a Kafka
    already answering on the port (used, never stopped), else a local broker we start."""
    from devtools.localkafka import LocalKafka, broker_answers, check_tools

    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        printer.say("kafka", f"using KAFKA_BOOTSTRAP_SERVERS={env}")
        return env, None
    bootstrap = f"127.0.0.1:{opts.kafka_port}"
    if port_open(opts.kafka_port):
        if asyncio.run(broker_answers(bootstrap)):
            printer.say("kafka", f"a Kafka broker already answers on {bootstrap}: using it "
                        "(started elsewhere, so it is left running)", "yellow")
            return bootstrap, None
        raise StartupError(
            f"127.0.0.1:{opts.kafka_port} is in use by something that is not a Kafka broker. "
            "Free it, or set ANTING_RUN_KAFKA_PORT to another port, or KAFKA_BOOTSTRAP_SERVERS "
            "to a broker of your own."
        )
    check_tools()  # without Java or Maven: what to install, before "starting"
    data_dir = opts.state_dir / f"kafka-{opts.kafka_port}"
    printer.say("kafka", f"starting a local Kafka broker on {bootstrap} (data {data_dir}) ...")
    t0 = time.monotonic()
    broker = LocalKafka(port=opts.kafka_port, data_dir=data_dir)
    try:
        broker.start()
    except BaseException:
        broker.stop()
        raise
    assert broker.proc is not None
    printer.say("kafka", f"broker ready in {time.monotonic() - t0:.1f}s (pid {broker.proc.pid}, "
                f"log {broker.log_file})")
    return bootstrap, broker


# --------------------------------------------------------------------------- the webhook receiver


class _ReceiverServer(ThreadingHTTPServer):
    """The demo receiver's server: a thread per connection, and a listen queue for a burst.

    socketserver's default queue holds 5 connections; notify opens up to
    ``ANTING_NOTIFY_CONCURRENCY`` (64) at once, and the kernel drops a connection that
    finds the queue full: the client's SYN is retried after 1, 3, 7 s ..., so under a
    burst some first attempts ran into notify's 15 s timeout and were retried.
    """

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True


class WebhookReceiver:
    """A tiny local endpoint for the demo webhook subscription; checks each
    signature (Standard Webhooks) with the secret notify returned."""

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self.secret: str | None = None
        self.received = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: notify keeps its connections open and sends request after request on
            # them; HTTP/1.0 would close each one, so every delivery would need a new TCP
            # connection through the listen queue.
            protocol_version = "HTTP/1.1"
            timeout = 60  # an idle kept-alive connection is closed (notify drops its own at 30 s)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver.handle(body, {k.lower(): v for k, v in self.headers.items()})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # the receiver prints its own line
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, body: bytes, headers: dict[str, str]) -> None:
        self.received += 1
        verdict = "unsigned"
        if self.secret and "webhook-signature" in headers:
            from standardwebhooks import Webhook

            try:
                Webhook(self.secret).verify(body, headers)
                verdict = "signature ok"
            except Exception as exc:
                verdict = f"BAD SIGNATURE ({exc})"
        summary = ""
        with contextlib.suppress(Exception):
            doc = orjson.loads(body)
            event = doc.get("event", doc) if isinstance(doc, dict) else {}
            summary = f"{event.get('type', '?')} {event.get('id', '?')}"
        self.printer.say("webhook", f"POST received: webhook-id={headers.get('webhook-id')} "
                         f"{verdict} {summary}")


# --------------------------------------------------------------------------- the stack


def _api_headers() -> dict[str, str]:
    keys = [k.strip() for k in os.environ.get("ANTING_API_KEYS", "").split(",") if k.strip()]
    return {"authorization": f"Bearer {keys[0]}"} if keys else {}


def _loopback_allowed(networks: str) -> bool:
    addr = ipaddress.ip_address("127.0.0.1")
    for part in networks.split(","):
        with contextlib.suppress(ValueError):
            if part.strip() and addr in ipaddress.ip_network(part.strip(), strict=False):
                return True
    return False


def prometheus_config(opts: Options, out_dir: Path) -> Path:
    """ops/prometheus/prometheus.yml with each job pointed at this machine's ports."""
    import yaml

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config.setdefault("global", {})["scrape_interval"] = f"{opts.scrape_interval:g}s"
    config["global"]["evaluation_interval"] = f"{opts.scrape_interval:g}s"
    config["rule_files"] = [str(ALERT_RULES)]
    config.pop("alerting", None)  # no Alertmanager here; alerts show on /alerts
    ports = {s.name: s.url.removeprefix("http://") for s in SERVICES}
    ports["prometheus"] = f"127.0.0.1:{opts.prometheus_port}"
    for job in config.get("scrape_configs", []):
        name = job.get("job_name")
        if name in ports:
            job["static_configs"] = [{"targets": [ports[name]], "labels": {"service": name}}]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Stack:
    def __init__(self, opts: Options, printer: Printer, bootstrap: str) -> None:
        self.opts = opts
        self.out = printer
        self.bootstrap = bootstrap
        self.sup = Supervisor(opts, printer)
        self.receiver: WebhookReceiver | None = None
        self.prometheus_url: str | None = None
        self.counts = {"published": 0, "enriched": 0, "notified": 0}

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        env["PYTHONUNBUFFERED"] = "1"
        # the demo webhook receiver listens on loopback, which notify refuses by default
        env.setdefault("ANTING_NOTIFY_ALLOW_NETWORKS", "127.0.0.0/8")
        return env

    def settings(self) -> Any:
        from shared.settings import AntingSettings, KafkaSettings, load

        return load(AntingSettings, kafka=load(KafkaSettings, bootstrap_servers=self.bootstrap))

    async def run(self) -> None:
        for spec in SERVICES:
            if port_open(spec.port):
                raise StartupError(
                    f"{spec.url} is already in use: another {spec.name}? Stop it, or set "
                    f"ANTING_{spec.name.upper()}_PORT to a free port."
                )
        from shared.kafka import ensure_topics

        settings = self.settings()
        created = await ensure_topics(settings)
        self.out.say("kafka", f"topics: created {len(created)}" + (f" ({', '.join(created)})" if created else " (all existed)"))
        await self.load_catalog()
        env = self.child_env()
        for spec in SERVICES:
            await self.sup.start(Child(spec.name, [anting_command(), "serve", spec.name], env))
        await self.start_prometheus(env)
        ready = await self.wait_ready()
        await self.subscribe(ready)
        tail = asyncio.create_task(self.tail(settings), name="tail")
        tail.add_done_callback(self._tail_done)
        await self.tail_ready.wait()
        if "ingest" in ready:
            await self.publish_seed()
        self.where_to_look()
        await self.sup.stopping.wait()
        tail.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await tail

    def _tail_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.out.say("run", f"cannot show enriched events and deliveries: {task.exception()!r}",
                         "red")

    async def load_catalog(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            anting_command(), "orgs", "load", env=self.child_env(), cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=_child_setup,
        )
        try:
            output, _ = await proc.communicate()
        except asyncio.CancelledError:  # Ctrl-C while loading: it must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        for line in output.decode(errors="replace").splitlines():
            if line.strip():
                self.out.child_line("catalog", line)
        if proc.returncode != 0:
            self.out.say("catalog", f"`anting orgs load` failed (code {proc.returncode}); "
                         "enrich will leave organizations unresolved", "bold red")

    async def start_prometheus(self, env: dict[str, str]) -> None:
        binary = shutil.which("prometheus")
        if not self.opts.prometheus or binary is None:
            if binary is None:
                self.out.say("prometheus", "no `prometheus` binary on PATH: not started "
                             "(Debian: apt-get install prometheus)")
            return
        port = self.opts.prometheus_port
        if port_open(port):
            self.out.say("prometheus", f"127.0.0.1:{port} is in use: not started "
                         "(set ANTING_RUN_PROMETHEUS_PORT to another port)", "yellow")
            return
        data = self.opts.state_dir / f"prometheus-{port}"
        config = prometheus_config(self.opts, data)
        argv = [
            binary, f"--config.file={config}", f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=2d",
            "--log.level=warn",
        ]
        await self.sup.start(Child("prometheus", argv, env))
        self.prometheus_url = f"http://127.0.0.1:{port}"

    async def wait_ready(self) -> set[str]:
        """Poll each service's /readyz until it answers 200 (bounded)."""
        import httpx

        ready: set[str] = set()
        deadline = time.monotonic() + self.opts.ready_timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline and len(ready) < len(SERVICES):
                if self.sup.stopping.is_set():
                    raise Stop
                for spec in SERVICES:
                    if spec.name in ready:
                        continue
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{spec.url}/readyz")).status_code == 200:
                            ready.add(spec.name)
                            self.out.say("run", f"{spec.name} is ready at {spec.url}", "bold green")
                await asyncio.sleep(0.3)
        for spec in SERVICES:
            if spec.name not in ready:
                self.out.say("run", f"{spec.name} not ready after {self.opts.ready_timeout:.0f}s; "
                             "see its lines above", "bold red")
        return ready

    async def subscribe(self, ready: set[str]) -> None:
        """Replace the demo subscriptions of earlier runs: a log channel, and a webhook
        to a local receiver when loopback is allowed."""
        import httpx

        if "notify" not in ready:
            return
        notify = next(s for s in SERVICES if s.name == "notify").url
        async with httpx.AsyncClient(timeout=10, headers=_api_headers()) as client:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                listing: Any = (await client.get(f"{notify}/v1/subscriptions")).json()
                if isinstance(listing, dict):
                    listing = listing.get("items", listing.get("subscriptions", []))
                for sub in listing or []:
                    if str(sub.get("name", "")).startswith(DEMO_PREFIX):
                        await client.delete(f"{notify}/v1/subscriptions/{sub['id']}")
            wanted: list[dict[str, Any]] = [
                {"name": f"{DEMO_PREFIX}: every event to the log", "channel": {"type": "log"}},
            ]
            if _loopback_allowed(self.child_env()["ANTING_NOTIFY_ALLOW_NETWORKS"]):
                self.receiver = WebhookReceiver(self.out)
                self.receiver.start()
                wanted.append({
                    "name": f"{DEMO_PREFIX}: agreements to a local webhook",
                    "filter": {"types": ["agreement.signed"]},
                    "channel": {"type": "webhook", "url": self.receiver.url},
                })
            else:
                self.out.say("run", "ANTING_NOTIFY_ALLOW_NETWORKS does not allow 127.0.0.1: "
                             "no demo webhook subscription", "yellow")
            for body in wanted:
                try:
                    resp = await client.post(f"{notify}/v1/subscriptions", json=body)
                except httpx.HTTPError as exc:
                    self.out.say("run", f"creating subscription {body['name']!r} failed: {exc}", "red")
                    continue
                if resp.status_code != 201:
                    self.out.say("run", f"creating subscription {body['name']!r}: HTTP "
                                 f"{resp.status_code} {resp.text[:300]}", "red")
                    continue
                doc = resp.json()
                if body["channel"]["type"] == "webhook" and self.receiver is not None:
                    self.receiver.secret = doc.get("secret")
                self.out.say("run", f"subscription {doc.get('id')}: {body['name']}")
                await self._until_visible(client, notify, str(doc.get("id")))

    async def _until_visible(self, client: Any, notify: str, sub_id: str) -> None:
        """Notify learns of subscriptions from their compacted topic: wait until it
        serves this one, so the seed is matched against it."""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if (await client.get(f"{notify}/v1/subscriptions/{sub_id}")).status_code == 200:
                    return
            await asyncio.sleep(0.2)

    async def publish_seed(self) -> None:
        import httpx

        if not self.opts.seed.is_file():
            self.out.say("run", f"no seed file at {self.opts.seed}: publish your own "
                         "(see README, 'Publish')", "yellow")
            return
        lines = [ln for ln in self.opts.seed.read_bytes().splitlines() if ln.strip()]
        ingest = next(s for s in SERVICES if s.name == "ingest").url
        headers = {"content-type": "application/x-ndjson", **_api_headers()}
        self.out.say("run", f"publishing {len(lines)} seed events from {self.opts.seed.name} "
                     f"to POST {ingest}/v1/events")
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            for attempt in range(10):
                resp: httpx.Response | None = None
                try:
                    resp = await client.post(f"{ingest}/v1/events", content=b"\n".join(lines) + b"\n")
                    detail = f"HTTP {resp.status_code} {resp.text[:500]}"
                except httpx.HTTPError as exc:
                    detail = str(exc)
                if resp is not None and resp.status_code == 202:
                    doc = resp.json()
                    ids = doc.get("accepted", doc.get("ids", [])) if isinstance(doc, dict) else doc
                    self.counts["published"] = len(ids) if isinstance(ids, list) else len(lines)
                    self.out.say("run", f"ingest accepted {self.counts['published']} events", "bold green")
                    return
                self.out.say("run", f"publishing the seed: {detail}", "red")
                if resp is not None and resp.status_code < 500:
                    return  # a client error will not fix itself
                await asyncio.sleep(min(2 ** attempt, 10))

    async def tail(self, settings: Any) -> None:
        """Print every enriched event and delivery record produced from now on."""
        from aiokafka import TopicPartition

        from shared.kafka import make_admin, make_consumer
        from shared.topics import ENRICHED_EVENTS, NOTIFICATIONS

        names = {settings.topic(ENRICHED_EVENTS): "event", settings.topic(NOTIFICATIONS): "delivery"}
        admin = make_admin(settings)
        await admin.start()
        try:
            described = await admin.describe_topics(list(names))
        finally:
            await admin.close()
        tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self.tail_ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    for r in records:
                        label = names[tp.topic]
                        try:
                            doc = orjson.loads(r.value or b"null")
                        except orjson.JSONDecodeError:
                            continue
                        if label == "event":
                            self.counts["enriched"] += 1
                            self.out.say("event", describe_enriched(doc))
                        else:
                            self.counts["notified"] += 1
                            self.out.say("delivery", describe_delivery(doc))
        finally:
            self.tail_ready.set()
            await consumer.stop()

    tail_ready: asyncio.Event

    def where_to_look(self) -> None:
        urls = {s.name: s.url for s in SERVICES}
        lines = [
            f"ingest API     {urls['ingest']}/docs   (POST /v1/events, /v1/announcements, /v1/agreements)",
            f"notify API     {urls['notify']}/docs   (subscriptions; SSE at {urls['notify']}/v1/stream)",
            "metrics        " + "  ".join(f"{u}/metrics" for u in urls.values()),
            f"Kafka          {self.bootstrap}   (kcat -b {self.bootstrap} -C -t enriched-events)",
        ]
        if self.prometheus_url:
            lines.append(f"Prometheus     {self.prometheus_url}   (alerts at {alerts_page(self.prometheus_url)})")
        lines.append("Ctrl-C stops everything this started.")
        for line in lines:
            self.out.say("run", line, "bold")


def alerts_page(prometheus_url: str) -> str:
    """Where this Prometheus shows its alerts: ``/alerts``, or ``/classic/alerts`` when the
    binary has no React UI (Debian's package builds Prometheus without it, and answers 404
    on ``/alerts``). One loopback request, once, when ``make run`` says where to look."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{prometheus_url}/alerts", timeout=2):
            return f"{prometheus_url}/alerts"
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return f"{prometheus_url}/classic/alerts"
    except OSError:
        pass
    return f"{prometheus_url}/alerts"


def describe_enriched(doc: Any) -> str:
    if not isinstance(doc, dict):
        return repr(doc)[:200]
    data = doc.get("data") or {}
    title = _title(doc)
    orgs = data.get("organizations") or []
    shown = []
    for o in orgs[:6]:
        resolved = o.get("resolved") if isinstance(o, dict) else None
        name = o.get("name", "?") if isinstance(o, dict) else str(o)
        shown.append(f"{name} → {resolved.get('id')}" if isinstance(resolved, dict) else f"{name} → ?")
    more = f" (+{len(orgs) - 6})" if len(orgs) > 6 else ""
    enrichment = data.get("enrichment") or {}
    resolved = enrichment.get("resolved")
    n_resolved = len(resolved) if isinstance(resolved, list) else resolved
    stats = f"{n_resolved} resolved, {len(enrichment.get('unresolved') or [])} unresolved"
    names = "; ".join(shown) + more
    return f"enriched {doc.get('type')} {doc.get('id')}: {title!r}; {stats}" + (f"; {names}" if names else "")


def _title(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    title = str(data.get("headline") or data.get("title") or "") if isinstance(data, dict) else ""
    return title if len(title) <= 80 else title[:77] + "..."


def describe_delivery(doc: Any) -> str:
    if not isinstance(doc, dict):
        return repr(doc)[:200]
    extra = f" status={doc['status_code']}" if doc.get("status_code") else ""
    if doc.get("error"):
        extra += f" error={str(doc['error'])[:120]}"
    return (f"{doc.get('outcome')} via {doc.get('channel')} event={doc.get('event_id')} "
            f"subscription={doc.get('subscription_id')} attempt={doc.get('attempt')}{extra}")


# --------------------------------------------------------------------------- entry point


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(opts: Options) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM/SIGHUP, or until the
    process that started it dies; returns the exit code."""
    from devtools.localkafka import LocalKafkaError

    printer = Printer()

    def _early_stop(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    # until the event loop takes over, a signal unwinds the start-up (stopping the broker)
    old_term = signal.signal(signal.SIGTERM, _early_stop)
    old_hup = signal.signal(signal.SIGHUP, _early_stop)
    _stop_with_parent()
    broker = None
    code = 0
    try:
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        bootstrap, broker = start_broker(opts, printer)
        code = asyncio.run(_main(opts, printer, bootstrap))
    except (Stop, KeyboardInterrupt):
        printer.say("run", "interrupted during start-up")
        code = 130
    except (StartupError, LocalKafkaError) as exc:
        printer.say("run", str(exc), "bold red")
        code = 2
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        if broker is not None:
            printer.say("kafka", f"stopping the broker (pid {broker.proc.pid if broker.proc else '-'})")
            with contextlib.suppress(KeyboardInterrupt):
                broker.stop()
        printer.say("run", "stopped; nothing left running")
    return code


async def _main(opts: Options, printer: Printer, bootstrap: str) -> int:
    stack = Stack(opts, printer, bootstrap)
    stack.tail_ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def _on_signal(sig: signal.Signals) -> None:
        if not stack.sup.stopping.is_set():
            printer.say("run", f"{sig.name}: stopping everything (Ctrl-C again to kill at once)",
                        "bold")
            stack.sup.stopping.set()
        elif sig == signal.SIGINT:  # a second Ctrl-C: do not wait for graceful shutdowns
            stack.sup.kill_all()
        # any other signal while stopping (a closed terminal sends SIGHUP, then make's
        # death SIGTERM): the graceful stop under way goes on

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _on_signal, sig)
    main: asyncio.Task[None] = asyncio.create_task(stack.run())
    stopper = asyncio.create_task(stack.sup.stopping.wait())
    code = 0
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        exc = main.exception() if main.done() and not main.cancelled() else None
        if isinstance(exc, StartupError):
            printer.say("run", str(exc), "bold red")
            code = 2
        elif exc is not None and not isinstance(exc, Stop):
            printer.say("run", f"failed: {exc!r}", "bold red")
            code = 1
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Stop, Exception):
                await main
    finally:
        stopper.cancel()
        await stack.sup.stop_all()
        if stack.receiver is not None:
            stack.receiver.stop()
        c = stack.counts
        printer.say("run", f"this run: {c['published']} published, {c['enriched']} enriched, "
                    f"{c['notified']} delivery records")
    return code

