"""Aggregate-share streams are capped: a caller holding streams open without reading
them cannot take every worker thread of a party (health checks, status queries and the
leader's peer calls keep theirs).

gRPC buffers a whole response for a client that does not read when it is small, so
the streams are held open here exactly: the real servicer's response generators are
left suspended after their first message, as gRPC leaves them while the client's flow
control window is full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.servers.auth import Authenticator
from mpcagg.servers.service import AggregationService
from mpcagg.v1 import aggregation_pb2 as pb
from tests.unit.servers.test_cohort import LENGTH, FakePeer, _aggregator, _upload

CAP = 2


class Aborted(Exception):
    pass


class Context:
    """The slice of ``grpc.ServicerContext`` the servicer uses on an insecure port."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, str], ...] = ()

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.code, self.details = code, details
        raise Aborted(details)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def auth_context(self) -> dict[str, Any]:
        return {}


def test_aggregate_share_streams_beyond_the_cap_are_refused(tmp_path: Path) -> None:
    from mpcagg.servers.leader import Leader

    spec = RoundSpec("big", (TensorSpec("w", (LENGTH,)),), 3, min_clients=2)
    aggs = [_aggregator(tmp_path, p) for p in range(3)]
    for a in aggs:
        a.create_round(spec)
    for k, client in enumerate(("a", "b")):
        _upload(aggs, spec, client, k + 1, {0, 1, 2})
    assert Leader(aggs[0], [FakePeer(a) for a in aggs[1:]]).close("big").cohort_size == 2  # type: ignore[list-item]

    service = AggregationService(
        aggs[1], Authenticator(enforcing=False), None, chunk_bytes=16, max_downloads=CAP
    )
    request = pb.GetAggregateShareRequest(round_id="big")
    held = [service.GetAggregateShare(request, Context()) for _ in range(CAP)]
    for stream in held:
        assert next(stream).WhichOneof("body") == "header"  # suspended mid-stream

    refused = Context()
    with pytest.raises(Aborted):
        next(service.GetAggregateShare(request, refused))
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_aggregate_streams (2)" in refused.details
    assert refused.trailing == (("mpcagg-retryable", "1"),)  # clients back off and retry

    for stream in held:  # a stream that ends, read or cancelled, frees its slot
        stream.close()
    again = list(service.GetAggregateShare(request, Context()))
    assert sum(len(m.chunk) for m in again[1:]) == LENGTH * 8
