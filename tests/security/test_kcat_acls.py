"""The secured broker refuses what the ACL table does not allow, as kcat sees it: the
example principals stay on their side, a wrong password and an unknown CA fail."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import trustme

from tests.security.conftest import SecuredKafka

pytestmark = pytest.mark.kafka


def test_publisher_writes_the_input_topics_and_reader_reads_the_output(secure_kafka: SecuredKafka) -> None:
    marker = uuid.uuid4().hex
    wrote = secure_kafka.kcat("publisher", "-P", "-t", "announcements", "-k", marker,
                              input=f'{{"marker": "{marker}"}}\n')
    assert wrote.returncode == 0, wrote.stderr
    read = secure_kafka.kcat("publisher", "-C", "-t", "announcements", "-o", "beginning", "-e")
    assert read.returncode != 0  # publisher may write, not read
    assert "Topic authorization failed" in read.stderr, read.stderr
    out = secure_kafka.kcat("reader", "-C", "-t", "enriched-events", "-o", "beginning", "-e")
    assert out.returncode == 0, out.stderr


def test_an_idempotent_producer_needs_no_idempotent_write_on_the_cluster(secure_kafka: SecuredKafka) -> None:
    """Kafka 3.0+ (KIP-679) grants InitProducerId to a principal with Write on any topic:
    publisher has no IdempotentWrite, and librdkafka's idempotent producer still writes."""
    assert not [a for a in secure_kafka.acls if a.operation == "IDEMPOTENT_WRITE"]
    got = secure_kafka.kcat("publisher", "-X", "enable.idempotence=true", "-P", "-t", "agreements",
                            input='{"idempotent": true}\n')
    assert got.returncode == 0, got.stderr
    assert "authorization" not in got.stderr.lower(), got.stderr


def test_publisher_cannot_read_enriched_events(secure_kafka: SecuredKafka) -> None:
    got = secure_kafka.kcat("publisher", "-C", "-t", "enriched-events", "-o", "beginning", "-e")
    assert got.returncode != 0
    assert "Topic authorization failed" in got.stderr, got.stderr


def test_reader_cannot_write_announcements(secure_kafka: SecuredKafka) -> None:
    got = secure_kafka.kcat("reader", "-P", "-t", "announcements", input='{"x": 1}\n')
    assert "Topic authorization failed" in got.stderr, got.stderr
    assert got.returncode != 0


def test_reader_groups_only_under_its_prefix(secure_kafka: SecuredKafka) -> None:
    tag = uuid.uuid4().hex[:8]
    ok = secure_kafka.kcat("reader", "-G", f"reader-{tag}", "-o", "beginning", "-e", "enriched-events")
    assert ok.returncode == 0, ok.stderr
    refused = secure_kafka.kcat("reader", "-G", f"other-{tag}", "-o", "beginning", "-e",
                                "enriched-events", timeout=30)
    assert "Group authorization failed" in refused.stderr, refused.stderr


def test_removing_an_acl_refuses_and_restoring_allows(secure_kafka: SecuredKafka) -> None:
    acl = secure_kafka.acl("publisher", "topic", "agreements", "WRITE")
    with secure_kafka.without_acl(acl):
        deadline = time.monotonic() + 10
        while True:
            got = secure_kafka.kcat("publisher", "-P", "-t", "agreements", input='{"x": 1}\n')
            if got.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "Topic authorization failed" in got.stderr, got.stderr
    deadline = time.monotonic() + 10
    while True:
        got = secure_kafka.kcat("publisher", "-P", "-t", "agreements", input='{"x": 1}\n')
        if got.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got.returncode == 0, got.stderr


def test_wrong_password_is_an_authentication_error(secure_kafka: SecuredKafka, tmp_path: Path) -> None:
    conf = secure_kafka.kcat_config("reader").read_text()
    bad = tmp_path / "bad.conf"
    bad.write_text("\n".join(
        "sasl.password=not-the-password" if line.startswith("sasl.password=") else line
        for line in conf.splitlines()) + "\n")
    got = secure_kafka.kcat("reader", "-L", config=bad, timeout=30)
    assert got.returncode != 0
    assert "SASL authentication error" in got.stderr, got.stderr
    assert "Invalid username or password" in got.stderr, got.stderr  # PLAIN's answer (kcat's mechanism)


def test_unknown_ca_is_a_certificate_verification_error(secure_kafka: SecuredKafka, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(trustme.CA().cert_pem.bytes())
    conf = secure_kafka.kcat_config("reader").read_text()
    bad = tmp_path / "other-ca.conf"
    bad.write_text("\n".join(
        f"ssl.ca.location={other_ca}" if line.startswith("ssl.ca.location=") else line
        for line in conf.splitlines()) + "\n")
    got = secure_kafka.kcat("reader", "-L", config=bad, timeout=30)
    assert got.returncode != 0
    assert "certificate verify failed" in got.stderr, got.stderr


def test_no_password_in_the_brokers_logs_and_the_material_is_private(secure_kafka: SecuredKafka) -> None:
    """Nothing the broker wrote (its log, its output, formatting included) holds a
    password; the files holding secrets are 0600."""
    logs = "".join(p.read_text(errors="replace") for p in secure_kafka.broker.data_dir.glob("*.log"))
    for principal, password in secure_kafka.material.passwords().items():
        assert password not in logs, f"{principal}'s password is in the broker's log"
    private = [secure_kafka.material.credentials_file, secure_kafka.material.broker_key,
               secure_kafka.broker.data_dir / "server.properties",
               *(secure_kafka.kcat_config(p) for p in ("publisher", "reader", "anting-admin"))]
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_the_cli_tail_never_reads_kafka_with_a_users_credentials(secure_kafka: SecuredKafka) -> None:
    """``anting subscribe`` goes through notify's API, never Kafka: with a broker user's
    credentials in the environment and no notify answering, it names the URL it tried and
    exits 2 (before, it tailed enriched-events itself as that user)."""
    env = {**os.environ, **secure_kafka.env("reader"), "ANTING_TOPIC_PREFIX": "",
           "ANTING_NOTIFY_URL": "http://127.0.0.1:1"}
    got = subprocess.run([str(Path(sys.executable).parent / "anting"), "subscribe", "--from-beginning"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 2, (got.returncode, got.stderr[-2000:])
    assert "notify did not answer at http://127.0.0.1:1" in got.stderr, got.stderr[-2000:]
    assert "Traceback" not in got.stderr, got.stderr[-2000:]
