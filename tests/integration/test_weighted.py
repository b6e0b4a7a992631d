"""Weighted rounds on real servers: each trainer shares ``[w·x, w]`` in one sharing and the
collector reveals the exact weighted mean ``Σw·x / Σw`` and ``Σw`` over the cohort."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg import InputError, RoundState
from mpcagg.clients.weighting import weigh
from tests.integration.conftest import Rig, exact_inputs, ring_sum

SHAPES = (("layer.weight", (3, 4)), ("layer.bias", (5,)))
LENGTH = 17
# A trainer without data (0), unequal weights, and one that drops out (reaches 2 of 3).
WEIGHTS = {"w-zero": 0, "w-small": 3, "w-mid": 17, "w-gone": 250, "w-big": 999}
DROPPED = "w-gone"


def values(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"layer.weight": x[:12].reshape(3, 4), "layer.bias": x[12:]}


def test_weighted_mean_is_exact_with_a_zero_weight_unequal_weights_and_a_dropout(
    rig: Rig,
) -> None:
    spec = rig.open(
        "weighted-1", SHAPES, min_clients=3, max_clients=8, weighted=True, max_weight=1000
    )
    assert spec.weighted and spec.length == LENGTH + 1
    rng = np.random.default_rng(7)
    inputs = dict(zip(WEIGHTS, exact_inputs(rng, len(WEIGHTS), LENGTH), strict=True))

    for cid, x in inputs.items():
        if cid == DROPPED:
            # The same [w·x, w] the client makes, shared, but uploaded to parties 0 and 1 only.
            encoded = weigh(spec, x, spec.fixed_point.encode(x, bound=spec.bound), WEIGHTS[cid])
            rig.upload(spec.round_id, cid, rig.shares(spec.round_id, cid, encoded), [0, 1])
            continue
        with rig.trainer(cid) as trainer:
            receipt = trainer.submit(spec, values(x), weight=WEIGHTS[cid])
        assert receipt.complete

    info = rig.close(spec.round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    counted = [cid for cid in WEIGHTS if cid != DROPPED]

    # Ring level: the revealed vector is the sum of the counted trainers' [w·x, w].
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    weighted = [
        spec.fixed_point.encode(np.append(inputs[c] * WEIGHTS[c], WEIGHTS[c]), bound=None)
        for c in counted
    ]
    np.testing.assert_array_equal(ring, ring_sum(weighted, spec.length))
    assert cohort == len(counted)  # the zero-weight trainer is in the cohort

    result = rig.collector.result(spec.round_id, spec)
    total_weight = sum(WEIGHTS[c] for c in counted)
    weighted_sum = np.sum([inputs[c] * WEIGHTS[c] for c in counted], axis=0)
    assert result.total_weight == total_weight
    assert result.cohort_size == len(counted)
    assert result.mean.kind == "weighted" and result.mean.divisor == total_weight
    np.testing.assert_array_equal(result.sum["layer.bias"], weighted_sum[12:])
    np.testing.assert_array_equal(
        result.mean["layer.weight"], values(weighted_sum / total_weight)["layer.weight"]
    )
    np.testing.assert_array_equal(result.mean["layer.bias"], weighted_sum[12:] / total_weight)
    # ... which is not what an unweighted mean, or one that counted the dropout, gives.
    plain = np.mean([inputs[c] for c in counted], axis=0)
    assert not np.allclose(result.mean["layer.bias"], plain[12:])
    with_dropped = np.sum([inputs[c] * WEIGHTS[c] for c in WEIGHTS], axis=0) / sum(WEIGHTS.values())
    assert not np.allclose(result.mean["layer.bias"], with_dropped[12:])


def test_unweighted_round_says_its_mean_is_unweighted(rig: Rig) -> None:
    spec = rig.open("unweighted-1", SHAPES, min_clients=2)
    assert not spec.weighted and spec.length == LENGTH
    inputs = exact_inputs(np.random.default_rng(8), 2, LENGTH)
    for k, x in enumerate(inputs):
        rig.submit(spec, f"u-{k}", values(x))
    assert rig.close(spec.round_id).state is RoundState.COMMITTED
    result = rig.collector.result(spec.round_id, spec)
    assert result.total_weight is None
    assert result.mean.kind == "unweighted" and result.mean.divisor == 2
    np.testing.assert_array_equal(result.mean["layer.bias"], np.sum(inputs, axis=0)[12:] / 2)


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (None, r"is weighted: pass weight="),
        (1000.5, r"outside the round's range 0\.\.1000"),
        (-1, r"outside the round's range"),
        (float("nan"), r"outside the round's range"),
        (True, r"weight must be a number"),
    ],
)
def test_a_weighted_round_refuses_a_missing_or_out_of_range_weight(
    rig: Rig, weight: object, match: str
) -> None:
    spec = rig.open("weighted-refusals", SHAPES, weighted=True, max_weight=1000)
    with rig.trainer("w-refused") as trainer, pytest.raises(InputError, match=match):
        trainer.submit(spec, values(np.zeros(LENGTH)), weight=weight)  # type: ignore[arg-type]
    assert {s.received for s in rig.status(spec.round_id).values()} == {0}  # nothing sent


def test_an_unweighted_round_refuses_a_weight(rig: Rig) -> None:
    spec = rig.open("unweighted-refusal", SHAPES)
    with rig.trainer("u-refused") as trainer, pytest.raises(InputError, match="not weighted"):
        trainer.submit(spec, values(np.zeros(LENGTH)), weight=5)


def test_the_collector_refuses_a_weighted_round_whose_sum_could_wrap(rig: Rig) -> None:
    # 1000 × 1e9 × 2^16 per trainer: 140 of them fit below 2^63, 141 would not.
    with pytest.raises(InputError, match=r"× max_weight 1000000000\.0 .* at most 140 clients"):
        rig.open("weighted-wraps", SHAPES, weighted=True, max_weight=1e9, max_clients=141)
    rig.open("weighted-fits", SHAPES, weighted=True, max_weight=1e9, max_clients=140)
    # Unweighted, the same bound leaves room for 1000 clients.
    rig.open("unweighted-fits", SHAPES, max_clients=1000)
    with pytest.raises(InputError, match="needs max_weight"):
        rig.open("weighted-no-max", SHAPES, weighted=True)
