"""The README's main job: ``mpcagg demo`` runs secure federated averaging on a real
local cluster and checks every round against the plaintext sum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mpcagg import Collector
from mpcagg.ops.cli import app


def test_demo_rounds_are_exact_including_a_dropout(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--trainers", "4", "--rounds", "2", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    # Cut off from party 2, it sent its seed to party 1 and so never its full share.
    assert "trainer-3 is not held by parties [0, 2]" in result.output
    assert "all secure aggregates equal the plaintext fixed-point sums" in result.output
    rows = [line.split() for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1], r[-1]) for r in rows] == [("1", "4", "yes"), ("2", "3", "yes")]


def test_demo_fails_when_a_round_is_not_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secure aggregate the collector reveals is off by one ring unit in every
    coordinate (through the public ``Collector``): the demo's check must say so."""
    honest = Collector.aggregate_ring

    def off_by_one(self: Collector, round_id: str) -> tuple[np.ndarray, int]:
        secure, cohort = honest(self, round_id)
        return secure + np.uint64(1), cohort

    monkeypatch.setattr(Collector, "aggregate_ring", off_by_one)
    result = CliRunner().invoke(
        app, ["demo", "--trainers", "3", "--rounds", "1", "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "MISMATCH" in result.output
