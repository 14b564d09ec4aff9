"""Pure pieces of notify: matching with provenance, idempotency keys, signing with
rotated secrets, email headers, Retry-After parsing, the log channel's lines."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notify import rendering
from services.notify.channels import Result
from services.notify.channels.log import json_line
from services.notify.channels.smtp import build_message, header_value, message_id
from services.notify.channels.webhook import retry_after_seconds, sign
from services.notify.delivery import notification_record
from services.notify.matching import InvalidEvent, decode, match, norm
from services.notify.notification import SOURCE, Delivery, digest_key, idempotency_key
from services.notify.rendering import one_line, with_attributes
from services.notify.slots import FairSlots
from services.notify.store import new_secret, signing_secrets
from shared.events import dump_event, parse_enriched
from shared.subscriptions import (
    DeliveryOutcome,
    DeliveryRecord,
    EmailChannel,
    Filter,
    Subscription,
    WebhookChannel,
)

from .helpers import ACME, ALLIANCE, ANTING_TOWN, agreement, announcement


def flt(**kw: object) -> Filter:
    return Filter.model_validate_json(orjson.dumps(kw))


def as_json(event: Any) -> dict[str, Any]:
    """The event as notify matches it: the JSON object enrich wrote, decoded."""
    return decode(dump_event(event))


@pytest.mark.parametrize("name", ["anting-town-government", "Anting Town Government", "安亭镇人民政府",
                                  "anting town", "ＡＮＴＩＮＧ　ＴＯＷＮ", "  anting   TOWN government "])
def test_organization_matches_by_id_name_alias_normalised(name: str) -> None:
    """An organization filter matches the resolved record by id, any name or alias, ignoring case/width/space."""
    reasons = match(as_json(agreement([ACME, ANTING_TOWN])), flt(organizations=[name]))
    assert reasons is not None
    assert reasons[0]["organization"] == "anting-town-government"
    assert reasons[0]["field"] == "data.organizations[1]"


def test_every_given_field_must_match() -> None:
    """types, kinds, organizations, sectors and cities are ANDed; an empty filter matches everything."""
    ev = as_json(announcement([ALLIANCE], kind="alliance_established", city="Shanghai"))
    assert match(ev, Filter()) is not None
    assert match(ev, flt(types=["conference.announcement"], kinds=["alliance_established"],
                         organizations=["SMIIA"], sectors=["Metaverse"], cities=["shanghai"])) is not None
    assert match(ev, flt(kinds=["forum"])) is None
    assert match(ev, flt(organizations=["SMIIA"], cities=["Hangzhou"])) is None
    assert match(as_json(agreement([ACME], sectors=["EV"])), flt(kinds=["forum"])) is None  # agreements have no kind
    assert match(as_json(agreement([ACME], sectors=["EV"])), flt(sectors=["ev"])) is not None


def test_announcement_without_kind_is_other() -> None:
    """An announcement that gives no kind matches the kind "other", as the model's default says."""
    ev = as_json(announcement([ALLIANCE]))
    del ev["data"]["kind"]
    assert match(ev, flt(kinds=["other"])) is not None
    assert match(ev, flt(kinds=["forum"])) is None


