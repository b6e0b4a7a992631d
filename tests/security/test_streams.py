"""Aggregate-share streams are capped: a caller holding streams open without reading
them cannot take every worker thread of a party (health checks, status queries and the
leader's peer calls keep theirs).

gRPC buffers a whole response for a client that does not read when it is small, so
the streams are held open here exactly: the real servicer's response generators are
left suspended after their first message, as gRPC leaves them while the client's flow
control window is full. The servicer takes the cluster's ``[limits]`` as a whole, so a
server cannot be built without the cap.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import Busy
from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.servers.service import AggregationService
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.status import code_for
from tests.unit.servers.test_cohort import LENGTH, FakePeer, _aggregator, _upload

CAP = 2


def test_aggregate_share_streams_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    from mpcagg.servers.leader import Leader

    spec = RoundSpec("big", (TensorSpec("w", (LENGTH,)),), 3, min_clients=2)
    aggs = [_aggregator(tmp_path, p) for p in range(3)]
    for a in aggs:
        a.create_round(spec)
    for k, client in enumerate(("a", "b")):
        _upload(aggs, spec, client, k + 1, {0, 1, 2})
    assert Leader(aggs[0], [FakePeer(a) for a in aggs[1:]]).close("big").cohort_size == 2  # type: ignore[list-item]

    limits = Limits(max_aggregate_streams=CAP, chunk_bytes=16)
    service = AggregationService(aggs[1], None, limits)
    request = pb.GetAggregateShareRequest(round_id="big")
    held = [service.GetAggregateShare(request, None) for _ in range(CAP)]
    for stream in held:
        assert next(stream).WhichOneof("body") == "header"  # suspended mid-stream

    with pytest.raises(Busy, match=r"max_aggregate_streams \(2\)"):
        next(service.GetAggregateShare(request, None))
    # Busy travels as RESOURCE_EXHAUSTED with the retry trailer: clients back off, retry.
    assert code_for(Busy("")) is grpc.StatusCode.RESOURCE_EXHAUSTED

    for stream in held:  # a stream that ends, read or cancelled, frees its slot
        stream.close()
    again = list(service.GetAggregateShare(request, None))
    assert sum(len(m.chunk) for m in again[1:]) == LENGTH * 8
