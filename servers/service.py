"""The gRPC servicers: thin adapters (proto → domain call → proto).

Every handler is wrapped by :mod:`servers.status`, which maps domain errors to
status codes in one place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.errors import Busy, InvalidArgument, PermissionDenied, RoundNotOpen
from mpcagg.protocol.state import RoundStatus, UploadAck
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.auth import Authenticator, PeerAuthenticator
from mpcagg.servers.upload import UploadSession
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.v1 import peer_pb2, peer_pb2_grpc
from mpcagg.wire.convert import (
    ack_to_proto,
    header_from_proto,
    holdings_from_proto,
    holdings_to_proto,
    spec_from_proto,
    state_to_proto,
    status_to_proto,
)
from mpcagg.wire.status import grpc_errors, grpc_stream_errors

if TYPE_CHECKING:
    from mpcagg.servers.leader import Leader

log = logging.getLogger("mpcagg.service")


class AggregationService(pb_grpc.AggregationServicer):
    """Client- and collector-facing RPCs.

    At most ``max_uploads`` upload streams run at once (``[limits]
    max_concurrent_streams``); one more is refused at once with RESOURCE_EXHAUSTED, so
    trainers holding streams open cannot starve health checks, status queries or the
    leader's peer calls, which gRPC's own server-wide limit would also refuse.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        auth: Authenticator,
        leader: Leader | None,
        chunk_bytes: int,
        max_uploads: int | None = None,
        max_downloads: int | None = None,
    ) -> None:
        self._agg = aggregator
        self._auth = auth
        self._leader = leader
        self._chunk = chunk_bytes
        self._max_uploads = max_uploads
        self._upload_slots = threading.BoundedSemaphore(max_uploads or 1)
        self._max_downloads = max_downloads
        self._download_slots = threading.BoundedSemaphore(max_downloads or 1)

    @grpc_errors
    def CreateRound(
        self, request: pb.CreateRoundRequest, context: grpc.ServicerContext
    ) -> pb.RoundStatus:
        self._auth.require(context, "collector")
        spec = spec_from_proto(request.spec)
        return status_to_proto(self._agg.create_round(spec), spec)

    @grpc_errors
    def GetRound(
        self, request: pb.GetRoundRequest, context: grpc.ServicerContext
    ) -> pb.RoundStatus:
        self._auth.require(context, "trainer", "collector")
        rnd = self._agg.get(request.round_id)
        return status_to_proto(self._agg.status(request.round_id), rnd.spec)

    @grpc_errors
    def Upload(
        self, request_iterator: Iterator[pb.UploadMessage], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        self._auth.require(context, "trainer")  # before reading anything the caller sent
        if self._max_uploads is None:
            return self._upload(request_iterator, context)
        if not self._upload_slots.acquire(blocking=False):
            raise Busy(
                f"this server already runs max_concurrent_streams ({self._max_uploads}) "
                "uploads; retry shortly"
            )
        try:
            return self._upload(request_iterator, context)
        finally:
            self._upload_slots.release()

    def _upload(
        self, request_iterator: Iterator[pb.UploadMessage], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "header":
            raise InvalidArgument("an upload starts with a header message; got a chunk or nothing")
        header = header_from_proto(first.header)
        self._auth.require_client(context, header.client_id)
        started = self._agg.begin_upload(header)
        if isinstance(started, UploadAck):
            return ack_to_proto(started)
        return ack_to_proto(_drive(started, request_iterator))

    @grpc_errors
    def CloseRound(
        self, request: pb.CloseRoundRequest, context: grpc.ServicerContext
    ) -> pb.RoundStatus:
        self._auth.require(context, "collector")
        if self._leader is None:
            raise RoundNotOpen(
                f"party {self._agg.party} is not the leader; send CloseRound to party 0"
            )
        return status_to_proto(self._leader.close(request.round_id))

    @grpc_stream_errors
    def GetAggregateShare(
        self, request: pb.GetAggregateShareRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateShareMessage]:
        ident = self._auth.require(context, "collector", "trainer")
        if ident is not None and ident.role == "trainer":
            # Decided before the round's state is looked at, so a trainer learns nothing
            # from the answer about a round it may not fetch.
            rnd = self._agg.get(request.round_id)
            if not rnd.spec.trainers_may_fetch or not rnd.in_cohort(ident.client_id):
                raise PermissionDenied(
                    "only the collector, or a cohort trainer when the round allows it, "
                    "may fetch aggregate shares"
                )
        status, vector = self._agg.aggregate_share(request.round_id)
        if self._max_downloads is None:
            yield from self._stream_share(status, vector)
            return
        # A caller that holds streams open without reading them keeps a worker thread
        # each: capped, so health checks and the leader's peer calls stay answered.
        if not self._download_slots.acquire(blocking=False):
            raise Busy(
                f"this server already streams max_aggregate_streams ({self._max_downloads}) "
                "aggregate shares; retry shortly"
            )
        try:
            yield from self._stream_share(status, vector)
        finally:
            self._download_slots.release()

    def _stream_share(
        self, status: RoundStatus, vector: RingVector
    ) -> Iterator[pb.AggregateShareMessage]:
        yield pb.AggregateShareMessage(
            header=pb.AggregateShareHeader(
                round_id=status.round_id,
                party=status.party,
                length=len(vector),
                cohort_size=status.cohort_size,
                cohort_digest=status.cohort_digest,
                spec_digest=status.spec_digest,
            )
        )
        raw = vector.data.cast("B")
        for start in range(0, len(raw), self._chunk):
            yield pb.AggregateShareMessage(chunk=bytes(raw[start : start + self._chunk]))


def _drive(session: UploadSession, messages: Iterator[pb.UploadMessage]) -> UploadAck:
    try:
        for msg in messages:
            body = msg.WhichOneof("body")
            if body == "chunk":
                session.add_chunk(msg.chunk)
            elif body == "header":
                raise InvalidArgument("a second header arrived after the upload started")
            else:
                raise InvalidArgument("upload message carries neither a header nor a chunk")
        return session.finish()
    except BaseException:
        session.abort()
        raise


class PeerService(peer_pb2_grpc.PeerServicer):
    """Server-to-server RPCs: manifests, commits, failures (party certificates only)."""

    def __init__(self, aggregator: Aggregator, auth: PeerAuthenticator) -> None:
        self._agg = aggregator
        self._auth = auth

    @grpc_errors
    def Manifest(
        self, request: peer_pb2.ManifestRequest, context: grpc.ServicerContext
    ) -> peer_pb2.ManifestReply:
        self._auth.require_leader(context)
        m = self._agg.manifest(request.round_id, request.spec_digest)
        return peer_pb2.ManifestReply(
            round_id=m.round_id,
            party=m.party,
            held=holdings_to_proto(m.held),
            state=state_to_proto(m.state),
            cohort_digest=m.cohort_digest,
        )

    @grpc_errors
    def Commit(
        self, request: peer_pb2.CommitRequest, context: grpc.ServicerContext
    ) -> pb.RoundStatus:
        self._auth.require_leader(context)
        spec_digest = self._agg.get(request.round_id).spec.digest
        if request.spec_digest != spec_digest:
            raise InvalidArgument("commit names a different round spec than this party holds")
        cohort = holdings_from_proto(request.cohort)
        status = self._agg.commit(request.round_id, cohort, request.cohort_digest)
        return status_to_proto(status)

    @grpc_errors
    def Fail(self, request: peer_pb2.FailRequest, context: grpc.ServicerContext) -> pb.RoundStatus:
        self._auth.require_leader(context)
        return status_to_proto(self._agg.fail(request.round_id, request.reason))