def test_decode_accepts_model_output_and_refuses_bad_shapes() -> None:
    """decode takes what the enriched models write and refuses what matching could not read."""
    good = agreement([ACME, None, ANTING_TOWN], names=["ACME VR Ltd", "Some Co", "Anting Town"], sectors=["EV"])
    raw = dump_event(good)
    doc, sent = decode(raw), orjson.loads(raw)
    # the object as sent, nothing added; times read as datetimes (notify forwards the bytes)
    assert set(doc) == set(sent) and doc["data"]["organizations"] == sent["data"]["organizations"]
    assert doc["time"] == parse_enriched(raw).time
    assert parse_enriched(raw).id == decode(raw)["id"]
    base = orjson.loads(raw)
    bad: list[Any] = [b"{not json", b"[]", {**base, "specversion": "0.3"}, {**base, "id": ""},
                      {**base, "type": "other.type"}, {**base, "data": "x"}]
    data = base["data"]
    bad += [
        {**base, "data": {k: v for k, v in data.items() if k != "enrichment"}},
        {**base, "data": {**data, "sectors": "EV"}},
        {**base, "data": {**data, "organizations": [{"name": ""}]}},
        {**base, "data": {**data, "organizations": [{"name": "x", "resolved": {"id": "a", "name": "A",
                                                                                 "aliases": [1]}}]}},
        {**base, "data": {**data, "location": {"city": 5}}},
        {**as_json(announcement([ALLIANCE])), "data": {**as_json(announcement([ALLIANCE]))["data"],
                                                       "kind": "party"}},
    ]
    for value in bad:
        with pytest.raises(InvalidEvent):
            decode(value if isinstance(value, bytes) else orjson.dumps(value))
    # the error names the field's path
    orgs = [data["organizations"][0], {"name": "x", "resolved": {"id": "a", "name": "A", "aliases": [1]}}]
    with pytest.raises(InvalidEvent, match=r"^data\.organizations\.1\.resolved\."):
        decode(orjson.dumps({**base, "data": {**data, "organizations": orgs}}))
    with pytest.raises(InvalidEvent, match=r"^data\.location\.city: "):
        decode(orjson.dumps({**base, "data": {**data, "location": {"city": 5}}}))


def test_webhook_body_spliced_from_the_record_is_the_cloudevent() -> None:
    """A one-event delivery's body is the record's bytes with ``subscription`` and ``reason``
    added: the same JSON as encoding the decoded event with them, whatever spacing the
    record had; objects it cannot splice into fall back to encoding."""
    raw = dump_event(agreement([ACME, ANTING_TOWN], names=["ACME VR Ltd", "Anting Town"]))
    for source in (raw, raw + b" \n", orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2)):
        event = orjson.loads(source)  # a delivery holds the event as sent (decode is for matching)
        reasons = match(decode(source), flt(organizations=["Anting Town"]))
        assert reasons is not None
        plain = Delivery("msg_1", "sub_1", [event], [reasons])
        spliced = Delivery("msg_1", "sub_1", [event], [reasons], source=source)
        spliced_body = rendering.body(spliced)
        assert spliced_body.startswith(source.rstrip()[:-1])  # spliced, not encoded again
        assert orjson.loads(spliced_body) == orjson.loads(rendering.body(plain)) == rendering.cloudevent(plain)
        assert list(orjson.loads(spliced_body))[-2:] == ["subscription", "reason"]
        assert Delivery.from_json(spliced.to_json()) == plain  # the retry record has no bytes
        # made from the record: no decoded event is kept, and a webhook never decodes one
        lean = Delivery.of_record("msg_1", "sub_1", source, event["source"], event["id"], reasons, None)
        assert rendering.body(lean) == spliced_body and lean.event_ids == [event["id"]] and lean.events == []
        assert lean.event_sources == plain.event_sources == [event["source"]]
        assert rendering.text(lean) == rendering.text(plain) and lean.decoded() == [event]  # email, log: decoded then
        assert Delivery.from_json(lean.to_json()) == plain
    assert with_attributes(b"{}", {"a": 1}) is None
    assert with_attributes(b"{ } ", {"a": 1}) is None
    assert with_attributes(b"[1]", {"a": 1}) is None
    assert with_attributes(b'{"x": [1]}\n', {"a": 1, "b": "c"}) == b'{"x": [1],"a":1,"b":"c"}'


