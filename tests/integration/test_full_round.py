"""A full round on 3, 4 and 5 real servers: the revealed sum is exact, bit for bit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mpcagg import RoundState
from mpcagg.ops.local import LocalCluster
from tests.integration.conftest import Rig, encode_all, exact_inputs, ring_sum, running_cluster

SHAPES = (("layer.weight", (3, 4)), ("layer.bias", (5,)))
TRAINERS = 4


@pytest.fixture(scope="module", params=[3, 4, 5], ids=lambda n: f"{n}-parties")
def rig_n(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rig]:
    n: int = request.param
    cluster: LocalCluster
    with running_cluster(tmp_path_factory.mktemp(f"cluster{n}"), n) as cluster, Rig(cluster) as rig:
        yield rig


def test_full_round_is_exact(rig_n: Rig) -> None:
    rig = rig_n
    round_id = f"full-{rig.n}"
    spec = rig.open(round_id, SHAPES, min_clients=TRAINERS)
    assert spec.n_parties == rig.n
    rng = np.random.default_rng(rig.n)
    inputs = exact_inputs(rng, TRAINERS, spec.length)

    for k, x in enumerate(inputs):
        values = {"layer.weight": x[:12].reshape(3, 4), "layer.bias": x[12:]}
        receipt = rig.submit(spec, f"trainer-{k}", values)
        assert receipt.complete and receipt.acknowledged == tuple(range(rig.n))
        assert not receipt.duplicates

    assert all(s.received == TRAINERS for s in rig.status(round_id).values())
    info = rig.close(round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    statuses = rig.status(round_id)
    assert {s.state for s in statuses.values()} == {RoundState.COMMITTED}
    assert {s.cohort_size for s in statuses.values()} == {TRAINERS}
    assert len({s.cohort_digest for s in statuses.values()}) == 1

    ring, cohort = rig.collector.aggregate_ring(round_id)
    expected = ring_sum(encode_all(spec, inputs), spec.length)
    assert cohort == TRAINERS
    np.testing.assert_array_equal(ring, expected)

    result = rig.collector.result(round_id, spec)
    total = np.sum(inputs, axis=0)
    np.testing.assert_array_equal(result.sum["layer.weight"], total[:12].reshape(3, 4))
    np.testing.assert_array_equal(result.sum["layer.bias"], total[12:])
    np.testing.assert_allclose(result.mean["layer.bias"], total[12:] / TRAINERS)
    assert result.cohort_size == TRAINERS
