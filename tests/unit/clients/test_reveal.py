"""The reveal refuses a decoded sum that honest inputs cannot produce."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg import Collector, ProtocolError
from mpcagg.mpc.ring import DTYPE
from mpcagg.protocol.cluster import ClusterConfig, PartyConfig
from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.protocol.state import AggregateShare

SPEC = RoundSpec(
    "r7", (TensorSpec("a", (3,)), TensorSpec("b", (2, 2))), 2, bound=1.0, max_clients=14
)
CONFIG = ClusterConfig(
    parties=[PartyConfig(id=i, address=f"127.0.0.1:{50000 + i}") for i in range(2)]
)


def _reveal(total: np.ndarray, cohort: int, monkeypatch: pytest.MonkeyPatch) -> object:
    ring = SPEC.fixed_point.encode(total, bound=1e15)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2**64, size=SPEC.length, dtype=DTYPE, endpoint=False)
    shares = [
        AggregateShare(p, SPEC.round_id, cohort, b"c", SPEC.digest, v)
        for p, v in enumerate((mask, ring - mask))
    ]
    collector = Collector(CONFIG)
    monkeypatch.setattr(collector, "_aggregate_shares", lambda round_id: shares)
    return collector.result(SPEC.round_id, SPEC)


def test_a_sum_within_cohort_times_bound_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    total = np.array([14.0, -14.0, 0.5, 1.0, 2.0, -3.0, 13.99])
    result = _reveal(total, 14, monkeypatch)
    assert np.array_equal(result.sum["a"], total[:3])  # type: ignore[attr-defined]


def test_a_corrupted_sum_is_refused_naming_round_and_coordinate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    total = np.zeros(SPEC.length)
    total[4] = 1e14  # what summing shares of two different sharings gives
    total[6] = -2e13
    with pytest.raises(ProtocolError, match=r"round 'r7'.*tensor 'b' at \(0, 1\).*1e\+14"):
        _reveal(total, 14, monkeypatch)


def test_one_coordinate_just_beyond_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    total = np.zeros(SPEC.length)
    total[0] = 3.5  # cohort of 3, bound 1
    with pytest.raises(ProtocolError, match=r"tensor 'a' at \(0,\)"):
        _reveal(total, 3, monkeypatch)
