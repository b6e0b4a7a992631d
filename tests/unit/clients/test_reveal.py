"""The reveal refuses a decoded sum that honest inputs cannot produce.

Two in-process gRPC servers (127.0.0.1, port 0) serve the aggregate shares of a sum
chosen by the test; the collector fetches them as it would from real parties.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from mpcagg import AggregateResult, Collector, ProtocolError
from mpcagg.mpc.ring import DTYPE
from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from tests.unit.clients import make_cluster

SPEC = RoundSpec(
    "r7", (TensorSpec("a", (3,)), TensorSpec("b", (2, 2))), 2, bound=1.0, max_clients=14
)


class _Holder(pb_grpc.AggregationServicer):  # type: ignore[misc]
    """A party that serves one aggregate share of round r7 (``vector``, ``cohort``)."""

    def __init__(self, party: int) -> None:
        self.party = party
        self.vector = np.zeros(SPEC.length, dtype=DTYPE)
        self.cohort = 0

    def GetAggregateShare(self, request: Any, context: Any) -> Iterator[pb.AggregateShareMessage]:
        header = pb.AggregateShareHeader(
            round_id=SPEC.round_id,
            party=self.party,
            length=SPEC.length,
            cohort_size=self.cohort,
            cohort_digest=b"c" * 32,
            spec_digest=SPEC.digest,
        )
        yield pb.AggregateShareMessage(header=header)
        yield pb.AggregateShareMessage(chunk=self.vector.astype("<u8").tobytes())


@pytest.fixture(scope="module")
def parties() -> Iterator[tuple[Collector, list[_Holder]]]:
    holders = [_Holder(p) for p in range(2)]
    servers, addresses = [], []
    for holder in holders:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_AggregationServicer_to_server(holder, server)
        addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
        server.start()
        servers.append(server)
    with Collector(make_cluster(addresses)) as collector:
        yield collector, holders
    for server in servers:
        server.stop(grace=None).wait(5)


def _reveal(total: np.ndarray, cohort: int, parties: tuple[Collector, list[_Holder]]) -> Any:
    """The collector's result when the two parties' shares add up to ``total``."""
    collector, holders = parties
    ring = SPEC.fixed_point.encode(total, bound=1e15)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2**64, size=SPEC.length, dtype=DTYPE, endpoint=False)
    for holder, vector in zip(holders, (mask, ring - mask), strict=True):
        holder.vector, holder.cohort = vector, cohort
    return collector.result(SPEC.round_id, SPEC)


def test_a_sum_within_cohort_times_bound_is_returned(
    parties: tuple[Collector, list[_Holder]],
) -> None:
    total = np.array([14.0, -14.0, 0.5, 1.0, 2.0, -3.0, 13.99])
    result = _reveal(total, 14, parties)
    assert isinstance(result, AggregateResult) and result.cohort_size == 14
    assert np.array_equal(result.sum["a"], total[:3])
    step = 2.0**-SPEC.precision_bits  # 13.99 is not a fixed-point number
    np.testing.assert_allclose(result.sum["b"], total[3:].reshape(2, 2), rtol=0, atol=step)


def test_a_corrupted_sum_is_refused_naming_round_and_coordinate(
    parties: tuple[Collector, list[_Holder]],
) -> None:
    total = np.zeros(SPEC.length)
    total[4] = 1e14  # what summing shares of two different sharings gives
    total[6] = -2e13
    with pytest.raises(ProtocolError, match=r"round 'r7'.*tensor 'b' at \(0, 1\).*1e\+14"):
        _reveal(total, 14, parties)


def test_one_coordinate_just_beyond_the_bound_is_refused(
    parties: tuple[Collector, list[_Holder]],
) -> None:
    total = np.zeros(SPEC.length)
    total[0] = 3.5  # cohort of 3, bound 1
    with pytest.raises(ProtocolError, match=r"tensor 'a' at \(0,\)"):
        _reveal(total, 3, parties)