def test_idempotency_key_stable_and_distinct() -> None:
    """The key is msg_ + 32 hex digits of (source, id, subscription id), and no two triples share one."""
    key = idempotency_key("/press/a", "same-1", "s1")
    assert key == idempotency_key("/press/a", "same-1", "s1")
    assert key.startswith("msg_") and len(key) == 36 and int(key[4:], 16) >= 0
    triples = [
        ("/press/a", "same-1", "s1"), ("/district/b", "same-1", "s1"),  # one id, two publishers
        ("/press/a", "same-1", "s2"), ("/press/a", "same-2", "s1"),
        # values that a plain separator would run together
        ("a\0b", "c", "s1"), ("a", "b\0c", "s1"), ("a", "b", "c\0s1"), ("a b", "c", "s1"), ("a", "b c", "s1"),
        ('a","b', "c", "s1"), ("a", '","b', "c"),
    ]
    assert len({idempotency_key(*t) for t in triples}) == len(triples)


def test_digest_key_is_of_its_events_sources_and_ids() -> None:
    """A digest's key is the same for its events in any order, and differs when an event has another source."""
    a, b = ("/press/a", "same-1"), ("/district/b", "same-1")
    assert digest_key("s1", [a, b]) == digest_key("s1", [b, a])
    assert digest_key("s1", [a, b]) != digest_key("s1", [a, ("/press/c", "same-1")])
    assert digest_key("s1", [a, b]) != digest_key("s2", [a, b])
    assert digest_key("s1", [a]) != digest_key("s1", [b]) and digest_key("s1", [a]).startswith("msg_")
    digest = Delivery(digest_key("s1", [a, b]), "s1", [{"id": i, "source": s} for s, i in (a, b)], [[], []],
                      digest=True)
    assert digest.event_sources == ["/press/a", "/district/b"] and digest.event_ids == ["same-1", "same-1"]
    assert digest.event_source == SOURCE and digest.event_id == digest.key


