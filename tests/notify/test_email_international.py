"""International email through a real SMTP relay (aiosmtpd): internationalised domains go
out as A-labels (IDNA 2008, UTS 46), in the envelope and in ``To``, and are stored so at
creation; a non-ASCII local part through a relay without SMTPUTF8 is a permanent failure
at once, saying why; and a long headline in any script comes back from the ``Subject``
exactly, spaces included."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default

import orjson
import pytest

from services.notify.channels.smtp import EmailSender, build_message, encoded_words
from services.notify.notification import Delivery, idempotency_key
from shared.settings import AntingSettings
from shared.subscriptions import EmailChannel, Subscription

from .helpers import ANTING_TOWN, agreement, smtp_server
from .test_api import KEY, api

# each lost a space (or more) in the stdlib's folding of the Subject, except Thai, whose
# words are not spaced: its subject must come back exactly all the same
HEADLINES = {
    "korean": "안정적인 협력 관계를 구축하기 위한 상하이 메타버스 산업 혁신 연합과 안팅 타운 정부의 전략적 협력 협정 체결",
    "greek": ("Η κυβέρνηση της πόλης Anting υπογράφει στρατηγική συμφωνία συνεργασίας με τη Συμμαχία Καινοτομίας "
              "του Μεταβερσύμπαντος της Σαγκάης για έξυπνα συνδεδεμένα οχήματα και την εικονική πραγματικότητα στην"),
    "thai": "รัฐบาลเมืองอันถิงลงนามข้อตกลงความร่วมมือเชิงยุทธศาสตร์ กับพันธมิตรนวัตกรรมอุตสาหกรรมเมตาเวิร์สเซี่ยงไฮ้ ในด้านยานยนต์อัจฉริยะ",
    "mixed": "Anting 安亭镇 signs with ＡＣＭＥ VR — 상하이 협정, συμφωνία, ข้อตกลง and 🚗 smart mobility pact 2026",
}


def _email(to: list[str], headline: str = "Cooperation agreement") -> tuple[Subscription, Delivery]:
    sub = Subscription(name="m", channel=EmailChannel(type="email", to=to), id="sub_mail",
                       created_at=datetime.now(UTC))
    event = orjson.loads(agreement([ANTING_TOWN], title=headline).model_dump_json())
    return sub, Delivery(idempotency_key(event["source"], event["id"], sub.id), sub.id, [event], [[]])


def _subject(raw: bytes) -> str:
    """The Subject as a reader decodes it (RFC 2047), from the message's bytes."""
    return str(make_header(decode_header(message_from_bytes(raw)["Subject"])))


async def test_idn_domain_is_sent_as_a_labels() -> None:
    """ops@bücher.example through a relay without SMTPUTF8 is sent to ops@xn--bcher-kva.example."""
    sub, delivery = _email(["ops@bücher.example", "Team@ＥＸＡＭＰＬＥ.org"])
    with smtp_server() as (port, mailbox):
        result = await EmailSender("127.0.0.1", port, "anting@example.com").send(sub, delivery)
    assert result.verdict == "ok", result.error
    assert mailbox.envelopes == [("anting@example.com", ["ops@xn--bcher-kva.example", "Team@example.org"])]
    assert mailbox.messages[0]["To"] == "ops@xn--bcher-kva.example, Team@example.org"


async def test_non_ascii_local_part_without_smtputf8_is_permanent_and_says_why() -> None:
    """josé@example.org through a relay without SMTPUTF8: permanent (dead at once, not retried),
    the reason naming the address and SMTPUTF8; a relay offering SMTPUTF8 gets it."""
    sub, delivery = _email(["josé@bücher.example"])
    with smtp_server() as (port, mailbox):
        refused = await EmailSender("127.0.0.1", port, "anting@example.com").send(sub, delivery)
    assert refused.verdict == "permanent" and not mailbox.messages
    assert refused.error is not None and "josé@xn--bcher-kva.example" in refused.error
    assert "SMTPUTF8" in refused.error
    with smtp_server(smtputf8=True) as (port, mailbox):
        sent = await EmailSender("127.0.0.1", port, "anting@example.com").send(sub, delivery)
    assert sent.verdict == "ok", sent.error
    assert mailbox.envelopes[0][1] == ["josé@xn--bcher-kva.example"]


@pytest.mark.parametrize("script", sorted(HEADLINES))
async def test_long_subject_in_any_script_decodes_back_exactly(script: str) -> None:
    """A long Korean, Greek, Thai or mixed-script headline: the Subject the relay got decodes
    back to the headline exactly (no space lost), in lines of at most 76 characters."""
    headline = HEADLINES[script]
    sub, delivery = _email(["ops@example.com"], headline)
    with smtp_server() as (port, mailbox):
        result = await EmailSender("127.0.0.1", port, "anting@example.com").send(sub, delivery)
    assert result.verdict == "ok", result.error
    raw = mailbox.raw[0]
    assert _subject(raw) == headline
    assert message_from_bytes(raw, policy=default)["Subject"] == headline  # the modern parser too
    lines = raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("Subject:"))
    folded = [lines[at], *itertools.takewhile(lambda line: line.startswith(" "), lines[at + 1:])]
    assert all(len(line) <= 76 for line in folded), folded


def test_encoded_words_keep_whole_characters() -> None:
    """Each encoded-word decodes on its own (no character cut between two words)."""
    for headline in HEADLINES.values():
        words = encoded_words(headline)
        parts = [str(make_header(decode_header(w))) for w in words]
        assert "".join(parts) == headline and len(words) > 1
    msg = build_message("anting@example.com", *_email(["ops@example.com"], HEADLINES["greek"]))
    assert msg["Subject"] == HEADLINES["greek"]


@pytest.mark.kafka
async def test_creation_stores_a_labels_and_refuses_what_idna_cannot_write(topics: AntingSettings) -> None:
    """POST with ops@bücher.example stores ops@xn--bcher-kva.example; a domain IDNA cannot
    write (an emoji) is a 422 naming the address."""
    async with api(topics) as (client, _store):
        r = await client.post("/v1/subscriptions", headers=KEY, json={
            "name": "idn", "channel": {"type": "email", "to": ["ops@bücher.example", "josé@example.org"]}})
        assert r.status_code == 201, r.text
        assert r.json()["channel"]["to"] == ["ops@xn--bcher-kva.example", "josé@example.org"]
        bad = await client.post("/v1/subscriptions", headers=KEY, json={
            "name": "emoji", "channel": {"type": "email", "to": ["ops@☃️.example"]}})
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert "ops@☃️.example" in bad.json()["errors"][0]["message"]
