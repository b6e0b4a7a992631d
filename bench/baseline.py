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

This module is the server process (:func:`serve`, :func:`main`) and the baseline's
public face; the parts live in :mod:`bench.baseline_service` (the servicer),
:mod:`bench.baseline_process` (the child process and its credentials) and
:mod:`bench.baseline_calls` (the client calls), all re-exported here.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc

from bench.baseline_calls import close, fetch_sum, upload, upload_stream
from bench.baseline_process import BaselineCredentials, BaselineServer
from bench.baseline_service import SERVICE, PlainAggregation
from mpcagg.protocol.cluster import Limits
from mpcagg.servers.upload import unmap_large_allocations

__all__ = [
    "SERVICE",
    "BaselineCredentials",
    "BaselineServer",
    "PlainAggregation",
    "close",
    "fetch_sum",
    "main",
    "serve",
    "upload",
    "upload_stream",
]


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
    """``python -m bench.baseline``: parse ``argv`` (default ``sys.argv[1:]``) and :func:`serve`."""
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca", help="verifies client certificates (with --cert, --key)")
    parser.add_argument("--durable-dir")
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
