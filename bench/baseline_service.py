"""The plaintext baseline's servicer: rounds keyed by id, each one accumulator.

Service ``mpcagg.bench.v1.PlainAggregation`` on generic handlers (no new proto), the
message types of the real servers with ``kind = FULL``; see :mod:`bench.baseline` for
what it is compared against. Each caller is identified by its verified client
certificate, as on the real servers; with ``durable_dir`` each upload is spooled and
fsync'ed (the real servers' :class:`servers.storage.SpoolWriter`) before it is
acknowledged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np

from mpcagg.mpc.ring import DTYPE
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.identity import client_from_auth_context
from mpcagg.servers.storage import SpoolWriter
from mpcagg.v1 import aggregation_pb2 as pb

SERVICE = "mpcagg.bench.v1.PlainAggregation"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: abort raises")


@dataclass
class _PlainRound:
    acc: np.ndarray
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: int = 0
    closed: bool = False


class PlainAggregation:
    """The servicer: rounds keyed by id, each one uint64 accumulator."""

    def __init__(self, enforcing: bool, limits: Limits, durable_dir: Path | None = None) -> None:
        self._enforcing = enforcing
        self._limits = limits
        self._durable_dir = durable_dir
        self._rounds: dict[str, _PlainRound] = {}
        self._lock = threading.Lock()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler of :data:`SERVICE`: ``Upload``, ``UploadFloat32``, their
        one-message forms ``UploadWhole`` and ``UploadWholeFloat32``, ``Close``, ``GetSum``."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Upload": grpc.stream_unary_rpc_method_handler(
                    self.upload,
                    request_deserializer=pb.UploadMessage.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "UploadFloat32": grpc.stream_unary_rpc_method_handler(
                    self.upload_float32,
                    request_deserializer=pb.UploadMessage.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "UploadWhole": grpc.unary_unary_rpc_method_handler(
                    self.upload_whole,
                    request_deserializer=pb.UploadRequest.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "UploadWholeFloat32": grpc.unary_unary_rpc_method_handler(
                    self.upload_whole_float32,
                    request_deserializer=pb.UploadRequest.FromString,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
                "Close": grpc.unary_unary_rpc_method_handler(
                    self.close,
                    request_deserializer=pb.GetRoundRequest.FromString,
                    response_serializer=pb.RoundStatus.SerializeToString,
                ),
                "GetSum": grpc.unary_stream_rpc_method_handler(
                    self.get_sum,
                    request_deserializer=pb.GetAggregateShareRequest.FromString,
                    response_serializer=pb.AggregateShareMessage.SerializeToString,
                ),
            },
        )

    def _identify(self, context: grpc.ServicerContext) -> str | None:
        """The caller's id from its verified client certificate, as the real servers do."""
        if not self._enforcing:
            return None
        ident = client_from_auth_context(context.auth_context())
        if ident is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return ident.client_id

    def upload(
        self, requests: Iterator[pb.UploadMessage], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        """``Upload``: a FULL header, then chunks of uint64 ring elements added into the
        round's accumulator (created by the first upload). Aborts INVALID_ARGUMENT for a bad
        header, length or chunk, PERMISSION_DENIED when the certificate names another
        client, FAILED_PRECONDITION when the round is closed or has another length."""
        return self._upload(_header(requests), (m.chunk for m in requests), context, DTYPE)

    def upload_float32(
        self, requests: Iterator[pb.UploadMessage], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        """``UploadFloat32``: as :meth:`upload`, with raw float32 chunks summed in float32."""
        dtype = np.dtype("<f4")
        return self._upload(_header(requests), (m.chunk for m in requests), context, dtype)

    def upload_whole(
        self, request: pb.UploadRequest, context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        """``UploadWhole``: :meth:`upload` in one message (the real servers' ``UploadWhole``)."""
        return self._upload(request.header, [request.data], context, DTYPE)

    def upload_whole_float32(
        self, request: pb.UploadRequest, context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        """``UploadWholeFloat32``: :meth:`upload_float32` in one message."""
        return self._upload(request.header, [request.data], context, np.dtype("<f4"))

    def _upload(
        self,
        h: pb.UploadHeader | None,
        chunks: Iterable[bytes],
        context: grpc.ServicerContext,
        dtype: np.dtype,
    ) -> pb.UploadReceipt:
        caller = self._identify(context)
        if h is None or h.kind != pb.FULL:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expected a FULL upload header")
        if caller is not None and caller != h.client_id:
            _abort(context, grpc.StatusCode.PERMISSION_DENIED, "certificate names another client")
        if not 0 < h.length <= self._limits.max_vector_length:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad length {h.length}")
        with self._lock:
            rnd = self._rounds.get(h.round_id)
            if rnd is None:
                rnd = self._rounds[h.round_id] = _PlainRound(np.zeros(h.length, dtype=dtype))
        if rnd.closed or len(rnd.acc) != h.length or rnd.acc.dtype != dtype:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "round closed or length differs")
        size = dtype.itemsize
        spool = (
            _open_spool(self._durable_dir, h.round_id, h.client_id) if self._durable_dir else None
        )
        offset = 0
        for chunk in chunks:
            n = len(chunk) // size
            if len(chunk) % size or offset + n > h.length:
                _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "chunk beyond the declared length"
                )
            if spool is not None:
                spool.write_at(chunk, offset * size)
            part = np.frombuffer(chunk, dtype=dtype)
            with rnd.lock:  # np.add releases the GIL: concurrent adds must not interleave
                target = rnd.acc[offset : offset + n]
                np.add(target, part, out=target)
            offset += n
        if offset != h.length:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "upload shorter than declared")
        if spool is not None:
            spool.sync()
            spool.publish()
        with rnd.lock:
            rnd.received += 1
        return pb.UploadReceipt(round_id=h.round_id, client_id=h.client_id, party=0)

    def close(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundStatus:
        """``Close``: stop accepting uploads; the status counts those summed. Aborts
        NOT_FOUND for an unknown round."""
        self._identify(context)
        with self._lock:
            rnd = self._rounds.get(request.round_id)
        if rnd is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"unknown round {request.round_id!r}")
        with rnd.lock:
            rnd.closed = True
            received = rnd.received
        return pb.RoundStatus(
            round_id=request.round_id, state=pb.COMMITTED, received=received, cohort_size=received
        )

    def get_sum(
        self, request: pb.GetAggregateShareRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateShareMessage]:
        """``GetSum``: a header, then the sum in ``chunk_bytes`` chunks; the round (and its
        spool) is forgotten. FAILED_PRECONDITION for a round unknown or not closed."""
        self._identify(context)
        with self._lock:
            rnd = self._rounds.pop(request.round_id, None)
        if rnd is None or not rnd.closed:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "round unknown or not closed")
        if self._durable_dir is not None:
            _sweep(self._durable_dir, request.round_id)
        yield pb.AggregateShareMessage(
            header=pb.AggregateShareHeader(
                round_id=request.round_id,
                party=0,
                length=len(rnd.acc),
                cohort_size=rnd.received,
            )
        )
        raw = rnd.acc.data.cast("B")
        step = self._limits.chunk_bytes
        for start in range(0, len(raw), step):
            yield pb.AggregateShareMessage(chunk=bytes(raw[start : start + step]))


def _header(requests: Iterator[pb.UploadMessage]) -> pb.UploadHeader | None:
    """The stream's first message's header (None if it starts with a chunk or is empty)."""
    first = next(requests, None)
    return first.header if first is not None and first.WhichOneof("body") == "header" else None


def _open_spool(root: Path, round_id: str, client_id: str) -> SpoolWriter:
    """The real servers' durable writer: write, fsync, rename, directory fsync."""
    directory = root / round_id
    directory.mkdir(parents=True, exist_ok=True)
    return SpoolWriter(directory / f"{client_id}.full", directory / f"{client_id}.tmp")


def _sweep(root: Path, round_id: str) -> None:
    directory = root / round_id
    if directory.is_dir():
        for path in directory.iterdir():
            path.unlink(missing_ok=True)
        directory.rmdir()
