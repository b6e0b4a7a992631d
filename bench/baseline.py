"""The plaintext baseline: one gRPC server that sums trainers' int64 fixed-point vectors.

What secure aggregation is compared against: the same gRPC stack (grpcio, mutual TLS
with a development CA: each trainer and the collector presents its client certificate,
whose identity is checked per call, the same message types
``UploadMessage``/``AggregateShareMessage`` with ``kind = FULL``, the same chunk
size and server options), but one server, no secret sharing, no digests, no
cohort agreement. By default nothing is written to disk (what a plain in-memory
aggregation server does); ``--durable-dir`` spools and fsyncs each upload before
acknowledging it, as the real servers do, to separate the cost of durability from
the cost of security.

Service ``mpcagg.bench.v1.PlainAggregation`` (generic handlers, no new proto):

- ``Upload(stream UploadMessage) -> UploadReceipt``: header (kind FULL) then chunks,
  added in place into the round's uint64 accumulator (created on first upload).
- ``UploadFloat32``: the same with the raw float32 update (4 bytes per parameter, no
  encoding), summed in float32: what a plain federated-averaging server receives.
- ``Close(GetRoundRequest) -> RoundStatus``: stop accepting; ``received`` uploads.
- ``GetSum(GetAggregateShareRequest) -> stream AggregateShareMessage``: the sum,
  chunked like ``GetAggregateShare``; the round is forgotten afterwards.

Run as ``python -m bench.baseline --port-file F [--ca … --cert … --key …]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import grpc
import numpy as np
import numpy.typing as npt

from mpcagg.mpc.ring import DTYPE
from mpcagg.ops.credentials import KeyPair, issue_client_cert, load_key_pair, provision_dev
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.identity import check_role, client_from_auth_context
from mpcagg.servers.storage import SpoolWriter
from mpcagg.servers.upload import unmap_large_allocations
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.framing import chunk_message_bytes

SERVICE = "mpcagg.bench.v1.PlainAggregation"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- server side


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
        return self._upload(requests, context, DTYPE)

    def upload_float32(
        self, requests: Iterator[pb.UploadMessage], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        return self._upload(requests, context, np.dtype("<f4"))

    def _upload(
        self, requests: Iterator[pb.UploadMessage], context: grpc.ServicerContext, dtype: np.dtype
    ) -> pb.UploadReceipt:
        caller = self._identify(context)
        first = next(requests, None)
        if first is None or first.WhichOneof("body") != "header" or first.header.kind != pb.FULL:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "expected a FULL upload header")
        h = first.header
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
        for msg in requests:
            chunk = msg.chunk
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


def serve(args: argparse.Namespace) -> None:
    """Run the baseline server until SIGTERM."""
    unmap_large_allocations()  # as the real servers do (chunks go back to the system)
    limits = Limits()
    options = [
        ("grpc.max_send_message_length", limits.max_message_bytes),
        ("grpc.max_receive_message_length", limits.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.max_concurrent_streams + 8),
        options=options,
        maximum_concurrent_rpcs=limits.max_concurrent_streams,
    )
    durable = Path(args.durable_dir) if args.durable_dir else None
    tls = bool(args.cert)
    server.add_generic_rpc_handlers((PlainAggregation(tls, limits, durable).handler(),))
    if tls:
        creds = grpc.ssl_server_credentials(
            [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())],
            root_certificates=Path(args.ca).read_bytes(),
            require_client_auth=True,
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file = Path(args.port_file)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(grace=2).wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca", help="verifies client certificates (with --cert, --key)")
    parser.add_argument("--durable-dir")
    serve(parser.parse_args(argv))


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True)
class BaselineCredentials:
    """TLS material of the baseline server (a dev CA of its own) and its clients."""

    ca: bytes
    ca_cert: Path
    cert: Path
    key: Path
    _ca_pair: KeyPair = field(repr=False)
    _clients: dict[tuple[str, str], KeyPair] = field(default_factory=dict, repr=False)

    @classmethod
    def provision(cls, directory: Path) -> BaselineCredentials:
        creds = provision_dev(directory, 1)
        return cls(
            ca=creds.ca_cert.read_bytes(),
            ca_cert=creds.ca_cert,
            cert=creds.parties[0].cert,
            key=creds.parties[0].key,
            _ca_pair=load_key_pair(creds.ca_cert, creds.ca_key),
        )

    def client(self, client_id: str, role: str = "trainer") -> KeyPair:
        """A client certificate from the baseline's CA (issued once, in memory)."""
        pair = self._clients.get((client_id, role))
        if pair is None:
            pair = issue_client_cert(self._ca_pair, client_id, check_role(role))
            self._clients[client_id, role] = pair
        return pair