def test_rotation_signs_with_both_secrets_during_grace() -> None:
    """After a rotation receivers holding either secret verify; after the grace only the new one signs."""
    old, new = new_secret(), new_secret()
    now = datetime.now(UTC)
    sub = Subscription(name="r", channel=WebhookChannel(type="webhook", url="https://x.example/"), id="s",
                       created_at=now, secrets=[new, old], previous_secrets_expire_at=now + timedelta(hours=1))
    body = b'{"id":"e1"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": sign(signing_secrets(sub, now), "msg_1", now, body)}
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    later = now + timedelta(hours=2)
    assert signing_secrets(sub, later) == [new]
    headers["webhook-signature"] = sign(signing_secrets(sub, later), "msg_1", now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


@pytest.mark.parametrize("brk", ["\r\n", "\n", "\r", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_email_message_id_parts_and_no_header_injection(brk: str) -> None:
    """Message-ID is <key@anting>; text and HTML parts; a line break of any kind in data never reaches a header."""
    sub = Subscription(name="m", channel=EmailChannel(type="email", to=["a@example.com"]), id="s",
                       created_at=datetime.now(UTC))
    # straight from a record (as kcat may write one): the event models would refuse these
    raw = as_json(agreement([ANTING_TOWN]))
    raw["data"]["title"] = f"Deal{brk}Bcc: victim@example.com"
    raw["id"], raw["source"] = f"e1{brk}X-Forged: 1", f"/press/a{brk}X-Forged: 2"
    d = Delivery(idempotency_key(raw["source"], raw["id"], "s"), "s", [raw], [[]])
    msg = build_message("anting@example.com", sub, d)  # built, not refused: the mail goes out
    assert msg["Message-ID"] == message_id(d.key) == f"<{d.key}@anting>"
    assert msg["Bcc"] is None and msg["X-Forged"] is None
    assert msg["Subject"] == "Deal Bcc: victim@example.com"
    assert msg["X-Anting-Event-Id"] == "e1 X-Forged: 1" and msg["X-Anting-Event-Source"] == "/press/a X-Forged: 2"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    # the text part: every value from the event on a line of its own making
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert not any(line.startswith(("Bcc", "X-Forged")) for line in text.splitlines())
    assert header_value(f"a{brk}b") == "a b" and one_line(f"a{brk}b") == "a b"


def test_retry_after_forms() -> None:
    """Retry-After as delta-seconds or HTTP date; garbage is ignored."""
    assert retry_after_seconds("7") == 7.0
    soon = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 <= (retry_after_seconds(soon) or 0) <= 31
    assert retry_after_seconds("soon") is None
    assert norm(" Ａ  b ") == "a b"


def test_notification_record_is_the_models_json() -> None:
    """The notifications line built without the model has the very bytes DeliveryRecord would dump."""
    at = datetime(2026, 5, 1, 8, 30, 15, 123456, tzinfo=UTC)
    ev = as_json(agreement([ACME]))
    d = Delivery(idempotency_key(ev["source"], ev["id"], "s"), "s", [ev],
                 [[{"filter": "all", "value": None, "field": None}]])
    for outcome, result, next_at in [
        (DeliveryOutcome.delivered, Result("ok", 200), None),
        (DeliveryOutcome.retried, Result("retry", 503, "HTTP 503"), at.replace(microsecond=0)),
    ]:
        model = DeliveryRecord(
            subscription_id="s", event_id=d.event_id, event_source=ev["source"], idempotency_key=d.key,
            channel="webhook", outcome=outcome, attempt=1, at=at, status_code=result.status_code,
            error=result.error, next_attempt_at=next_at, reason=d.all_reasons(), event_ids=d.event_ids,
            event_sources=[ev["source"]], digest=False,
        )
        built = notification_record(d, "webhook", outcome, result, next_at, at=at)
        assert built == orjson.dumps(model.model_dump(mode="json", exclude_unset=True))
        # the line of the attempt that disabled the subscription says why, at its end
        why = "no delivery succeeded for 5 days"
        disabled = model.model_copy(update={"subscription_disabled": why})
        assert notification_record(d, "webhook", outcome, result, next_at, at=at, disabled=why) == \
            orjson.dumps(disabled.model_dump(mode="json", exclude_unset=True))


def test_signature_is_the_standard_webhooks_one() -> None:
    """sign() gives the very header the standardwebhooks library computes, for a non-ASCII body too."""
    secret, now = new_secret(), datetime.now(UTC)
    body = orjson.dumps({"id": "e1", "data": {"title": "安亭镇 signs with ＡＣＭＥ"}})
    assert sign([secret], "msg_1", now, body) == Webhook(secret).sign("msg_1", now, body.decode())




async def test_slots_bound_order_and_cancellation() -> None:
    """Delivery slots: never more than n holders, one subscription's deliveries in the order
    they came, and a waiter cancelled before or just after being handed a slot loses no slot."""
    slots = FairSlots(2, max_per_subscription=10, max_per_tenant=10)
    holding = 0
    most = 0
    order: list[int] = []
    gate = asyncio.Event()

    async def use(i: int) -> None:
        nonlocal holding, most
        await slots.acquire("t", "s")
        try:
            order.append(i)
            holding += 1
            most = max(most, holding)
            await gate.wait()
            holding -= 1
        finally:
            slots.release("t", "s")

    tasks = [asyncio.create_task(use(i)) for i in range(6)]
    await asyncio.sleep(0.01)
    assert order == [0, 1] and len(slots.waiters["s"]) == 4
    tasks[2].cancel()  # waiting: cancelled in the queue
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert most == 2 and order == [0, 1, 3, 4, 5]
    assert slots.free == 2 and not slots.held and not slots.waiters and not slots.tenants

    # handed a slot, then cancelled before it ran: the slot passes on
    gate.clear()
    first = asyncio.create_task(use(10))
    second = asyncio.create_task(use(11))
    third = asyncio.create_task(use(12))
    await asyncio.sleep(0.01)  # 10 and 11 hold, 12 waits
    slots.release("t", "s")  # as if 10 finished: 12 is handed the slot ...
    third.cancel()  # ... and cancelled before it resumes
    await asyncio.gather(third, return_exceptions=True)
    assert slots.free == 1  # the slot came back
    slots.free -= 1  # undo the pretend release
    slots.held["s"] = slots.held.get("s", 0) + 1
    slots.tenants["t"].held += 1
    gate.set()
    await asyncio.gather(first, second)
    assert slots.free == 2 and not slots.held


async def test_slots_are_shared_in_turn_across_tenants_and_subscriptions() -> None:
    """A subscription holds at most its cap, a tenant at most its own, and freed slots go to
    the waiting tenants in turn, then to their subscriptions in turn: a tenant with a deep
    backlog on many subscriptions does not keep another tenant's one delivery waiting."""
    slots = FairSlots(4, max_per_subscription=2, max_per_tenant=3)
    order: list[str] = []
    gates: dict[str, asyncio.Event] = {}

    async def use(tenant: str, sub: str, i: int) -> None:
        await slots.acquire(tenant, sub)
        try:
            name = f"{sub}.{i}"
            order.append(name)
            gate = gates[name] = asyncio.Event()
            await gate.wait()
        finally:
            slots.release(tenant, sub)

    tasks = [asyncio.create_task(use("a", s, i)) for i in range(3) for s in ("a1", "a2", "a3")]
    await asyncio.sleep(0.01)
    assert order == ["a1.0", "a2.0", "a3.0"]  # tenant a's cap (3) leaves one slot for others
    tasks.append(asyncio.create_task(use("b", "b1", 0)))
    await asyncio.sleep(0.01)
    assert order[-1] == "b1.0"  # at once, on the slot tenant a could not take
    tasks += [asyncio.create_task(use("b", "b1", i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert len(order) == 4
    gates["a1.0"].set()  # a slot frees: the tenants take turns, b's first ...
    await asyncio.sleep(0.01)
    assert order[4] == "b1.1"
    gates["b1.0"].set()  # ... then a's, its first subscription
    await asyncio.sleep(0.01)
    assert order[5] == "a1.1"
    gates["a2.0"].set()
    await asyncio.sleep(0.01)
    assert order[6] == "b1.2"
    gates["a3.0"].set()  # b has nothing waiting: a's next subscription in turn
    await asyncio.sleep(0.01)
    assert order[7] == "a2.1"
    assert slots.held == {"a1": 1, "a2": 1, "b1": 2} and slots.free == 0
    for _ in range(20):
        for gate in list(gates.values()):
            gate.set()
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    assert len(order) == 12 and slots.free == 4 and not slots.tenants and not slots.waiters


def test_delivery_record_written_before_sources_is_still_read() -> None:
    """A notifications line without event_source, event_sources (or event_ids) still validates."""
    old = {"subscription_id": "s", "event_id": "e1", "idempotency_key": "msg_" + "0" * 32, "channel": "webhook",
           "outcome": "delivered", "attempt": 1, "at": "2026-05-01T08:30:15Z", "status_code": 200,
           "error": None, "next_attempt_at": None, "reason": []}
    record = DeliveryRecord.model_validate_json(orjson.dumps(old))
    assert record.event_source is None and record.event_sources is None and record.event_ids == []
    digest = DeliveryRecord.model_validate_json(orjson.dumps({**old, "event_ids": ["e1", "e2"], "digest": True}))
    assert digest.digest and digest.event_ids == ["e1", "e2"] and digest.event_sources is None


def test_log_line_is_one_line_for_every_line_reader() -> None:
    """A log channel line holds no CR, LF, NEL, U+2028 or U+2029 before its end, and reads back the same."""
    doc = {"title": "a\rb\nc\r\nd\x85e\u2028f\u2029g\x0bh\x1ci\x00j", "plain": "安亭 \u00e9"}
    line = json_line(doc)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    assert len(line.decode().splitlines()) == 1  # str.splitlines breaks at all of them
    assert orjson.loads(line) == doc
    assert json_line({"x": "plain"}) == b'{"x":"plain"}\n'
