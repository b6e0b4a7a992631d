"""The gRPC servicers: thin adapters (proto → domain call → proto).

Authentication, error mapping and the log line of a refused call happen once, in
:mod:`mpcagg.servers.interceptor`; conversions live in :mod:`mpcagg.wire`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import Busy, PermissionDenied, RoundNotOpen
from mpcagg.protocol.state import UploadAck, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.interceptor import caller
from mpcagg.servers.upload import UploadSession
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.v1 import peer_pb2_grpc
from mpcagg.wire import convert, framing

if TYPE_CHECKING:
    from mpcagg.servers.leader import Leader


class _Slots:
    """At most ``limit`` calls of one kind at once; one more is refused at once (Busy),
    so callers holding streams open cannot take every worker thread."""

    def __init__(self, limit: int, name: str, what: str) -> None:
        self._limit, self._name, self._what = limit, name, what
        self._free = threading.BoundedSemaphore(limit)

    def __enter__(self) -> None:
        if not self._free.acquire(blocking=False):
            raise Busy(
                f"this server already runs {self._name} ({self._limit}) {self._what}; retry shortly"
            )

    def __exit__(self, *_: object) -> None:
        self._free.release()


class AggregationService(pb_grpc.AggregationServicer):
    """Client- and collector-facing RPCs.

    Uploads are capped at ``limits.max_concurrent_streams`` and aggregate-share streams
    at ``limits.max_aggregate_streams``: beyond them a call is refused at once with
    RESOURCE_EXHAUSTED (retryable), so health checks and status queries stay answered.
    """

    def __init__(self, aggregator: Aggregator, leader: Leader | None, limits: Limits) -> None:
        self._agg = aggregator
        self._leader = leader
        self._chunk = limits.chunk_bytes
        self._uploads = _Slots(limits.max_concurrent_streams, "max_concurrent_streams", "uploads")
        self._downloads = _Slots(
            limits.max_aggregate_streams, "max_aggregate_streams", "aggregate-share streams"
        )

    @property
    def party(self) -> int:
        """The index of the party whose rounds this servicer answers for."""
        return self._agg.party

    def CreateRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Create the round from the request's spec (:meth:`Aggregator.create_round`)."""
        spec = convert.spec_from_proto(request.spec)
        return convert.status_to_proto(self._agg.create_round(spec), spec)

    def GetRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The round's status and whole spec; NOT_FOUND if unknown."""
        rnd = self._agg.get(request.round_id)
        return convert.status_to_proto(self._agg.status(request.round_id), rnd.spec)

    def Upload(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """Take one upload stream (header, then chunks) and acknowledge it once durable.

        PERMISSION_DENIED if the caller's certificate names another client than the header;
        RESOURCE_EXHAUSTED past the concurrent-upload limit; otherwise what
        :meth:`Aggregator.begin_upload` and :meth:`UploadSession.finish` raise.
        """
        with self._uploads:
            header, chunks = framing.read_upload(request_iterator)
            return convert.ack_to_proto(self._take(header, chunks))

    def UploadWhole(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Take one upload sent as a single message (a seed, or a full share of at most
        one chunk) exactly as :meth:`Upload` takes the same upload streamed."""
        with self._uploads:
            header, chunks = framing.read_whole_upload(request)
            return convert.ack_to_proto(self._take(header, chunks))

    def _take(self, header: UploadHeader, chunks: Iterator[bytes]) -> UploadAck:
        ident = caller()
        if ident is not None and ident.client_id != header.client_id:
            raise PermissionDenied(
                f"authenticated as {ident.client_id!r} but the request names client "
                f"{header.client_id!r}"
            )
        started = self._agg.begin_upload(header)
        if isinstance(started, UploadAck):
            return started
        return _drive(started, chunks)

    def CloseRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Leader only (FAILED_PRECONDITION elsewhere): close the round on every party."""
        if self._leader is None:
            raise RoundNotOpen(
                f"party {self._agg.party} is not the leader; send CloseRound to party 0"
            )
        return convert.status_to_proto(self._leader.close(request.round_id))

    def GetAggregateShare(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Stream this party's aggregate share to a caller allowed to fetch it
        (:meth:`Aggregator.aggregate_share`).
        """
        status, vector = self._agg.aggregate_share(request.round_id, caller())
        with self._downloads:
            yield from framing.aggregate_messages(status, vector, self._chunk)


def _drive(session: UploadSession, chunks: Iterator[bytes]) -> UploadAck:
    try:
        for chunk in chunks:
            session.add_chunk(chunk)
        return session.finish()
    except BaseException:
        session.abort()
        raise


class PeerService(peer_pb2_grpc.PeerServicer):
    """Server-to-server RPCs from the leader: manifests, commits, failures."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._agg = aggregator

    def Manifest(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The leader's Manifest call: :meth:`Aggregator.manifest`."""
        return convert.manifest_to_proto(self._agg.manifest(request.round_id, request.spec_digest))

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The leader's Commit call: :meth:`Aggregator.commit`."""
        round_id, cohort, digest, spec_digest = convert.commit_from_proto(request)
        return convert.status_to_proto(self._agg.commit(round_id, cohort, digest, spec_digest))

    def Fail(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The leader's Fail call: :meth:`Aggregator.fail`."""
        return convert.status_to_proto(self._agg.fail(request.round_id, request.reason))
