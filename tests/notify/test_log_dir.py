"""Where a ``log`` subscription may write: a file name in notify's log directory, never
a path; a name that is a symlink out of the directory is refused when subscribing (422)
and again when writing (a symlink made after the subscription)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import ValidationError

from services.notify.api import create_app
from services.notify.channels.log import LogSender, log_file_refusal
from services.notify.notification import Delivery
from services.notify.store import SubscriptionStore, decode_subscription
from shared.kafka import make_producer
from shared.settings import AntingSettings
from shared.subscriptions import LogChannel, Subscription

from .helpers import ANTING_TOWN, agreement, encode, notify_settings

# each a kind: climbing out, absolute, a directory part, hidden or dot names, other
# separators, controls, and names that only look harmless once decoded by a shell
NOT_NAMES = [
    "../escape.jsonl", "..", ".", "../../etc/passwd", "/etc/passwd", "/tmp/x.jsonl", "a/b.jsonl",
    "logs/../../x", ".hidden", "..jsonl", "a\\b", "C:\\x", "x\x00y", "x\ny", "~/x", "$HOME", "",
    " x", "x y", "%2e%2e%2fx", "é.jsonl", "a" * 129,
]


@pytest.mark.parametrize("name", NOT_NAMES)
def test_a_log_channel_takes_file_names_only(name: str) -> None:
    """Traversal, absolute paths, directory parts, hidden files and odd characters are not names."""
    with pytest.raises(ValidationError):
        LogChannel.model_validate_json(orjson.dumps({"type": "log", "path": name}))


@pytest.mark.parametrize("name", ["deliveries.jsonl", "team_a-2026.log", "x", "a..b", "A" * 128])
def test_plain_names_are_taken(name: str) -> None:
    assert LogChannel.model_validate_json(orjson.dumps({"type": "log", "path": name})).path == name


def test_symlinks_out_of_the_directory_are_refused(tmp_path: Path) -> None:
    """A symlink in the directory pointing out is refused, one pointing in is not, a directory is not a file."""
    logs, outside = tmp_path / "logs", tmp_path / "outside"
    logs.mkdir()
    outside.mkdir()
    (logs / "out.jsonl").symlink_to(outside / "victim.jsonl")
    (logs / "up.jsonl").symlink_to("../outside/victim.jsonl")
    (logs / "real.jsonl").write_text("")
    (logs / "in.jsonl").symlink_to("real.jsonl")
    (logs / "sub").mkdir()
    for name in ("out.jsonl", "up.jsonl"):
        assert "symlink out" in (log_file_refusal(logs, name) or "")
    assert "directory" in (log_file_refusal(logs, "sub") or "")
    assert log_file_refusal(logs, "in.jsonl") is None
    assert log_file_refusal(logs, "new.jsonl") is None
    assert log_file_refusal(logs, None) is None


def _sub(name: str | None) -> Subscription:
    return Subscription(id="sub_1", name="l", channel=LogChannel(type="log", path=name), created_at=datetime.now(UTC))


async def test_the_sender_refuses_a_symlink_made_after_subscribing(tmp_path: Path) -> None:
    """The check holds at write time too: a symlink planted later is a permanent failure, nothing written out."""
    logs, victim = tmp_path / "logs", tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    sender = LogSender(logs)
    event = agreement([ANTING_TOWN])
    delivery = Delivery.of_record("msg_1", "sub_1", encode(event), event.source, event.id, [], None)
    ok = await sender.send(_sub("fine.jsonl"), delivery)
    assert ok.verdict == "ok" and (logs / "fine.jsonl").read_bytes().count(b"\n") == 1
    (logs / "planted.jsonl").symlink_to(victim)
    refused = await sender.send(_sub("planted.jsonl"), delivery)
    await sender.aclose()
    assert refused.verdict == "permanent" and "symlink out" in (refused.error or "")
    assert victim.read_text() == "untouched\n"
    assert sorted(os.listdir(logs)) == ["fine.jsonl", "planted.jsonl"]


@pytest.mark.kafka
async def test_the_api_answers_422_for_paths_and_symlinks_out(topics: AntingSettings, tmp_path: Path) -> None:
    """POST /v1/subscriptions with ../, an absolute path or a symlink out is 422 problem+json; nothing is stored."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "escape.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    settings = notify_settings(topics, log_dir=str(logs))
    producer = make_producer(settings)
    await producer.start()
    store = SubscriptionStore(settings, producer)
    await store.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, store)),
                                     base_url="http://notify") as client:
            for name in ("../relative.jsonl", str(tmp_path / "abs.jsonl"), "escape.jsonl", "relative.jsonl/.."):
                r = await client.post("/v1/subscriptions", json={"name": "l", "channel": {"type": "log", "path": name}})
                assert r.status_code == 422, (name, r.text)
                assert r.headers["content-type"] == "application/problem+json"
                assert any(e["path"].startswith("channel") for e in r.json()["errors"]), r.json()
            assert store.all() == []
            ok = await client.post("/v1/subscriptions", json={"name": "l", "channel": {"type": "log", "path": "ok.jsonl"}})
            assert ok.status_code == 201, ok.text
    finally:
        await store.stop()
        await producer.stop()
    assert not (tmp_path / "elsewhere.jsonl").exists() and not (tmp_path / "abs.jsonl").exists()


@pytest.mark.parametrize(("stored", "now"), [
    ("/var/log/anting/deliveries.jsonl", "deliveries.jsonl"),
    ("relative.jsonl", "relative.jsonl"),
    ("../../etc/cron.d/x", "x"),
    ("/var/log/", "log"),
    ("/tmp/.hidden", None),
])
def test_a_subscription_stored_with_a_path_is_kept_with_its_file_name(stored: str, now: str | None) -> None:
    """Records written before the log directory keep their subscription: the path's last part, in the directory."""
    old = _sub(None).model_dump(mode="json")
    old["channel"]["path"] = stored
    sub = decode_subscription(orjson.dumps(old))
    assert sub.id == old["id"] and isinstance(sub.channel, LogChannel) and sub.channel.path == now


def test_other_faults_in_a_record_still_fail() -> None:
    old = _sub(None).model_dump(mode="json")
    old["channel"]["path"] = "/var/log/x.jsonl"
    old["filter"] = {"kinds": ["no-such-kind"]}
    with pytest.raises(ValidationError):
        decode_subscription(orjson.dumps(old))


async def test_each_tenant_writes_in_its_own_directory(tmp_path: Path) -> None:
    """Two tenants naming the same file write two files: no tenant appends to a file another reads."""
    logs = tmp_path / "logs"
    sender = LogSender(logs)
    event = agreement([ANTING_TOWN])
    delivery = Delivery.of_record("msg_1", "sub_1", encode(event), event.source, event.id, [], None)
    for tenant in ("admin", "acme", "globex"):
        sub = _sub("shared.jsonl").model_copy(update={"tenant": tenant})
        assert (await sender.send(sub, delivery)).verdict == "ok"
    await sender.aclose()
    for path in (logs / "shared.jsonl", logs / "acme" / "shared.jsonl", logs / "globex" / "shared.jsonl"):
        assert path.read_bytes().count(b"\n") == 1, path
