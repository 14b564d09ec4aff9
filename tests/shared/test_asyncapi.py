"""The AsyncAPI 3.0 document (shared/asyncapi.py): docs/asyncapi.yaml is current, the
document is well formed (the fields AsyncAPI 3.0 requires, every $ref resolves), it
follows the topics, the prefix and SASL settings, the consumer groups are the services'
own, ingest and notify serve it, and @asyncapi/parser validates it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import httpx
import yaml

from services.enrich.settings import EnrichSettings
from services.ingest.api import create_app as ingest_app
from services.ingest.publisher import Publisher
from services.ingest.settings import IngestSettings
from services.insights.settings import InsightsSettings
from services.notify.api import create_app as notify_app
from services.notify.settings import NotifySettings
from services.notify.store import SubscriptionStore
from shared.asyncapi import ASYNCAPI_PATH, FLOWS, GROUPS, build, default_document, render_yaml
from shared.schemas import MODELS
from shared.settings import KafkaSettings
from shared.topics import ALL_TOPICS

REPO = Path(__file__).resolve().parents[2]
PARSER = REPO / ".local" / "node" / "node_modules" / "@asyncapi" / "parser"
VALIDATE_JS = """
const { Parser } = require('@asyncapi/parser');
const fs = require('fs');
(async () => {
  const diagnostics = await new Parser().validate(fs.readFileSync(process.argv[2], 'utf8'));
  const errors = diagnostics.filter(d => d.severity === 0);
  console.log(JSON.stringify(errors.map(d => ({path: d.path, message: d.message}))));
  process.exit(errors.length ? 1 : 0);
})();
"""


def _resolve(doc: dict[str, Any], ref: str) -> object:
    assert ref.startswith("#/"), ref
    node: object = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, ref
        node = node[part]
    return node


def _refs(node: object) -> list[str]:
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
    return own + [r for value in node.values() for r in _refs(value)]


def test_committed_document_is_current() -> None:
    """docs/asyncapi.yaml equals what `anting asyncapi` writes now."""
    assert ASYNCAPI_PATH.read_text() == render_yaml(default_document()), \
        "docs/asyncapi.yaml is stale; run `anting asyncapi`"


def test_document_is_well_formed() -> None:
    """The fields AsyncAPI 3.0 requires, and every $ref resolves within the document."""
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    for name, channel in doc["channels"].items():
        assert channel["address"] and channel["messages"], name
        for message in channel["messages"].values():
            assert "payload" in message
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        assert op["channel"]["$ref"].startswith("#/channels/")
        for m in op["messages"]:
            assert m["$ref"].startswith(op["channel"]["$ref"] + "/messages/"), name
    refs = _refs(doc)
    assert refs
    for ref in refs:
        _resolve(doc, ref)
    assert "$defs" not in json.dumps(doc)


def test_document_follows_the_topics_and_models() -> None:
    """Every topic a channel with its partitions and cleanup; every model's schema there,
    equal to docs/schemas' but for where the definitions live; every topic used."""
    doc = default_document()
    assert set(doc["channels"]) == {t.name for t in ALL_TOPICS}
    for topic in ALL_TOPICS:
        kafka = doc["channels"][topic.name]["bindings"]["kafka"]
        assert kafka["partitions"] == topic.partitions
        assert kafka["topicConfiguration"]["cleanup.policy"] == topic.cleanup.split(",")
    assert set(MODELS) <= set(doc["components"]["schemas"])
    assert {f.topic.name for f in FLOWS} == {t.name for t in ALL_TOPICS}
    binary = doc["channels"]["announcements"]["messages"]["binary"]
    assert "ce_specversion" in binary["headers"]["required"]


def test_prefix_sasl_and_groups() -> None:
    """The addresses carry ANTING_TOPIC_PREFIX; SASL is a security scheme of the server;
    the consumer groups are the services' defaults."""
    kafka = KafkaSettings.model_construct(
        bootstrap_servers="broker:9093", security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p", ssl_cafile=None)
    doc = build("staging.", kafka)
    assert doc["channels"]["announcements"]["address"] == "staging.announcements"
    assert doc["servers"]["kafka"]["protocol"] == "kafka-secure"
    assert doc["components"]["securitySchemes"]["sasl"]["type"] == "scramSha512"
    assert "securitySchemes" not in default_document()["components"]
    assert "p" not in json.dumps(doc["components"]["securitySchemes"]).split('"')
    assert GROUPS == {"enrich": EnrichSettings.model_fields["group"].default,
                      "notify": NotifySettings.model_fields["group"].default,
                      "insights": InsightsSettings.model_fields["group"].default}


class _Unready:
    async def ready(self) -> tuple[bool, str]:
        return False, "no broker in this test"


async def test_ingest_and_notify_serve_it() -> None:
    """``/asyncapi.json`` of each, for its own topic prefix."""
    apps = {
        "ingest": ingest_app(IngestSettings(topic_prefix="p1."), cast(Publisher, _Unready())),
        "notify": notify_app(NotifySettings(topic_prefix="p1."), cast(SubscriptionStore, object())),
    }
    for name, app in apps.items():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=f"http://{name}") as client:
            r = await client.get("/asyncapi.json")
        assert r.status_code == 200, name
        assert r.json()["channels"]["enriched-events"]["address"] == "p1.enriched-events"


def test_asyncapi_parser_validates_it(tmp_path: Path) -> None:
    """@asyncapi/parser (`make asyncapi-parser` installs it, and this test when missing)
    finds no error in the
    committed document nor in one with a prefix and SASL."""
    node = shutil.which("node")
    assert node, "node is needed to run @asyncapi/parser"
    if not PARSER.is_dir():  # installed once, as the suite resolves the broker's jars
        subprocess.run(["make", "-s", "asyncapi-parser"], cwd=REPO, check=True, timeout=600)
    script = tmp_path / "validate.js"
    script.write_text(VALIDATE_JS)
    sasl = KafkaSettings.model_construct(
        bootstrap_servers="broker:9093", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN", sasl_username="u", sasl_password="p", ssl_cafile=None)
    other = tmp_path / "asyncapi.yaml"
    other.write_text(render_yaml(build("staging.", sasl)))
    for path in (ASYNCAPI_PATH, other):
        out = subprocess.run([node, str(script), str(path)], capture_output=True, text=True,
                             timeout=120, cwd=PARSER.parents[2], check=False,
                             env={"NODE_PATH": str(PARSER.parents[1]), "PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, f"{path}: {out.stdout[-4000:]}{out.stderr[-2000:]}"
