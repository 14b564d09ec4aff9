"""The chaos run, small: 2 enrich instances on the 3-node cluster while a broker (the
transaction coordinator) is SIGKILLed and restarted, enrich instances are SIGKILLed and
one is paused past its session timeout; nothing lost, duplicated, read aborted or
reordered. ``make chaos-cluster`` runs the full size."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.localkafka import LocalCluster
from tests.cluster.chaos import Faults, run_chaos

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_enrich_under_broker_and_instance_faults_loses_and_duplicates_nothing(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    """1,500 events in ~10 s; 1 broker SIGKILL, 2 enrich SIGKILLs, 1 zombie; the checker
    finds no anomaly and every event came out."""
    outcome = await run_chaos(cluster, tmp_path, 1500,
                              Faults(broker_kills=1, enrich_kills=2, enrich_pauses=1),
                              rate=150, seed=14)
    print("\n".join(outcome.faults))
    print(outcome.report.summary(), f"{outcome.seconds:.0f}s")
    assert len(outcome.faults) >= 6  # every fault happened (restarts and SIGCONT included)
    assert outcome.report.inputs == 1500 and outcome.report.outputs >= 1500
    assert outcome.report.ok, outcome.report.summary()
