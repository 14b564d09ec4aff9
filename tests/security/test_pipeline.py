"""The whole pipeline on the secured broker, each service signed in as its own principal
under the ACL table: the seed published with kcat as ``publisher``, enriched, delivered
to a webhook, read back with kcat as ``reader``; insights folds it too."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from devtools.localkafka import free_port
from devtools.testing import ServiceProcess
from services.acls import ADMIN
from services.enrich import catalog
from shared.access import key_line, new_key
from shared.topics import INPUT_TOPICS_BY_TYPE
from tests.notify.helpers import Receiver, wait_until
from tests.security.conftest import SecuredKafka

pytestmark = pytest.mark.kafka

SEED = Path(__file__).resolve().parents[2] / "services" / "ingest" / "samples" / "world-metaverse-conference.ndjson"


async def ready(client: httpx.AsyncClient, url: str, proc: ServiceProcess, timeout: float = 120) -> None:
    """Wait until ``url`` (a /readyz) answers 200, or fail with the service's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited: {proc.log()[-3000:]}")
        try:
            if (await client.get(url)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.3)
    raise AssertionError(f"{proc.name} not ready: {proc.log()[-3000:]}")


def seed_by_topic() -> dict[str, list[tuple[str, bytes]]]:
    """The seed's lines grouped by the topic of their type, each with the key ingest
    would give it (the CloudEvent's subject, else its id)."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    for line in SEED.read_bytes().splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line)
        topic = INPUT_TOPICS_BY_TYPE[event["type"]].name
        out.setdefault(topic, []).append((event.get("subject") or event["id"], line))
    return out


async def test_seed_through_the_secured_pipeline(secure_kafka: SecuredKafka, tmp_path: Path,
                                               log_secrets: list[str]) -> None:
    """ingest, enrich, notify and insights, each with its own SCRAM user and only its ACLs,
    carry the seed (kcat as publisher) and one event POSTed to ingest to a webhook and to
    enriched-events, which reader reads with kcat in a group of its prefix."""
    await catalog.write(secure_kafka.settings(ADMIN), upserts=catalog.shipped())
    hook = await Receiver().start()
    ports = {name: free_port() for name in ("ingest", "enrich", "notify", "insights")}
    # the HTTP side secured too: one tenant's key per use, from a key file (hashes only)
    keys = {scope: new_key() for scope in ("events:publish", "subscriptions:manage", "insights:read")}
    keys_file = tmp_path / "api-keys.txt"
    keys_file.write_text("".join(key_line(k, "acme", [scope]) + "\n" for scope, k in keys.items()))
    log_secrets.extend(keys.values())
    bearer = {scope: {"authorization": f"Bearer {k}"} for scope, k in keys.items()}
    services = [
        ServiceProcess(name, secure_kafka.settings(f"anting-{name}"), tmp_path / f"{name}.log",
                       **secure_kafka.env(f"anting-{name}"),
                       **{f"ANTING_{name.upper()}_PORT": str(port)},
                       ANTING_NOTIFY_ALLOW_NETWORKS="127.0.0.0/8", ANTING_ENRICH_INSTANCE_ID="secure-0",
                       ANTING_API_KEYS_FILE=str(keys_file))
        for name, port in ports.items()
    ]
    run = uuid.uuid4().hex[:8]
    posted = {
        "specversion": "1.0", "id": f"secured-{run}", "source": "/tests/security",
        "type": "agreement.signed", "subject": f"secured-{run}", "datacontenttype": "application/json",
        "data": {"title": "An agreement signed over a secured cluster",
                 "organizations": [{"name": "Anting Town Government of Jiading District", "role": "party"},
                                   {"name": "Tongji University", "role": "party"}]},
    }
    try:
        for s in services:
            s.start()
        async with httpx.AsyncClient(timeout=10) as client:
            for s in services:
                await ready(client, f"http://127.0.0.1:{ports[s.name]}/readyz", s)
            r = await client.post(f"http://127.0.0.1:{ports['notify']}/v1/subscriptions", json={
                "name": "secured", "channel": {"type": "webhook", "url": hook.url("/secured")}},
                headers=bearer["subscriptions:manage"])
            assert r.status_code == 201, r.text
            sub_id = r.json()["id"]
            deadline = time.monotonic() + 15
            while (await client.get(f"http://127.0.0.1:{ports['notify']}/v1/subscriptions/{sub_id}",
                                    headers=bearer["subscriptions:manage"])).status_code != 200:
                assert time.monotonic() < deadline, "notify never served its new subscription"
                await asyncio.sleep(0.2)

            seeded: list[str] = []
            for topic, records in seed_by_topic().items():
                lines = "".join(f"{key}\t{value.decode()}\n" for key, value in records)
                got = secure_kafka.kcat("publisher", "-P", "-t", topic, "-K", "\t", input=lines)
                assert got.returncode == 0, got.stderr
                seeded += [orjson.loads(v)["id"] for _, v in records]
            r = await client.post(f"http://127.0.0.1:{ports['ingest']}/v1/events", content=orjson.dumps(posted),
                                  headers={"content-type": "application/cloudevents+json",
                                           **bearer["events:publish"]})
            assert r.status_code == 202, r.text
        wanted = {*seeded, posted["id"]}

        def delivered() -> set[str]:
            return {orjson.loads(d.body)["id"] for d in hook.on("/secured")} & wanted

        await wait_until(lambda: delivered() == wanted, timeout=90,
                         what=f"webhook deliveries of {len(wanted)} events")

        read = secure_kafka.kcat("reader", "-G", f"reader-{run}", "-o", "beginning", "-e",
                                 "-f", "%s\n", "enriched-events", timeout=60)
        assert read.returncode == 0, read.stderr
        enriched = [orjson.loads(line) for line in read.stdout.splitlines() if line.startswith("{")]
        ids = {e["id"] for e in enriched}
        assert wanted <= ids, wanted - ids
        agreement = next(e for e in enriched if e["id"] == posted["id"])
        assert "Anting Town Government of Jiading District" in orjson.dumps(agreement).decode()

        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                r = await client.get(f"http://127.0.0.1:{ports['insights']}/v1/organizations/"
                                     "anting-town-government/partners", headers=bearer["insights:read"])
                if r.status_code == 200 and r.json().get("latest_agreement"):
                    break
                assert time.monotonic() < deadline, f"insights never folded the agreement: {r.text[:500]}"
                await asyncio.sleep(0.5)
        # the lag monitors measure from the broker (OffsetFetch: Describe on the group,
        # implied by Read); a refusal there is only a debug line, so look at the gauge
        lag_groups = {"enrich": ["anting-enrich"], "notify": ["anting-notify", "anting-notify-retries"],
                      "insights": ["anting-insights-route", "anting-insights"]}
        async with httpx.AsyncClient(timeout=10) as client:
            for name, groups in lag_groups.items():
                deadline = time.monotonic() + 30
                while True:
                    text = (await client.get(f"http://127.0.0.1:{ports[name]}/metrics")).text
                    lag_lines = [ln for ln in text.splitlines() if ln.startswith("anting_consumer_lag{")]
                    missing = [g for g in groups if not any(f'group="{g}"' in ln for ln in lag_lines)]
                    if not missing:
                        break
                    assert time.monotonic() < deadline, f"{name}: no lag measured for {missing}"
                    await asyncio.sleep(0.5)
        for s in services:  # nothing refused, not even a start-up probe; no error at all
            log = s.log()
            refused = [ln for ln in log.splitlines() if "authoriz" in ln.lower()]
            assert not refused, f"{s.name} was refused something:\n" + "\n".join(refused[:10])
            errors = [ln for ln in log.splitlines() if '"level":"error"' in ln or '"level":"critical"' in ln]
            assert not errors, f"{s.name} logged errors:\n" + "\n".join(errors[:10])
    finally:
        for s in services:
            s.terminate()
        await hook.stop()
