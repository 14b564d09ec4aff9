"""``anting run`` (what ``make run`` calls): the whole stack on this machine, supervised.

A local Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names one), the topics,
the catalog, ``anting serve ingest|enrich|notify|insights`` as child processes (output
interleaved and labelled), Prometheus when its binary is installed, a demo
subscription, the seed article published through the ingest API (enrich's documents
stage reads its events out of it), and the
enriched events and notifications printed as they arrive. A child that dies is
restarted with backoff; Ctrl-C, SIGTERM or SIGHUP stops every child, then the broker.
So does the death of whatever started ``anting run`` (a ``kill -9`` of ``make run``):
the kernel sends it SIGTERM then (the parent-death signal), and each child gets the
same signal should ``anting run`` itself be killed.

This module decides what starts, in which order, and what is printed about it; the
supervision itself is devtools.supervisor, the output devtools.console, the demo
webhook receiver devtools.demo_receiver, Prometheus' config devtools.prometheus and
the local broker devtools.localkafka. It is a tool, not a service: it owns no topic
and exports no metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from devtools import REPO_ROOT, STATE_DIR
from devtools.console import Printer, describe_delivery, describe_enriched
from devtools.demo_receiver import WebhookReceiver, loopback_allowed
from devtools.localkafka import (
    LocalCluster,
    LocalKafka,
    LocalKafkaError,
    broker_answers,
    check_tools,
    cluster_brokers,
    cluster_replication,
    port_open,
    secure_material,
    secured_lines,
)
from devtools.prometheus import alerts_page, prometheus_argv, prometheus_config
from devtools.supervisor import Child, Supervisor, child_setup, stop_with_parent
from shared.where import port_offset, remove_profile, write_profile

if TYPE_CHECKING:
    from devtools.secure import SecureMaterial
    from shared.settings import AntingSettings

__all__ = [
    "SEED",
    "SERVICES",
    "Options",
    "ServiceSpec",
    "Stack",
    "StartupError",
    "Stop",
    "anting_command",
    "prepare_cluster",
    "run",
    "scrape_targets",
    "start_broker",
    "watch_broker",
]

# the seed story as it was published: the demo reads it as any article is read. The same
# story as structured events (services/ingest/samples/*.ndjson) is ANTING_RUN_SEED's other form
SEED = REPO_ROOT / "docs" / "seed" / "world-metaverse-conference.txt"
DEMO_PREFIX = "make-run"  # names of the demo subscriptions, replaced on every run


@dataclass(frozen=True)
class ServiceSpec:
    """A service ``anting run`` starts, and where it listens: the port and host its own
    ``ANTING_<NAME>_PORT`` / ``ANTING_<NAME>_HOST`` name (read when asked), else
    ``default_port`` on 127.0.0.1."""

    name: str
    default_port: int

    @property
    def port(self) -> int:
        """ANTING_<NAME>_PORT, else ``default_port`` moved by ANTING_PORT_OFFSET."""
        own = os.environ.get(f"ANTING_{self.name.upper()}_PORT", "").strip()
        return int(own) if own else self.default_port + port_offset()

    @property
    def url(self) -> str:
        """``http://host:port`` to reach it here (loopback when bound to every interface)."""
        host = os.environ.get(f"ANTING_{self.name.upper()}_HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # bound to every interface: reach it on loopback
        return f"http://{host}:{self.port}"


SERVICES = (ServiceSpec("ingest", 8001), ServiceSpec("enrich", 8002), ServiceSpec("notify", 8003),
            ServiceSpec("insights", 8004))


@dataclass
class Options:
    """What ``anting run`` is given (its command-line options): ports on 127.0.0.1,
    Prometheus' scrape interval in seconds, the seed to publish (an article — ``.txt``,
    ``.md``, ``.html`` — or NDJSON events), where the broker
    and Prometheus keep data, how long to wait for the services to be ready and the
    longest restart backoff, both in seconds. ``brokers`` above 1 runs a local cluster
    of that many nodes, listening on ``kafka_port``, ``kafka_port + 1``, ...
    ``security`` "sasl_ssl" secures the local broker or cluster (devtools.secure): each
    service then signs in as its own SCRAM user under the ACL table (services.acls)."""

    kafka_port: int = 9092
    brokers: int = 1
    prometheus: bool = True
    prometheus_port: int = 9090
    scrape_interval: float = 5.0
    seed: Path = SEED
    state_dir: Path = STATE_DIR
    ready_timeout: float = 180.0
    max_backoff: float = 30.0
    security: str = "none"


class Stop(Exception):
    """SIGTERM or SIGINT before the supervisor loop runs."""


class StartupError(Exception):
    """The stack cannot start; the message says what to do."""


def anting_command() -> str:
    """The ``anting`` beside this Python (the virtualenv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "anting"
    return str(beside) if beside.exists() else (shutil.which("anting") or "anting")


# --------------------------------------------------------------------------- the broker


def _external_secured(opts: Options) -> None:
    """A secured run needs its own local broker: the users, ACLs and CA are made here."""
    if opts.security != "none" and os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        raise StartupError(
            "ANTING_RUN_SECURITY secures the local Kafka that `anting run` starts; for a secured "
            "cluster of your own unset it and set KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, "
            "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SSL_CAFILE (README, 'Security')")


def start_broker(opts: Options, printer: Printer,
                 material: SecureMaterial | None = None) -> tuple[str, LocalKafka | None]:
    """(bootstrap, LocalKafka or None): KAFKA_BOOTSTRAP_SERVERS when set, else a Kafka
    already answering on the port (used, never stopped), else a local broker we start
    (the caller stops it), secured with ``material`` when given (its data then in
    ``kafka-secure-<port>``: a broker formatted without SCRAM users cannot be secured
    later). Raises ``StartupError`` when something else holds the port (any broker, when
    secured: ours must be the one with these users), ``LocalKafkaError`` when the local
    broker cannot be had."""
    _external_secured(opts)
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        printer.say("kafka", f"using KAFKA_BOOTSTRAP_SERVERS={env}")
        return env, None
    bootstrap = f"127.0.0.1:{opts.kafka_port}"
    if port_open(opts.kafka_port) and material is not None:
        raise StartupError(
            f"127.0.0.1:{opts.kafka_port} is in use: a secured run starts a broker of its own. "
            "Stop what listens there, or move the stack: ANTING_PORT_OFFSET=10000 (every port), "
            "or ANTING_RUN_KAFKA_PORT to a free port.")
    if port_open(opts.kafka_port):
        if asyncio.run(broker_answers(bootstrap)):
            printer.say("kafka", f"a Kafka broker already answers on {bootstrap}: using it "
                        "(started elsewhere, so it is left running)", "yellow")
            return bootstrap, None
        raise StartupError(
            f"127.0.0.1:{opts.kafka_port} is in use by something that is not a Kafka broker. "
            "Free it, or move the stack: ANTING_PORT_OFFSET=10000 (every port), or "
            "ANTING_RUN_KAFKA_PORT to another port, or KAFKA_BOOTSTRAP_SERVERS to a broker of your own."
        )
    check_tools()  # without Java or Maven: what to install, before "starting"
    data_dir = opts.state_dir / (f"kafka-{opts.kafka_port}" if material is None
                                 else f"kafka-secure-{opts.kafka_port}")
    how = "" if material is None else "secured (SASL_SSL) "
    printer.say("kafka", f"starting a {how}local Kafka broker on {bootstrap} (data {data_dir}) ...")
    t0 = time.monotonic()
    if material is not None:
        material.issue_tls()  # only now: a refused start leaves another broker's CA alone
    broker = LocalKafka(port=opts.kafka_port, data_dir=data_dir, secure=material)
    try:
        broker.start()
    except BaseException:
        broker.stop()
        raise
    assert broker.proc is not None
    printer.say("kafka", f"broker ready in {time.monotonic() - t0:.1f}s (pid {broker.proc.pid}, "
                f"log {broker.log_file})")
    return bootstrap, broker


def prepare_cluster(opts: Options, printer: Printer,
                    material: SecureMaterial | None = None) -> tuple[str, LocalCluster | None]:
    """(bootstrap, LocalCluster or None) for ``opts.brokers`` nodes: KAFKA_BOOTSTRAP_SERVERS
    when set, else a cluster already answering on every port (used, never stopped), else a
    local cluster to be started by the stack under its supervisor (its nodes restarted
    like the services when they die). Raises ``StartupError`` when something else holds
    one of the ports, ``LocalKafkaError`` when the cluster cannot be had. Secured with
    ``material`` when given, as ``start_broker``."""
    _external_secured(opts)
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        printer.say("kafka", f"using KAFKA_BOOTSTRAP_SERVERS={env} (ANTING_RUN_BROKERS is "
                    "for a local cluster only)")
        return env, None
    ports = [opts.kafka_port + i for i in range(opts.brokers)]
    bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports)
    held = [p for p in ports if port_open(p)]
    if held and material is not None:
        raise StartupError(
            f"127.0.0.1:{held[0]} is in use: a secured run starts a cluster of its own. Stop what "
            "listens there, or set ANTING_RUN_KAFKA_PORT to another first port.")
    if held:
        if len(held) == len(ports) and len(asyncio.run(cluster_brokers(bootstrap))) >= opts.brokers:
            printer.say("kafka", f"a Kafka cluster already answers on {bootstrap}: using it "
                        "(started elsewhere, so it is left running)", "yellow")
            return bootstrap, None
        raise StartupError(
            f"127.0.0.1:{held[0]} is in use by something that is not this {opts.brokers}-node "
            "cluster. Free it, or set ANTING_RUN_KAFKA_PORT to another first port, or "
            "KAFKA_BOOTSTRAP_SERVERS to a cluster of your own."
        )
    check_tools()
    if material is not None:
        material.issue_tls()  # only now: a refused start leaves another cluster's CA alone
    name = f"kafka-cluster-{opts.kafka_port}" if material is None else f"kafka-cluster-secure-{opts.kafka_port}"
    return bootstrap, LocalCluster(opts.brokers, ports=ports, data_dir=opts.state_dir / name,
                                   secure=material)


# --------------------------------------------------------------------------- the stack


def _api_headers() -> dict[str, str]:
    keys = [k.strip() for k in os.environ.get("ANTING_API_KEYS", "").split(",") if k.strip()]
    return {"authorization": f"Bearer {keys[0]}"} if keys else {}


def scrape_targets(opts: Options) -> dict[str, str]:
    """Prometheus' job name → ``host:port`` on this machine: each service's, and its own."""
    targets = {s.name: s.url.removeprefix("http://") for s in SERVICES}
    targets["prometheus"] = f"127.0.0.1:{opts.prometheus_port}"
    return targets


class Stack:
    """One run of the stack on ``bootstrap``, its children under ``sup``; ``run()`` starts
    it all and returns once a stop begins, the caller then stops the children
    (``sup.stop_all()``) and the demo receiver."""

    def __init__(self, opts: Options, printer: Printer, bootstrap: str,
                 cluster: LocalCluster | None = None, material: SecureMaterial | None = None) -> None:
        self.opts = opts
        self.material = material  # a secured local Kafka: per-principal credentials
        self.out = printer
        self.bootstrap = bootstrap
        self.cluster = cluster  # started by run(), its nodes supervised like the services
        self.sup = Supervisor(printer, cwd=REPO_ROOT, max_backoff=opts.max_backoff)
        self.receiver: WebhookReceiver | None = None
        self.prometheus_url: str | None = None
        self.counts = {"published": 0, "enriched": 0, "notified": 0}
        self.tail_ready = asyncio.Event()  # set once the tail reads from the end (or failed)

    def child_env(self, principal: str | None = None) -> dict[str, str]:
        """The children's environment: ours, with the broker and unbuffered output, and
        loopback allowed for notify's webhooks unless ANTING_NOTIFY_ALLOW_NETWORKS is set.

        On a secured local Kafka, ``principal``'s ``KAFKA_*`` credentials (a service's
        own user, ``anting-<service>``; ``anting-admin`` for the catalog load); without
        a principal no Kafka credentials at all (Prometheus, the HTTP-only CLI)."""
        env = dict(os.environ)
        if self.material is not None:
            for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                         "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE"):
                env.pop(name, None)
            if principal is not None:
                env.update(self.material.env(principal, self.bootstrap))
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.bootstrap
        # said here, so that no child takes them from a profile (another run's in this
        # checkout, say): the children are where this run put them
        env["ANTING_PORT_OFFSET"] = str(port_offset())
        env.setdefault("ANTING_TOPIC_PREFIX", "")
        env["PYTHONUNBUFFERED"] = "1"
        # the demo webhook receiver listens on loopback, which notify refuses by default
        env.setdefault("ANTING_NOTIFY_ALLOW_NETWORKS", "127.0.0.0/8")
        # one enrich, restarted under the same transactional id: a killed one's open
        # transaction is aborted as the new one starts, instead of holding read-committed
        # readers (notify) back until it times out
        env.setdefault("ANTING_ENRICH_INSTANCE_ID", "run-0")
        return env

    def settings(self) -> AntingSettings:
        """The settings of this environment (its topic prefix, say), on our broker; on a
        secured local Kafka as ``anting-admin``: the stack's own tooling (topics, the tail
        of enriched-events and the delivery log) is the operator's, and no service user
        may read both of those topics."""
        from shared.settings import AntingSettings, KafkaSettings, load

        if self.material is not None:
            from services.acls import ADMIN

            prefix = load(AntingSettings).topic_prefix
            return self.material.settings(ADMIN, self.bootstrap, prefix)
        return load(AntingSettings, kafka=load(KafkaSettings, bootstrap_servers=self.bootstrap))

    async def run(self) -> None:
        """Topics, catalog, services, Prometheus, demo subscriptions, the tail, the seed;
        then wait until a stop begins. Raises ``StartupError`` when a service's port is
        taken, ``Stop`` when a stop begins before the services are ready."""
        for spec in SERVICES:
            if port_open(spec.port):
                raise StartupError(
                    f"{spec.url} is already in use: another {spec.name}? Stop it, or move the "
                    f"stack: ANTING_PORT_OFFSET=10000 (every port), or ANTING_{spec.name.upper()}_PORT "
                    "to a free port."
                )
        from shared.kafka import ensure_topics

        if self.cluster is not None:
            await self.start_cluster(self.cluster)
        settings = self.settings()
        if self.material is not None:
            from devtools.secure import provision

            created = await provision(self.material, self.bootstrap, settings.topic_prefix)
            for line in secured_lines(self.material, self.bootstrap):
                self.out.say("kafka", line)
        else:
            created = await ensure_topics(settings)
        self.out.say("kafka", f"topics: created {len(created)}" + (f" ({', '.join(created)})" if created else " (all existed)"))
        await self.load_catalog()
        env = self.child_env()
        for spec in SERVICES:
            await self.sup.start(Child(spec.name, [anting_command(), "serve", spec.name],
                                       self.child_env(f"anting-{spec.name}")))
        await self.start_prometheus(env)
        self.write_profile(settings)
        ready = await self.wait_ready()
        await self.subscribe(ready)
        tail = asyncio.create_task(self.tail(settings), name="tail")
        tail.add_done_callback(self._tail_done)
        await self.tail_ready.wait()
        if "ingest" in ready:
            await self.publish_seed()
        self.where_to_look()
        if "ingest" in ready and "insights" in ready:
            await self.show_insights(env)  # after the URLs: insights may take a while to fold the seed
        await self.sup.stopping.wait()
        tail.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await tail

    async def start_cluster(self, cluster: LocalCluster, timeout: float = 120.0) -> None:
        """Start each node of ``cluster`` as a supervised child (``kafka-<id>``: restarted
        when it dies, stopped after the services) and wait until every broker is
        registered. Raises ``LocalKafkaError`` when the nodes cannot be prepared or the
        cluster is not ready in ``timeout`` seconds, ``Stop`` when a stop begins first."""
        rf, min_isr = cluster_replication(len(cluster.nodes))
        self.out.say("kafka", f"starting a local {len(cluster.nodes)}-node Kafka cluster on "
                     f"{cluster.bootstrap} (replication factor {rf}, min.insync.replicas "
                     f"{min_isr}; data {cluster.data_dir}) ...")
        t0 = time.monotonic()
        argvs = await asyncio.to_thread(cluster.prepare)
        for node, argv in zip(cluster.nodes, argvs, strict=True):
            await self.sup.start(Child(f"kafka-{node.node_id}", argv, dict(os.environ),
                                       on_spawn=_pid_writer(node.pid_file),
                                       output=node.stdout_file, logs=(node.log_file,)))
        want = {n.node_id for n in cluster.nodes}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sup.stopping.is_set():
                raise Stop
            if all(port_open(n.port) for n in cluster.nodes) and want <= await cluster_brokers(
                    cluster.bootstrap, cluster.client_options()):
                self.out.say("kafka", f"cluster ready in {time.monotonic() - t0:.1f}s: bootstrap "
                             f"{cluster.bootstrap} (logs {cluster.data_dir}/node-*/server.log)")
                return
            await asyncio.sleep(0.3)
        raise LocalKafkaError(f"the {len(want)}-node Kafka cluster was not ready within "
                              f"{timeout:.0f}s (logs: {cluster.data_dir}/node-*/server.log)")

    @property
    def profile(self) -> Path:
        """Where this run says where its stack is, for every other ``anting`` command."""
        return self.opts.state_dir / "stack.env"

    def write_profile(self, settings: AntingSettings) -> None:
        """Write the profile (shared/where.py): the broker, the topic prefix, the port
        offset and every URL, so that a command in another terminal finds this stack."""
        values = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "ANTING_TOPIC_PREFIX": settings.topic_prefix,
                  "ANTING_PORT_OFFSET": os.environ.get("ANTING_PORT_OFFSET", "").strip()}
        values.update({f"ANTING_{s.name.upper()}_URL": s.url for s in SERVICES})
        if self.prometheus_url:
            values["ANTING_PROMETHEUS_URL"] = self.prometheus_url
        write_profile(self.profile, values, os.getpid())
        self.out.say("run", f"where this stack is: {self.profile} (read by every `anting` command; "
                     "`anting where` shows it)")

    def _tail_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.out.say("run", f"cannot show enriched events and deliveries: {task.exception()!r}",
                         "red")

    async def load_catalog(self) -> None:
        """``anting orgs load`` once, its output printed; a failure is said, not raised."""
        proc = await asyncio.create_subprocess_exec(
            anting_command(), "orgs", "load", env=self.child_env("anting-admin"), cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=child_setup,
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
        """Prometheus as a child, scraping this stack, when wanted, installed and its port
        free; otherwise a line saying why not."""
        binary = shutil.which("prometheus")
        if not self.opts.prometheus or binary is None:
            if binary is None:
                self.out.say("prometheus", "no `prometheus` binary on PATH: not started "
                             "(Debian: apt-get install prometheus)")
            return
        port = self.opts.prometheus_port
        if port_open(port):
            self.out.say("prometheus", f"127.0.0.1:{port} is in use: not started "
                         "(set ANTING_PORT_OFFSET, or ANTING_RUN_PROMETHEUS_PORT, to move it)", "yellow")
            return
        data = self.opts.state_dir / f"prometheus-{port}"
        config = prometheus_config(data, scrape_targets(self.opts), self.opts.scrape_interval)
        argv = prometheus_argv(binary, config, data, port)
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
            if loopback_allowed(self.child_env()["ANTING_NOTIFY_ALLOW_NETWORKS"]):
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
        """POST the seed to ingest — an article to ``/v1/documents``, NDJSON events to
        ``/v1/events`` as one batch — in up to ten attempts while ingest is unreachable or
        answers 5xx; a failure is said, not raised."""
        import httpx

        from services.ingest.document_files import document_media_type

        if not self.opts.seed.is_file():
            self.out.say("run", f"no seed file at {self.opts.seed}: publish your own "
                         "(see README, 'Publish')", "yellow")
            return
        ingest = next(s for s in SERVICES if s.name == "ingest").url
        media = document_media_type(self.opts.seed)
        if media is not None:
            body = self.opts.seed.read_bytes()
            url, content_type = f"{ingest}/v1/documents", media
            self.out.say("run", f"publishing the article {self.opts.seed.name} to POST {url}")
        else:
            lines = [ln for ln in self.opts.seed.read_bytes().splitlines() if ln.strip()]
            body = b"\n".join(lines) + b"\n"
            url, content_type = f"{ingest}/v1/events", "application/x-ndjson"
            self.out.say("run", f"publishing {len(lines)} seed events from {self.opts.seed.name} "
                         f"to POST {url}")
        headers = {"content-type": content_type, **_api_headers()}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            for attempt in range(10):
                resp: httpx.Response | None = None
                try:
                    resp = await client.post(url, content=body)
                    detail = f"HTTP {resp.status_code} {resp.text[:500]}"
                except httpx.HTTPError as exc:
                    detail = str(exc)
                if resp is not None and resp.status_code == 202:
                    doc = resp.json()
                    if media is not None:
                        self.counts["published"] = 1
                        self.out.say("run", f"ingest accepted the article as document {doc['id']} "
                                     f"({doc['characters']} characters); enrich reads its events "
                                     "out of it", "bold green")
                        return
                    ids = doc.get("accepted", doc.get("ids", [])) if isinstance(doc, dict) else doc
                    self.counts["published"] = len(ids) if isinstance(ids, list) else len(lines)
                    self.out.say("run", f"ingest accepted {self.counts['published']} events", "bold green")
                    return
                self.out.say("run", f"publishing the seed: {detail}", "red")
                if resp is not None and resp.status_code < 500:
                    return  # a client error will not fix itself
                await asyncio.sleep(min(2 ** attempt, 10))

    async def show_insights(self, env: dict[str, str], timeout: float = 60.0) -> None:
        """Once insights has folded the seed (Anting Town Government has an agreement),
        print ``anting insights partners anting-town-government`` and ``anting insights
        top --window week``; after ``timeout`` seconds say so instead."""
        import httpx

        url = next(s for s in SERVICES if s.name == "insights").url
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5, headers=_api_headers()) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    resp = await client.get(f"{url}/v1/organizations/anting-town-government/partners")
                    if resp.status_code == 200 and resp.json().get("latest_agreement"):
                        break
                await asyncio.sleep(0.5)
            else:
                self.out.say("insights", "the seed's agreement has not reached insights yet: "
                             "try `anting insights partners anting-town-government`", "yellow")
                return
        cli_env = {**env, "ANTING_INSIGHTS_URL": url, "COLUMNS": "120"}
        for args in (["partners", "anting-town-government"], ["top", "--window", "week"]):
            proc = await asyncio.create_subprocess_exec(
                anting_command(), "insights", *args, env=cli_env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            self.out.say("insights", "$ anting insights " + " ".join(args), "bold")
            for line in out.decode(errors="replace").splitlines():
                self.out.say("insights", line)

    async def tail(self, settings: AntingSettings) -> None:
        """Print every enriched event and delivery record produced from now on (until
        cancelled); ``tail_ready`` is set once it reads from the end."""
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

    def where_to_look(self) -> None:
        """Print the URLs of the APIs, the metrics, Kafka and Prometheus."""
        urls = {s.name: s.url for s in SERVICES}
        lines = [
            f"ingest API     {urls['ingest']}/docs   (POST /v1/events, /v1/announcements, /v1/agreements)",
            f"notify API     {urls['notify']}/docs   (subscriptions; SSE at {urls['notify']}/v1/stream)",
            f"insights API   {urls['insights']}/docs   (anting insights partners anting-town-government)",
            "metrics        " + "  ".join(f"{u}/metrics" for u in urls.values()),
            f"Kafka          {self.bootstrap}   (kcat -b {self.bootstrap} -C -t enriched-events)"
            + (f"; {len(self.cluster.nodes)} brokers, each restarted when it dies"
               if self.cluster is not None else ""),
        ]
        if self.material is not None:
            lines[-1] = (f"Kafka          {self.bootstrap}   SASL_SSL; "
                         + secured_lines(self.material, self.bootstrap)[2]
                         + (f"; {len(self.cluster.nodes)} brokers, each restarted when it dies"
                            if self.cluster is not None else ""))
        if self.prometheus_url:
            lines.append(f"Prometheus     {self.prometheus_url}   (alerts at {alerts_page(self.prometheus_url)})")
        lines.append("Ctrl-C stops everything this started.")
        for line in lines:
            self.out.say("run", line, "bold")



# --------------------------------------------------------------------------- entry point


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(opts: Options) -> int:
    """Run the stack in the foreground until SIGINT/SIGTERM/SIGHUP, or until the
    process that started it dies; returns the exit code: 0 after a stop, 130 when
    interrupted during start-up, 2 when it cannot start (a ``StartupError`` or
    ``LocalKafkaError``: its message is printed, not raised), 1 when the stack failed
    otherwise. The broker it started is stopped before it returns."""
    printer = Printer()

    def _early_stop(signum: int, _frame: object) -> None:
        raise Stop(signal.Signals(signum).name)

    # until the event loop takes over, a signal unwinds the start-up (stopping the broker)
    old_term = signal.signal(signal.SIGTERM, _early_stop)
    old_hup = signal.signal(signal.SIGHUP, _early_stop)
    stop_with_parent()
    broker = None
    code = 0
    try:
        opts.state_dir.mkdir(parents=True, exist_ok=True)
        cluster = None
        _external_secured(opts)
        material = secure_material(opts.security, opts.state_dir)
        if opts.brokers > 1:
            bootstrap, cluster = prepare_cluster(opts, printer, material)
        else:
            bootstrap, broker = start_broker(opts, printer, material)
        code = asyncio.run(_main(opts, printer, bootstrap, cluster, material, broker))
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


async def watch_broker(broker: LocalKafka, printer: Printer, stopping: asyncio.Event,
                       interval: float = 0.5) -> int | None:
    """Wait for the local broker ``broker`` (started by ``start_broker``, not supervised:
    it holds data other runs use) to exit, checking every ``interval`` seconds. When it
    exits before a stop begins, print how and the last lines of its ``server.log`` and
    ``stdout.log`` (why it died is there, not in anything the services say), set
    ``stopping`` (nothing of the stack works without it) and return its exit code;
    return ``None`` once ``stopping`` is set otherwise."""
    while not stopping.is_set():
        proc = broker.proc
        if proc is None:
            return None
        rc = proc.poll()
        if rc is not None:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
            printer.say("kafka", f"the broker (pid {proc.pid}) {how}; stopping the stack, "
                        "which cannot run without it", "bold red")
            for line in broker.last_lines(20).splitlines():
                printer.say("kafka", line)
            stopping.set()
            return rc
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
    return None


def _pid_writer(path: Path) -> Callable[[int], None]:
    """Write each PID of a supervised broker to its PID file, so that a later start on its
    data dir stops one a SIGKILLed run left (``LocalKafka.prepare``)."""
    def write(pid: int) -> None:
        path.write_text(str(pid))

    return write


async def _main(opts: Options, printer: Printer, bootstrap: str, cluster: LocalCluster | None,
                material: SecureMaterial | None = None, broker: LocalKafka | None = None) -> int:
    stack = Stack(opts, printer, bootstrap, cluster, material)
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
    watcher = (asyncio.create_task(watch_broker(broker, printer, stack.sup.stopping))
               if broker is not None else None)
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
        if watcher is not None and watcher.done() and not watcher.cancelled() \
                and watcher.result() is not None:
            code = code or 1  # the broker died under the stack
    finally:
        stopper.cancel()
        if watcher is not None:
            watcher.cancel()
        await stack.sup.stop_all()
        remove_profile(stack.profile, os.getpid())
        if stack.receiver is not None:
            stack.receiver.stop()
        c = stack.counts
        printer.say("run", f"this run: {c['published']} published, {c['enriched']} enriched, "
                    f"{c['notified']} delivery records")
    return code

