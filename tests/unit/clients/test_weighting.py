"""Weighted specs and the collector's check of a revealed weighted sum."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg import InvalidArgument, ProtocolError
from mpcagg.clients.weighting import Mean, split_weighted, weighted_mean
from mpcagg.protocol.spec import RoundSpec, TensorSpec, spec_from_canonical
from mpcagg.wire.convert import spec_from_proto, spec_to_proto

TENSORS = (TensorSpec("w", (2, 2)),)


def spec(**kw: object) -> RoundSpec:
    return RoundSpec("r", TENSORS, 3, bound=10.0, max_clients=4, **kw)  # type: ignore[arg-type]


def test_an_unweighted_canonical_form_is_what_it_was_before_weights() -> None:
    # The digest every server of an earlier version computes for this spec.
    assert spec().canonical() == (
        b'{"bound":"0x1.4000000000000p+3","deadline_unix":"0x0.0p+0","max_clients":4,'
        b'"min_clients":2,"n_parties":3,"precision_bits":16,"round_id":"r",'
        b'"tensors":[["w",[2,2]]],"trainers_may_fetch":false,"v":1}'
    )


def test_weighted_specs_say_so_in_their_digest_and_survive_every_conversion() -> None:
    weighted = spec(weighted=True, max_weight=100.0)
    other = spec(weighted=True, max_weight=101.0)
    assert len({spec().digest, weighted.digest, other.digest}) == 3
    assert weighted.length == 5 and weighted.tensor_length == 4
    assert spec_from_canonical(weighted.canonical()) == weighted
    assert spec_from_proto(spec_to_proto(weighted)).digest == weighted.digest


def test_max_weight_belongs_to_weighted_rounds_only() -> None:
    with pytest.raises(InvalidArgument, match="needs max_weight"):
        spec(weighted=True)
    with pytest.raises(InvalidArgument, match="only for weighted rounds"):
        spec(max_weight=5.0)


def test_the_ring_headroom_counts_max_weight() -> None:
    # Four inputs of 10 × max_weight × 2^16 each must stay below 2^63: max_weight 3.5e12
    # fits, 1e13 leaves room for one client only.
    assert spec(weighted=True, max_weight=3.5e12).coordinate_bound == 3.5e13
    with pytest.raises(
        InvalidArgument, match=r"× max_weight 10000000000000.0 .* at most 1 clients"
    ):
        spec(weighted=True, max_weight=1e13)
    assert spec().coordinate_bound == 10.0  # unweighted: the bound alone


def test_split_refuses_a_total_weight_honest_trainers_cannot_give() -> None:
    s = spec(weighted=True, max_weight=100.0)
    with pytest.raises(ProtocolError, match="total weight 401 is not one"):
        split_weighted(s, np.array([0.0, 0, 0, 0, 401.0]), cohort_size=4)
    with pytest.raises(ProtocolError, match="total weight -1 is not one"):
        split_weighted(s, np.array([0.0, 0, 0, 0, -1.0]), cohort_size=4)


def test_split_refuses_a_weighted_sum_beyond_total_weight_times_bound() -> None:
    s = spec(weighted=True, max_weight=100.0)
    total, weight = split_weighted(s, np.array([50.0, -50, 0, 0, 5.0]), cohort_size=2)
    assert weight == 5.0 and list(total) == [50.0, -50, 0, 0]
    with pytest.raises(ProtocolError, match=r"tensor 'w' at \(0, 1\) is -50\.1"):
        split_weighted(s, np.array([0.0, -50.1, 0, 0, 5.0]), cohort_size=1)


def test_the_mean_of_a_weightless_cohort_is_undefined_not_zero() -> None:
    s = spec(weighted=True, max_weight=100.0)
    assert np.isnan(weighted_mean(s, np.zeros(4), 0.0)).all()
    mean = Mean({"w": np.zeros((2, 2))}, "weighted", 0.0)
    assert mean.kind == "weighted" and "total weight 0" in repr(mean)
