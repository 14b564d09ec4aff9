"""The operator's Kafka commands on the secured broker: `anting dlq list` and `anting dlq
replay` say which broker they use and as whom, and a principal the broker refuses gets an
error naming what it may not do, exit 2: never "0 dead letter(s)"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import REPO_ROOT
from tests.security.conftest import SecuredKafka

pytestmark = pytest.mark.kafka
ANTING = str(Path(sys.executable).parent / "anting")


def _anting(kafka: SecuredKafka, principal: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **kafka.env(principal), "ANTING_TOPIC_PREFIX": "", "COLUMNS": "200"}
    return subprocess.run([ANTING, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_dlq_list_and_replay_refused_are_errors_naming_who_not_empty_answers(secure_kafka: SecuredKafka) -> None:
    """publisher may not even see dead-letters (absent from its metadata, as if it did not
    exist), anting-ingest may write it but not read it: `dlq list` is exit 2 naming the
    principal, the operation, the topic and the broker for both, and `dlq replay` as
    publisher too; anting-admin lists (an answer naming the broker, exit 0)."""
    for who in ("publisher", "anting-ingest"):
        listed = _anting(secure_kafka, who, "dlq", "list")
        assert listed.returncode == 2, (who, listed.stdout, listed.stderr)
        said = " ".join(listed.stderr.split())  # rich wraps long lines
        assert f"User:{who} may not Read Topic:dead-letters" in said, said
        assert secure_kafka.bootstrap in said and "dead letter(s)" not in said, said
    replayed = _anting(secure_kafka, "publisher", "dlq", "replay", "--all")
    said = " ".join(replayed.stderr.split())
    assert replayed.returncode == 2 and "User:publisher may not" in said and "nothing was sent" in said, said
    admin = _anting(secure_kafka, "anting-admin", "dlq", "list")
    said = " ".join(admin.stderr.split())
    assert admin.returncode == 0, said
    assert f"on broker {secure_kafka.bootstrap} as User:anting-admin" in said and "dead letter(s)" in said
