"""A tiny fake cluster of in-process gRPC servers, for client tests that inject faults.

Each fake implements the ``Aggregation`` service minimally: it stores uploads in
memory, the leader's CloseRound takes the intersection of what every fake holds, and
each fake serves the sum of its cohort's shares. Servers bind 127.0.0.1:0; chunks are
``CHUNK`` bytes so that every upload spans several messages.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from mpcagg.mpc import FullShare, Seed, SeedShare, Share, SharingContext
from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.engines import NumpyEngine
from mpcagg.protocol.cluster import ClusterConfig, Limits
from mpcagg.protocol.spec import RoundSpec, cohort_digest
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import aggregation_pb2_grpc as pb_grpc
from mpcagg.wire.convert import spec_from_proto
from tests.unit.clients import make_cluster

CHUNK = 64


@dataclass
class FakeRound:
    spec: RoundSpec
    state: int = pb.OPEN
    shares: dict[str, Share] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    cohort: list[str] = field(default_factory=list)
    cohort_digest: bytes = b""
    reason: str = ""


class FakeParty(pb_grpc.AggregationServicer):  # type: ignore[misc]
    def __init__(self, index: int, cluster: FakeCluster) -> None:
        self.index = index
        self.cluster = cluster
        self.rounds: dict[str, FakeRound] = {}
        self.lock = threading.RLock()
        self.up = True
        self.fail_next_uploads = 0
        self.drop_next_acks = 0
        self.ack_wrong_digest = False
        self.reject_uploads = ""
        self.streams_only = False
        self.attempts: list[tuple[pb.UploadHeader, bytes]] = []
        self.ways: list[str] = []  # "whole" (UploadWhole) or "stream" (Upload), by attempt
        self.metadata: list[dict[str, str]] = []

    # -- helpers -----------------------------------------------------------------------
    def _round(self, round_id: str, context: Any) -> FakeRound:
        self.metadata.append(dict(context.invocation_metadata()))
        r = self.rounds.get(round_id)
        if r is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown round {round_id!r}")
        return r

    def _status(self, r: FakeRound) -> pb.RoundStatus:
        return pb.RoundStatus(
            round_id=r.spec.round_id,
            state=r.state,
            spec_digest=r.spec.digest,
            received=len(r.shares),
            cohort_size=len(r.cohort),
            cohort_digest=r.cohort_digest,
            reason=r.reason,
            party=self.index,
        )

    def commit(self, round_id: str, cohort: list[str]) -> None:
        with self.lock:
            r = self.rounds[round_id]
            if len(cohort) < r.spec.min_clients:
                r.state = pb.FAILED
                r.reason = f"cohort of {len(cohort)} is below min_clients {r.spec.min_clients}"
            else:
                r.state = pb.COMMITTED
                r.cohort = cohort
                r.cohort_digest = cohort_digest(cohort)

    # -- service -----------------------------------------------------------------------
    def CreateRound(self, request: Any, context: Any) -> pb.RoundStatus:
        self.metadata.append(dict(context.invocation_metadata()))
        spec = spec_from_proto(request.spec)
        with self.lock:
            existing = self.rounds.get(spec.round_id)
            if existing is not None and existing.spec.digest != spec.digest:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "round exists with another spec")
            r = existing or FakeRound(spec)
            self.rounds[spec.round_id] = r
            return self._status(r)

    def GetRound(self, request: Any, context: Any) -> pb.RoundStatus:
        with self.lock:
            return self._status(self._round(request.round_id, context))

    def Upload(self, request_iterator: Iterator[Any], context: Any) -> pb.UploadReceipt:
        msgs = list(request_iterator)
        self.ways.append("stream")
        return self._take(msgs[0].header, b"".join(m.chunk for m in msgs[1:]), context)

    def UploadWhole(self, request: Any, context: Any) -> pb.UploadReceipt:
        if self.streams_only:  # a server that predates UploadWhole
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        self.ways.append("whole")
        return self._take(request.header, request.data, context)

    def _take(self, header: Any, data: bytes, context: Any) -> pb.UploadReceipt:
        with self.lock:
            self.attempts.append((header, data))
            if self.fail_next_uploads:
                self.fail_next_uploads -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "busy, try again")
            if self.reject_uploads:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.reject_uploads)
            r = self._round(header.round_id, context)
            if r.state != pb.OPEN:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "round is not open")
            payload = header.seed if header.kind == pb.SEED else data
            digest = payload_digest(payload)
            if digest != header.payload_digest or header.length != r.spec.length:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "digest or length mismatch")
            client = header.client_id
            if client in r.digests:
                if r.digests[client] != digest:
                    context.abort(grpc.StatusCode.ALREADY_EXISTS, "another payload")
                duplicate = True
            else:
                duplicate = False
                share: Share
                if header.kind == pb.SEED:
                    ctx = SharingContext(header.round_id, client)
                    share = SeedShare(self.index, header.length, Seed(header.seed), ctx)
                else:
                    vec = np.frombuffer(data, dtype="<u8").copy()
                    share = FullShare(self.index, vec)
                r.shares[client] = share
                r.digests[client] = digest
                if self.drop_next_acks:  # stored, but the answer is lost
                    self.drop_next_acks -= 1
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            return pb.UploadReceipt(
                round_id=header.round_id,
                client_id=client,
                party=self.index,
                payload_digest=bytes(32) if self.ack_wrong_digest else digest,
                duplicate=duplicate,
            )

    def CloseRound(self, request: Any, context: Any) -> pb.RoundStatus:
        with self.lock:
            r = self._round(request.round_id, context)
            if self.index != 0:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader")
            if r.state in (pb.COMMITTED, pb.FAILED):
                return self._status(r)
            down = [p.index for p in self.cluster.parties if not p.up]
            if down:
                r.state = pb.CLOSING
                r.reason = f"waiting for parties {down}"
                return self._status(r)
            held = [set(p.rounds[request.round_id].shares) for p in self.cluster.parties]
            cohort = sorted(set.intersection(*held))
            for p in self.cluster.parties:
                p.commit(request.round_id, cohort)
            return self._status(r)

    def GetAggregateShare(self, request: Any, context: Any) -> Iterator[pb.AggregateShareMessage]:
        with self.lock:
            r = self._round(request.round_id, context)
            if r.state != pb.COMMITTED:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "round is not committed")
            engine = NumpyEngine()
            acc = engine.zeros(r.spec.length)
            for client in r.cohort:
                engine.accumulate(acc, r.shares[client])
            header = pb.AggregateShareHeader(
                round_id=r.spec.round_id,
                party=self.index,
                length=r.spec.length,
                cohort_size=len(r.cohort),
                cohort_digest=r.cohort_digest,
                spec_digest=r.spec.digest,
            )
        yield pb.AggregateShareMessage(header=header)
        data = acc.tobytes()
        for i in range(0, len(data), CHUNK):
            yield pb.AggregateShareMessage(chunk=data[i : i + CHUNK])


class FakeCluster:
    def __init__(self, n: int) -> None:
        self.parties = [FakeParty(i, self) for i in range(n)]
        self.servers: list[grpc.Server] = []
        addresses = []
        for party in self.parties:
            server = grpc.server(ThreadPoolExecutor(max_workers=8))
            pb_grpc.add_AggregationServicer_to_server(party, server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self.servers.append(server)
            addresses.append(f"127.0.0.1:{port}")
        self.config: ClusterConfig = make_cluster(
            addresses, limits=Limits(chunk_bytes=CHUNK, rpc_timeout_s=5.0)
        )

    def stop(self, index: int) -> None:
        self.parties[index].up = False
        self.servers[index].stop(None).wait(5)

    def stop_all(self) -> None:
        for i in range(len(self.servers)):
            self.stop(i)
