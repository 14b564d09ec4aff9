"""The chaos run, small: 2 enrich and 2 notify instances and one ingest on the 3-node
cluster while a broker (the transaction coordinator) is SIGKILLed and another (the group
coordinator) stopped cleanly, each restarted, enrich instances are SIGKILLed and one is
paused past its session timeout, a notify instance is SIGKILLed; a quarter of the load
goes through ingest's HTTP API. Nothing lost, duplicated, read aborted or reordered;
every notification delivered under its stable webhook-id; ingest rode through.
``make chaos-cluster`` runs the full size."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.localkafka import LocalCluster
from tests.cluster.chaos import Faults, run_chaos

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_pipeline_under_broker_and_instance_faults_loses_and_duplicates_nothing(
    cluster: LocalCluster, tmp_path: Path,
) -> None:
    """1,500 events in ~20 s; 1 broker SIGKILL, 1 clean broker stop, 2 enrich SIGKILLs,
    1 zombie, 1 notify SIGKILL; the checker finds no anomaly, every event came out and
    every (event, subscription) pair was delivered; ingest answered every batch in the end."""
    outcome = await run_chaos(cluster, tmp_path, 1500,
                              Faults(broker_kills=1, broker_clean_stops=1, enrich_kills=2,
                                     enrich_pauses=1, notify_kills=1),
                              rate=75, seed=14)
    print("\n".join(outcome.faults))
    print(outcome.report.summary(), f"{outcome.seconds:.0f}s")
    print(outcome.http_summary())
    assert len(outcome.faults) >= 10  # every fault happened (restarts and SIGCONT included)
    assert outcome.report.inputs >= 1500 and outcome.report.outputs >= 1500
    assert outcome.report.ok, outcome.report.summary()
    assert outcome.report.pairs == 1500  # one subscription, every event
    assert outcome.report.deliveries >= outcome.report.pairs
    assert outcome.http_events == 380 and outcome.http_given_up == 0 and outcome.raw_given_up == 0
    assert outcome.http_requests >= 38 and outcome.http_other_failures == 0
    assert outcome.ingest_alive
