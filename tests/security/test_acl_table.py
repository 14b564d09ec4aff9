"""The ACL table itself (no broker): who may do what, under a topic prefix, and the
README's copy equal to what the code prints."""

from __future__ import annotations

from pathlib import Path

from services.acls import ADMIN, PUBLISHER, READER, SERVICE_PRINCIPALS, acl_table, markdown_table
from services.enrich.settings import EnrichSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_shows_the_table_the_code_applies() -> None:
    assert markdown_table() in README.read_text(), "README's 'Kafka ACLs' table differs: paste `anting acls print`"


def test_the_example_users_stay_on_their_side() -> None:
    rows = acl_table()
    assert {(a.resource, a.name, a.operation) for a in rows if a.principal == PUBLISHER} == {
        ("topic", "announcements", "WRITE"), ("topic", "agreements", "WRITE"),
        ("topic", "documents", "WRITE")}
    assert {(a.resource, a.name, a.pattern, a.operation) for a in rows if a.principal == READER} == {
        ("topic", "enriched-events", "LITERAL", "READ"), ("group", "reader-", "PREFIXED", "READ")}


def test_no_one_but_the_admin_creates_contract_topics_or_touches_the_cluster() -> None:
    rows = acl_table()
    assert not [a for a in rows if a.principal == ADMIN], "the admin is a super user: no rows"
    assert not [a for a in rows if a.resource == "cluster"]
    creates = [a for a in rows if a.operation == "CREATE"]
    assert {(a.principal, a.name, a.pattern) for a in creates} == {("anting-insights", "anting-insights-", "PREFIXED")}


def test_every_service_has_rows_and_writes_only_what_it_produces() -> None:
    rows = acl_table()
    writes = {p: {a.name for a in rows if a.principal == p and a.operation == "WRITE" and a.resource == "topic"}
              for p in SERVICE_PRINCIPALS}
    assert writes["anting-ingest"] == {"announcements", "agreements", "documents", "dead-letters"}
    # enrich's documents stage writes the events documents report into the input topics
    assert writes["anting-enrich"] == {"enriched-events", "dead-letters", "announcements", "agreements"}
    assert writes["anting-notify"] == {"subscriptions", "notifications", "notify-retries", "notify-digests", "dead-letters"}
    assert writes["anting-insights"] == {"insights-facts", "dead-letters", "anting-insights-"}
    enrich_txn = [a for a in rows if a.resource == "transactional_id" and a.operation == "WRITE"]
    assert [(a.principal, a.name, a.pattern) for a in enrich_txn] == [
        ("anting-enrich", f"{EnrichSettings.model_fields['group'].default}-", "PREFIXED")]


def test_a_topic_prefix_moves_topics_and_insights_groups() -> None:
    rows = acl_table("t1.")
    topics = {a.name for a in rows if a.resource == "topic"}
    assert all(name.startswith("t1.") for name in topics), sorted(topics)
    groups = {(a.principal, a.name) for a in rows if a.resource == "group" and a.operation == "READ"}
    assert ("anting-insights", "t1.anting-insights") in groups
    assert ("anting-enrich", "anting-enrich") in groups  # enrich's group is not under the prefix