class BaselineServer:
    """The baseline server process (use as a context manager)."""

    def __init__(
        self, directory: Path, creds: BaselineCredentials | None, durable: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.creds = creds
        self.durable = durable
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> BaselineServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "baseline.port"
        port_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "bench.baseline", "--port-file", str(port_file)]
        if self.creds is not None:
            cmd += ["--cert", str(self.creds.cert), "--key", str(self.creds.key)]
            cmd += ["--ca", str(self.creds.ca_cert)]
        if self.durable:
            cmd += ["--durable-dir", str(self.directory / "spool")]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        log = open(self.directory / "baseline.log", "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log_text = (self.directory / "baseline.log").read_text(errors="replace")
                raise RuntimeError(f"the baseline server did not start; log:\n{log_text[-3000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])
        channel = self.channel(self.creds.client("collector", "collector") if self.creds else None)
        try:
            grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 1))
        finally:
            channel.close()

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def channel(self, client: KeyPair | None, address: str | None = None) -> grpc.Channel:
        """A new channel presenting ``client``'s certificate (one per trainer, as each secure
        trainer dials its own)."""
        limit = Limits().max_message_bytes
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ]
        target = address or self.address
        if self.creds is None:
            return grpc.insecure_channel(target, options=options)
        if client is None:
            raise ValueError("the baseline server requires a client certificate (mutual TLS)")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.creds.ca,
            private_key=client.key_pem,
            certificate_chain=client.cert_pem,
        )
        return grpc.secure_channel(target, credentials, options=options)


def upload_stream(
    round_id: str, client_id: str, vector: np.ndarray, chunk_bytes: int
) -> Iterator[pb.UploadMessage]:
    """The baseline upload: a FULL header, then the vector's bytes in ``chunk_bytes`` chunks
    (as :func:`clients.wire.upload_messages` chunks a full share)."""
    yield pb.UploadMessage(
        header=pb.UploadHeader(
            round_id=round_id, client_id=client_id, party=0, kind=pb.FULL, length=len(vector)
        )
    )
    data = vector.data.cast("B")
    for start in range(0, len(data), chunk_bytes):
        yield pb.UploadMessage(chunk=bytes(data[start : start + chunk_bytes]))


def upload(
    channel: grpc.Channel,
    round_id: str,
    client_id: str,
    vector: np.ndarray,
    chunk_bytes: int,
    timeout: float = 120.0,
) -> int:
    """Upload one trainer's vector (uint64 fixed point, or float32 as it is); returns the
    serialized bytes of the messages sent."""
    raw = vector.nbytes
    header = pb.UploadMessage(
        header=pb.UploadHeader(
            round_id=round_id, client_id=client_id, party=0, kind=pb.FULL, length=len(vector)
        )
    )
    # Counted from the sizes: upb's ByteSize serializes a message to measure it.
    sent = header.ByteSize() + sum(
        chunk_message_bytes(min(chunk_bytes, raw - start)) for start in range(0, raw, chunk_bytes)
    )

    method = "UploadFloat32" if vector.dtype == np.float32 else "Upload"
    call = channel.stream_unary(
        f"/{SERVICE}/{method}",
        request_serializer=pb.UploadMessage.SerializeToString,
        response_deserializer=pb.UploadReceipt.FromString,
    )
    call(upload_stream(round_id, client_id, vector, chunk_bytes), timeout=timeout)
    return sent


def close(channel: grpc.Channel, round_id: str) -> int:
    """Close the round; returns how many uploads the server summed."""
    call = channel.unary_unary(
        f"/{SERVICE}/Close",
        request_serializer=pb.GetRoundRequest.SerializeToString,
        response_deserializer=pb.RoundStatus.FromString,
    )
    reply = call(pb.GetRoundRequest(round_id=round_id), timeout=60)
    return int(reply.received)


def fetch_sum(channel: grpc.Channel, round_id: str, dtype: npt.DTypeLike = DTYPE) -> np.ndarray:
    """The round's sum (ring elements, or float32 for an ``UploadFloat32`` round); the
    round is forgotten by the server."""
    call = channel.unary_stream(
        f"/{SERVICE}/GetSum",
        request_serializer=pb.GetAggregateShareRequest.SerializeToString,
        response_deserializer=pb.AggregateShareMessage.FromString,
    )
    stream = call(pb.GetAggregateShareRequest(round_id=round_id), timeout=120)
    out: np.ndarray | None = None
    offset = 0
    for msg in stream:
        if msg.WhichOneof("body") == "header":
            out = np.empty(msg.header.length, dtype=dtype)
        else:
            assert out is not None, "the sum stream starts with a header"
            raw = out.data.cast("B")
            chunk = msg.chunk  # each access copies the bytes out of the message
            raw[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
    assert out is not None and offset == out.nbytes, "incomplete sum stream"
    return out


if __name__ == "__main__":
    main()
