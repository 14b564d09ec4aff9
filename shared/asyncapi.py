"""The AsyncAPI 3.0 document of Anting's Kafka side, generated from the contract: every
topic of :mod:`shared.topics` as a channel (its address under ``ANTING_TOPIC_PREFIX``,
partitions, cleanup policy and key), its messages with the JSON Schemas of
:mod:`shared.schemas` (the same as ``docs/schemas/``) and the CloudEvents Kafka
binding's headers (``content-type`` in structured mode, ``ce_*`` in binary mode), which
service sends and receives it in which consumer group (:data:`FLOWS`, derived from the
declarations of :mod:`shared.topology`), and the SASL
security scheme when the broker is configured with one (:class:`KafkaSettings`).

``anting asyncapi`` writes :data:`ASYNCAPI_PATH` (``docs/asyncapi.yaml``); ingest and
notify serve the document of their own settings at ``/asyncapi.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import TypeAdapter

from shared.events import LIMITS
from shared.schemas import MODELS
from shared.settings import KafkaSettings
from shared.topics import (
    AGREEMENTS,
    ALL_TOPICS,
    ANNOUNCEMENTS,
    DOCUMENTS,
    ENRICHED_EVENTS,
    NOTIFICATIONS,
    ORGANIZATIONS,
    SUBSCRIPTIONS,
    Topic,
)
from shared.topology import ANTING, ENRICH_DOCUMENTS, Service, Use, parts

__all__ = [
    "ASYNCAPI_PATH",
    "DOCUMENTS_GROUP",
    "FLOWS",
    "GROUPS",
    "Flow",
    "build",
    "default_document",
    "flows",
    "render_yaml",
    "write",
]

ASYNCAPI_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
JsonObject = dict[str, Any]

REF = "#/components/schemas/{model}"
KAFKA_BINDING = "0.5.0"

#: The consumer groups' default names (``ANTING_<SERVICE>_GROUP``: the prefix of all its
#: groups, else its first part's), from the declarations the services' settings take them from
GROUPS = {s.name: str(s.group_prefix or s.group(s.parts[0])) for s in ANTING
          if any(p.group for p in s.parts)}
#: enrich's documents stage reads in a group of its own (``ANTING_ENRICH_DOCUMENTS_GROUP``)
DOCUMENTS_GROUP = str(ENRICH_DOCUMENTS.group)


@dataclass(frozen=True, slots=True)
class Flow:
    """One service's use of one topic: ``action`` (``send`` or ``receive``), in consumer
    ``group`` (None: it reads with no group, from the start: a compacted view or a
    ledger), with ``summary`` for people; ``part`` names which of the service's parts
    when more than one of them uses the topic differently."""

    service: str
    action: Literal["send", "receive"]
    topic: Topic
    summary: str
    group: str | None = None
    part: str | None = None


def flows(services: tuple[Service, ...] = ANTING) -> tuple[Flow, ...]:
    """Who sends and who receives each topic, from the declarations
    (:mod:`shared.topology`): one flow per service, action and topic, and one more for
    each further part of the service that uses the topic in another group or for
    another purpose (a write several parts share is one flow)."""
    out: dict[tuple[str, str, str, str | None, str], Flow] = {}
    taken: set[tuple[str, str, str]] = set()
    for service, part in parts(services):
        group_of = service.group(part)
        uses: list[tuple[Literal["send", "receive"], Use, str | None]] = [
            *(("receive", u, group_of) for u in part.reads), *(("send", u, None) for u in part.writes)]
        for action, use, group in uses:
            key = (service.name, action, use.topic.name, group, use.summary)
            if key in out:
                continue
            first = (service.name, action, use.topic.name) not in taken
            taken.add((service.name, action, use.topic.name))
            out[key] = Flow(service.name, action, use.topic, use.summary, group,
                            None if first else part.name)
    return tuple(out.values())


#: Who sends and who receives each topic.
FLOWS: tuple[Flow, ...] = flows()

# the CloudEvents Kafka binding: structured mode is the whole event in the value
STRUCTURED = "application/cloudevents+json"
_LINE = {"type": "string", "maxLength": LIMITS["name"], "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}
_BINARY_HEADERS: JsonObject = {
    "type": "object",
    "description": "CloudEvents Kafka binding, binary content mode: each attribute a ce_<name> "
    "header (UTF-8), datacontenttype the content-type header; traceparent when traced",
    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type"],
    "properties": {
        "content-type": {"type": "string", "const": "application/json"},
        "ce_specversion": {"type": "string", "const": "1.0"},
        "ce_id": _LINE, "ce_source": _LINE, "ce_type": _LINE, "ce_subject": _LINE,
        "ce_time": {"type": "string", "format": "date-time"},
        "ce_dataschema": {"type": "string", "maxLength": LIMITS["uri"]},
        "traceparent": {"type": "string"},
    },
    "patternProperties": {"^ce_[a-z0-9]{1,64}$": _LINE},
}
_STRUCTURED_HEADERS: JsonObject = {
    "type": "object",
    "description": "CloudEvents Kafka binding, structured content mode; traceparent when traced. "
    "A record without headers (kcat's) is read as structured too",
    "properties": {
        "content-type": {"type": "string", "const": STRUCTURED},
        "traceparent": {"type": "string"},
    },
}

# the value model of each topic with one: its schema's component name
_PAYLOADS: dict[str, str] = {
    ANNOUNCEMENTS.name: "AnnouncementEvent",
    AGREEMENTS.name: "AgreementEvent",
    ENRICHED_EVENTS.name: "enriched-event",
    ORGANIZATIONS.name: "organization",
    SUBSCRIPTIONS.name: "subscription",
    NOTIFICATIONS.name: "delivery-record",
    DOCUMENTS.name: "document",
}
_BINARY_DATA = {ANNOUNCEMENTS.name: "AnnouncementData", AGREEMENTS.name: "AgreementData"}


def _hoist(schema: JsonObject, schemas: JsonObject) -> JsonObject:
    """``schema`` without its ``$defs``, which go into ``schemas`` (one name, one schema:
    :class:`ValueError` when two models define a name differently)."""
    for name, sub in schema.pop("$defs", {}).items():
        if name in schemas and schemas[name] != sub:
            raise ValueError(f"two different JSON Schemas named {name!r}")
        schemas[name] = sub
    return schema


def _asyncapi_discriminators(node: object) -> None:
    """OpenAPI-style ``discriminator`` objects (pydantic's) made AsyncAPI's: the property's
    name alone (the ``oneOf`` still names every variant), in place."""
    if isinstance(node, list):
        for item in node:
            _asyncapi_discriminators(item)
    elif isinstance(node, dict):
        found = node.get("discriminator")
        if isinstance(found, dict):
            node["discriminator"] = found["propertyName"]
        for value in node.values():
            _asyncapi_discriminators(value)


def _component_schemas() -> JsonObject:
    """Every model of :data:`shared.schemas.MODELS` under its file name, and their
    definitions under theirs, with refs into ``components/schemas``."""
    schemas: JsonObject = {}
    adapter: TypeAdapter[Any]
    for name, adapter in MODELS.items():
        schemas[name] = _hoist(adapter.json_schema(ref_template=REF), schemas)
    _asyncapi_discriminators(schemas)
    return dict(sorted(schemas.items()))


def _key(topic: Topic) -> JsonObject:
    return {"type": "string", "description": f"the record key: {topic.key}"}


def _messages(topic: Topic) -> dict[str, JsonObject]:
    """The messages a topic carries, by id."""
    payload_name = _PAYLOADS.get(topic.name)
    bindings = {"kafka": {"key": _key(topic), "bindingVersion": KAFKA_BINDING}}
    if payload_name is None:
        return {"record": {
            "name": topic.name, "contentType": "application/octet-stream",
            "summary": topic.doc, "payload": {"description": topic.doc},
            "bindings": bindings}}
    is_event = payload_name in ("AnnouncementEvent", "AgreementEvent", "enriched-event")
    messages: dict[str, JsonObject] = {}
    if is_event:
        messages["structured"] = {
            "name": f"{topic.name}-structured", "contentType": STRUCTURED,
            "summary": f"{topic.doc} (structured mode)", "headers": _STRUCTURED_HEADERS,
            "payload": {"$ref": REF.format(model=payload_name)}, "bindings": bindings}
        data = _BINARY_DATA.get(topic.name)
        if data is not None:
            messages["binary"] = {
                "name": f"{topic.name}-binary", "contentType": "application/json",
                "summary": f"{topic.doc} (binary mode: the value is the data)",
                "headers": _BINARY_HEADERS,
                "payload": {"$ref": REF.format(model=data)}, "bindings": bindings}
        return messages
    return {"record": {
        "name": topic.name, "contentType": "application/json", "summary": topic.doc,
        "payload": {"oneOf": [{"$ref": REF.format(model=payload_name)}, {"type": "null"}]}
        if "compact" in topic.cleanup else {"$ref": REF.format(model=payload_name)},
        "bindings": bindings}}


def _topic_configuration(topic: Topic) -> JsonObject:
    """The Kafka binding's ``topicConfiguration`` (the keys it defines)."""
    config: JsonObject = {"cleanup.policy": topic.cleanup.split(",")}
    if "retention.ms" in topic.config:
        config["retention.ms"] = int(topic.config["retention.ms"])
    return config


def _channel(topic: Topic, prefix: str) -> JsonObject:
    channel: JsonObject = {
        "address": topic.qualified(prefix),
        "title": topic.name,
        "description": topic.doc,
        "messages": _messages(topic),
        "bindings": {"kafka": {
            "topic": topic.qualified(prefix), "partitions": topic.partitions,
            "topicConfiguration": _topic_configuration(topic),
            "bindingVersion": KAFKA_BINDING}},
    }
    if topic.config:
        channel["x-topic-config"] = topic.topic_config()
    return channel


def _operation(flow: Flow) -> JsonObject:
    messages = _messages(flow.topic)
    op: JsonObject = {
        "action": flow.action,
        "channel": {"$ref": f"#/channels/{flow.topic.name}"},
        "summary": f"{flow.service} {flow.summary}",
        "tags": [{"name": flow.service}],
        "messages": [{"$ref": f"#/channels/{flow.topic.name}/messages/{m}"} for m in messages],
    }
    if flow.action == "receive":
        group: JsonObject = ({"type": "string", "enum": [flow.group],
                              "description": f"ANTING_{flow.service.upper()}_GROUP, by default"}
                             if flow.group else {"type": "null",
                                                 "description": "no consumer group: read whole"})
        op["bindings"] = {"kafka": {"groupId": group, "bindingVersion": KAFKA_BINDING}}
    return op


_SASL_TYPES = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


def build(prefix: str, kafka: KafkaSettings) -> JsonObject:
    """The AsyncAPI 3.0 document for topics under ``prefix`` on the broker of ``kafka``
    (its first bootstrap server; SASL declared as a security scheme when configured)."""
    secure = kafka.security_protocol in ("SSL", "SASL_SSL")
    server: JsonObject = {
        "host": kafka.bootstrap_servers.split(",")[0].strip(),
        "protocol": "kafka-secure" if secure else "kafka",
        "description": f"the broker (KAFKA_BOOTSTRAP_SERVERS; {kafka.security_protocol})",
    }
    components: JsonObject = {"schemas": _component_schemas()}
    if kafka.security_protocol.startswith("SASL"):
        mechanism = kafka.sasl_mechanism or "PLAIN"
        components["securitySchemes"] = {"sasl": {
            "type": _SASL_TYPES[mechanism],
            "description": f"SASL {mechanism} (KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD)"}}
        server["security"] = [{"$ref": "#/components/securitySchemes/sasl"}]
    operations: JsonObject = {}
    for flow in FLOWS:
        who = flow.service if flow.part is None else f"{flow.service}-{flow.part.replace(' ', '-')}"
        operations[f"{who}-{flow.action}s-{flow.topic.name}"] = _operation(flow)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Anting",
            "version": "1.0.0",
            "description": "Anting's Kafka topics: conference announcements and agreement "
            "signings as CloudEvents 1.0, enriched, matched against subscriptions and "
            "delivered. Generated from shared/topics.py and the contract's models "
            "(`anting asyncapi`).",
        },
        "defaultContentType": STRUCTURED,
        "servers": {"kafka": server},
        "channels": {t.name: _channel(t, prefix) for t in ALL_TOPICS},
        "operations": operations,
        "components": components,
    }


def default_document() -> JsonObject:
    """The document of the default settings (no topic prefix, a PLAINTEXT broker on
    localhost:9092): what ``docs/asyncapi.yaml`` holds."""
    return build("", KafkaSettings.model_construct())


def render_yaml(doc: JsonObject) -> str:
    """``doc`` as YAML, in the document's own order (no anchors: a copy shares nothing)."""
    text: str = yaml.safe_dump(orjson.loads(orjson.dumps(doc)), sort_keys=False,
                               allow_unicode=True, width=100)
    return text


def write(doc: JsonObject | None = None, path: Path = ASYNCAPI_PATH) -> Path:
    """Write ``doc`` (the default document when None) to ``path`` as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_yaml(doc if doc is not None else default_document()))
    return path
