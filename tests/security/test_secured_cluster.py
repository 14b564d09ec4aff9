"""A secured 3-node cluster (what ``ANTING_RUN_SECURITY=sasl_ssl ANTING_RUN_BROKERS=3``
starts): every node presents the one certificate and knows the same SCRAM users, the
brokers replicate to each other over SASL_SSL as their own user and the controllers
form their quorum over the PLAIN-only controller listener."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from devtools.localkafka import LocalCluster
from devtools.secure import SecureMaterial, provision

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def kcat(material: SecureMaterial, principal: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/kcat", "-F", str(material.kcat_config(principal)), *args], input=input,
                          capture_output=True, text=True, timeout=60)


def test_three_secured_nodes_replicate_and_serve_clients(tmp_path: Path) -> None:
    material = SecureMaterial(tmp_path / "secure")
    material.issue_tls()
    cluster = LocalCluster(3, data_dir=tmp_path / "cluster", heap="512m", secure=material)
    cluster.start()
    try:
        created = asyncio.run(provision(material, cluster.bootstrap))
        assert "announcements" in created
        listed = kcat(material, "reader", "-L")
        assert listed.returncode == 0, listed.stderr
        assert " 3 brokers:" in listed.stdout, listed.stdout
        marker = uuid.uuid4().hex
        # acks=all on a topic with three replicas and min.insync.replicas 2: acknowledged
        # only once another broker has fetched it, over the inter-broker SASL_SSL link
        wrote = kcat(material, "publisher", "-X", "acks=all", "-P", "-t", "announcements", "-k", marker,
                     input=f'{{"marker": "{marker}"}}\n')
        assert wrote.returncode == 0, wrote.stderr
        described = kcat(material, "anting-admin", "-L", "-t", "announcements")
        partitions = [line for line in described.stdout.splitlines() if "isrs:" in line]
        assert len(partitions) == 3, described.stdout
        for line in partitions:  # "partition 0, leader 2, replicas: 2,3,1, isrs: 2,3,1"
            m = re.search(r"replicas: ([\d,]+), isrs: ([\d,]+)", line)
            assert m is not None, line
            assert len(m.group(1).split(",")) == 3 and len(m.group(2).split(",")) >= 2, line
        read = kcat(material, "anting-admin", "-C", "-t", "announcements", "-o", "beginning", "-e")
        assert marker in read.stdout, read.stderr
    finally:
        cluster.stop()
