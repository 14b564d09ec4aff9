"""A write the broker refuses for the record itself (the topic's max.message.bytes lowered
while ingest runs): 413 saying so, not a 503 to retry for ever; the next request on the
same partition is published (the producer whose sequence numbers the refusal spent is
replaced)."""

from __future__ import annotations

from devtools.testing import read_topic, set_topic_config
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS
from tests.ingest.conftest import announcement, ingest_settings, make_client


async def test_a_record_the_topic_no_longer_takes_is_413_and_the_next_goes_through(
    topics: AntingSettings, publisher: object
) -> None:
    """announcements lowered to 800 bytes: a 1.3 KB event → 413 naming the refusal; a small event
    with the same key right after → 202, and it is on the topic."""
    await set_topic_config(topics, topics.topic(ANNOUNCEMENTS), {"max.message.bytes": "800"})
    settings = ingest_settings(topics)
    big = {**announcement("big", headline="x" * 900), "subject": "same"}
    small = {**announcement("small"), "subject": "same"}
    async with await make_client(settings, publisher) as client:  # type: ignore[arg-type]
        resp = await client.post("/v1/events", json=big)
        assert resp.status_code == 413, resp.text
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert "MessageSizeTooLargeError" in resp.json()["detail"]
        resp = await client.post("/v1/events", json=small)
        assert resp.status_code == 202, resp.text
    records = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert [r.value for r in records if b'"ann-small"' in (r.value or b"")]
    assert not [r for r in records if b'"ann-big"' in (r.value or b"")]
