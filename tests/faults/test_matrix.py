"""The fault matrix, small: on a broker of the test's own, the broker SIGSTOPped past the
services' request timeout, and enriched-events' limit lowered while an event too large
for it goes by (a refused batch, then more sends to its partition), each with enrich
exactly once, notify and insights running. Nothing lost or duplicated, every event
delivered, the refused event (only it) in dead-letters, every group committed to the end,
insights' answers equal to a recomputation from enriched-events, no restart loop. ``make chaos-faults`` runs every cell at full size."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.matrix import HEADER, run_matrix

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


async def test_a_paused_broker_and_a_refused_batch_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Two cells of 300 events at 60/s each; the checker and the dead letters agree."""
    cells = await run_matrix(tmp_path, ("broker-pause", "limit-lowered"), ("exactly_once",),
                             events=300, rate=60.0)
    print(HEADER, *(c.row() for c in cells), *(line for c in cells for line in c.log), sep="\n")
    assert [(c.fault, c.report.inputs) for c in cells] == [("broker-pause", 300), ("limit-lowered", 300)]
    for cell in cells:
        assert cell.report.pairs == 300 and cell.report.outputs == 300, cell.report.summary()
        assert cell.ok, (cell.row(), cell.report.summary(), cell.letters, cell.uncommitted, cell.stuck,
                         cell.insights[:5])
    assert cells[1].letters == ["faults-big"]
