"""``engine = "crypten"`` in the cluster file: the same round gives the same ring sum as numpy.

Both clusters get the same trainers with the same inputs, including one that
reaches only two servers, so the commit's subtraction of a non-cohort share runs
on each engine too.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from mpcagg import RoundState
from mpcagg.ops.local import LocalCluster
from tests.integration.conftest import Rig, encode_all, exact_inputs, ring_sum, running_cluster

pytestmark = pytest.mark.crypten

TRAINERS = 3


@pytest.fixture(scope="module")
def crypten_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cluster: LocalCluster
    with (
        running_cluster(
            tmp_path_factory.mktemp("crypten"), engine="crypten", log_level="INFO"
        ) as cluster,
        Rig(cluster) as rig,
    ):
        yield rig


def run_round(rig: Rig, inputs: list[np.ndarray], dropout: np.ndarray) -> np.ndarray:
    spec = rig.open("engines", (("w", (8, 8)),), min_clients=TRAINERS)
    for k, x in enumerate(inputs):
        assert rig.submit(spec, f"engine-{k}", {"w": x.reshape(8, 8)}).complete
    encoded = spec.fixed_point.encode(dropout, bound=spec.bound)
    rig.upload(
        spec.round_id,
        "engine-dropout",
        rig.shares(spec.round_id, "engine-dropout", encoded),
        [0, 1],
    )
    info = rig.close(spec.round_id)
    assert info.state is RoundState.COMMITTED, info.reason
    ring, cohort = rig.collector.aggregate_ring(spec.round_id)
    assert cohort == TRAINERS
    np.testing.assert_array_equal(ring, ring_sum(encode_all(spec, inputs), spec.length))
    return ring


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The numpy cluster to compare with (INFO logs show the engine each party runs)."""
    with running_cluster(tmp_path_factory.mktemp("numpy"), log_level="INFO") as c:
        yield c


def test_crypten_engine_gives_the_numpy_ring_sum(rig: Rig, crypten_rig: Rig) -> None:
    assert rig.config.engine == "numpy"
    assert crypten_rig.config.engine == "crypten"
    rng = np.random.default_rng(2024)
    inputs = exact_inputs(rng, TRAINERS, 64)
    dropout = exact_inputs(rng, 1, 64)[0]
    np.testing.assert_array_equal(
        run_round(crypten_rig, inputs, dropout), run_round(rig, inputs, dropout)
    )
    for party in range(3):
        assert "engine crypten" in crypten_rig.cluster.log_text(party)
        assert "engine numpy" in rig.cluster.log_text(party)
