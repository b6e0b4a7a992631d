"""Part 1 of the ingest study: the transport's ceiling, a gRPC server that discards chunks.

TLS on (mutual, as on the real servers' client port) and off; chunks of 1, 2 and 4 MiB;
1, 2 and 4 parallel streams (fewer with ``quick``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from bench.studies.uploader import MiB, run_child


def _sink_server(tls: tuple[bytes, bytes] | None, ca: bytes | None) -> tuple[grpc.Server, int]:
    from mpcagg.v1 import aggregation_pb2 as pb

    def upload(requests: Iterator[Any], context: Any) -> Any:
        for _ in requests:
            pass
        return pb.UploadReceipt()

    handler = grpc.method_handlers_generic_handler(
        "mpcagg.bench.v1.Sink",
        {
            "Upload": grpc.stream_unary_rpc_method_handler(
                upload,
                request_deserializer=pb.UploadMessage.FromString,
                response_serializer=pb.UploadReceipt.SerializeToString,
            )
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(16), options=[("grpc.max_receive_message_length", 8 * MiB)]
    )
    server.add_generic_rpc_handlers((handler,))
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        # Mutual TLS, as on the real servers' client port.
        creds = grpc.ssl_server_credentials([tls], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def sink(creds: Any, dim: int, uploads: int, quick: bool) -> list[dict[str, Any]]:
    """One row per (TLS, chunk size, streams): GB/s and CPU s/GB of server and client."""
    rows = []
    key_cert = (creds.parties[0].key.read_bytes(), creds.parties[0].cert.read_bytes())
    ca = creds.ca_cert.read_bytes()
    client = creds.collector.load()
    chunks = (2,) if quick else (1, 2, 4)
    streams = (1, 2) if quick else (1, 2, 4)
    for tls in (True, False):
        server, port = _sink_server(key_cert if tls else None, ca)
        try:
            for chunk_mib in chunks:
                for s in streams:
                    args = {
                        "address": f"127.0.0.1:{port}",
                        "ca": ca if tls else None,
                        "client_cert": client.cert_pem,
                        "client_key": client.key_pem,
                        "dim": dim,
                        "uploads": uploads,
                        "streams": s,
                        "chunk_bytes": chunk_mib * MiB,
                    }
                    r = run_child("sink", args)
                    rows.append({"tls": tls, "chunk_mib": chunk_mib, "streams": s, **r})
                    print(
                        f"  sink tls={tls!s:5} chunk {chunk_mib} MiB streams {s}: "
                        f"{r['gb_per_s']:.2f} GB/s; CPU s/GB: server "
                        f"{r['server_cpu_s_per_gb']:.2f}, client {r['client_cpu_s_per_gb']:.2f}"
                    )
        finally:
            server.stop(0)
    return rows
