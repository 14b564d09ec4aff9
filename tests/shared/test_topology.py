"""The declarations of shared/topology.py are what runs and what is documented: the
README's topic table is rendered from them, every declared read and write has its ACL
and no ACL grants a topic or group nothing declares, and the services build their
stages, loops and producers from them."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from services.acls import READINESS_PROBE, Acl, acl_table
from services.cli import app
from services.enrich.catalog import Catalog
from services.enrich.documents import DocumentStage
from services.enrich.pipeline import stage_of
from services.enrich.settings import EnrichSettings
from services.ingest.main import make_document_publisher, make_publisher
from services.ingest.settings import IngestSettings
from services.insights.route import Route
from services.insights.settings import InsightsSettings
from services.notify.main import consumer_groups
from services.notify.settings import NotifySettings
from shared import topology
from shared.topics import DEAD_LETTERS, INPUT_TOPICS_BY_TYPE

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_shows_the_declared_topic_table() -> None:
    table = topology.markdown_table()
    assert table in README.read_text(), "README's topic table differs: paste `anting topics flows`"
    out = CliRunner().invoke(app, ["topics", "flows"])
    assert out.exit_code == 0, out.output
    assert out.output == table


def _grants(rows: list[Acl], principal: str, resource: str, name: str, operation: str) -> bool:
    """Whether ``rows`` let ``principal`` do ``operation`` on ``name`` (a literal row, or a
    prefixed one the name starts with)."""
    return any(a.principal == principal and a.resource == resource and a.operation == operation
               and (a.name == name if a.pattern == "LITERAL" else name.startswith(a.name)) for a in rows)


def test_every_declared_read_and_write_has_its_acl() -> None:
    for prefix in ("", "t1."):
        rows = acl_table(prefix)
        for service, part in topology.parts():
            who = service.principal
            if who is None:  # a super user
                continue
            for use in part.reads:
                assert _grants(rows, who, "topic", use.topic.qualified(prefix), "READ"), (who, part.name, use)
            for use in part.writes:
                assert _grants(rows, who, "topic", use.topic.qualified(prefix), "WRITE"), (who, part.name, use)
            group = service.group(part, prefix)
            if group is not None:
                assert _grants(rows, who, "group", group, "READ"), (who, part.name, group)
            if part.transactional:
                assert _grants(rows, who, "transactional_id", f"{group}-instance", "WRITE")


def test_no_acl_grants_what_nothing_declares() -> None:
    """A topic, group or transactional id granted is declared: read or written by a part,
    a group a part reads in (or the prefix of a service's groups), a faust app's own
    topics, or what start-up checks; nothing else."""
    for prefix in ("", "t1."):
        rows = acl_table(prefix)
        by_principal = {s.principal: s for s in topology.SERVICES if s.principal is not None}
        for a in rows:
            service = by_principal[a.principal]
            base = (prefix if service.groups_prefixed else "") + (service.group_prefix or "")
            if a.resource == "topic" and a.pattern == "PREFIXED":
                assert service.own_topics and a.name == f"{base}-", a
            elif a.resource == "topic" and a.operation in ("READ", "WRITE"):
                uses = [u for p in service.parts for u in (p.reads if a.operation == "READ" else p.writes)]
                assert a.name in {u.topic.qualified(prefix) for u in uses}, a
            elif a.resource == "topic":
                assert a.operation in ("DESCRIBE", "DESCRIBE_CONFIGS")
                assert a.name in {t.qualified(prefix) for t in service.checks}, a
            elif a.name == READINESS_PROBE:
                assert service.checks and a.operation == "DESCRIBE", a
            elif a.resource == "group":
                groups = {service.group(p, prefix) for p in service.parts}
                assert a.name in groups or (a.pattern == "PREFIXED" and a.name == base), a
            else:
                assert a.resource == "transactional_id", a
                assert a.name in {f"{service.group(p, prefix)}-" for p in service.parts if p.transactional}, a


def test_the_services_run_the_declarations() -> None:
    """enrich's stages, insights' route, notify's loops and ingest's producers read and
    write the declared topics, in the declared groups (the settings' defaults)."""
    enrich = EnrichSettings(topic_prefix="p.")
    stage = stage_of(enrich)
    assert (stage.inputs, stage.outputs, stage.group) == (
        topology.ENRICH_EVENTS.inputs("p."), topology.ENRICH_EVENTS.outputs("p."), topology.ENRICH_EVENTS.group)
    assert stage.dead_letters == DEAD_LETTERS.qualified("p.")
    documents = DocumentStage(enrich, Catalog(enrich)).stage
    assert (documents.inputs, documents.outputs, documents.group) == (
        topology.ENRICH_DOCUMENTS.inputs("p."), topology.ENRICH_DOCUMENTS.outputs("p."),
        topology.ENRICH_DOCUMENTS.group)
    # the documents stage and ingest write each event to its type's topic: every one declared
    by_type = {t.name for t in INPUT_TOPICS_BY_TYPE.values()}
    assert by_type <= {t.name for t in topology.ENRICH_DOCUMENTS.output_topics}
    assert by_type <= {t.name for t in topology.INGEST_EVENTS.output_topics}

    route = Route(InsightsSettings(topic_prefix="p.")).stage
    assert (route.inputs, route.outputs, route.group) == (
        topology.INSIGHTS_ROUTE.inputs("p."), topology.INSIGHTS_ROUTE.outputs("p."),
        topology.INSIGHTS.group(topology.INSIGHTS_ROUTE, "p."))

    notify = NotifySettings(topic_prefix="p.")
    assert consumer_groups(notify) == {
        str(topology.NOTIFY_EVENTS.group): list(topology.NOTIFY_EVENTS.inputs("p.")),
        str(topology.NOTIFY_RETRY_SCHEDULE.group): list(topology.NOTIFY_RETRY_SCHEDULE.inputs("p."))}
    moved = NotifySettings(group="elsewhere")
    assert set(consumer_groups(moved)) == {"elsewhere", "elsewhere-retries"}

    ingest = IngestSettings(topic_prefix="p.")
    assert tuple(make_publisher(ingest).topics) == topology.INGEST_EVENTS.outputs("p.")
    assert tuple(make_document_publisher(ingest).topics) == topology.INGEST_DOCUMENTS.outputs("p.")
