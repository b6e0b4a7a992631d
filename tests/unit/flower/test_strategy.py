"""mpcagg.flower without servers: round ids, the model update, the dropout report."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

import mpcagg.flower
from mpcagg.flower import RoundReport, round_id_for
from mpcagg.flower.server import apply_update
from mpcagg.protocol.spec import check_id


def test_the_public_surface_is_what_all_lists() -> None:
    for name in mpcagg.flower.__all__:
        assert hasattr(mpcagg.flower, name), name


def test_round_ids_are_valid_distinct_and_refuse_nonsense() -> None:
    ids = {round_id_for(run, r) for run in (0, 2**64 - 1) for r in (1, 2)}
    assert len(ids) == 4
    for rid in ids:
        assert check_id("round id", rid) == rid
    for run, r in ((-1, 1), (1, 0), (True, 1), (1, 1.0)):
        with pytest.raises(ValueError):
            round_id_for(run, r)  # type: ignore[arg-type]


def test_the_update_keeps_each_arrays_dtype_and_the_integer_buffers() -> None:
    arrays = ArrayRecord()
    arrays["w"] = Array(np.array([1.0, 2.0], np.float32))
    arrays["steps"] = Array(np.array([7], np.int64))
    out = apply_update(arrays, {"w": np.array([0.5, -0.25])})
    assert out["w"].numpy().dtype == np.float32
    np.testing.assert_array_equal(out["w"].numpy(), [1.5, 1.75])
    np.testing.assert_array_equal(out["steps"].numpy(), [7])


def test_dropouts_are_the_sampled_nodes_outside_the_cohort() -> None:
    report = RoundReport(
        2, "r", sampled=(1, 2, 3, 4), replied=(1, 2, 3), complete=(1, 2), state="COMMITTED"
    )
    assert report.dropouts == (4,)  # without a matching cohort: only the silent node
    matched = RoundReport(
        2,
        "r",
        sampled=(1, 2, 3, 4),
        replied=(1, 2, 3),
        complete=(1, 2),
        state="COMMITTED",
        receipts_match_cohort=True,
    )
    assert matched.dropouts == (3, 4)  # node 3's upload was incomplete
    assert RoundReport(2, "r", sampled=(1, 2), state="FAILED").dropouts == (1, 2)
