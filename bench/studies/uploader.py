"""The client side of the ingest study: uploads driven from a child process.

:func:`run_child` spawns a process that uploads ``uploads`` full shares over ``streams``
parallel threads (the first one a warm-up, not counted), either to the sink server
(:mod:`bench.studies.sink`) or through the real client transport to party 0
(:mod:`bench.studies.real_server`), and measures GB/s and CPU seconds per GB on both
sides.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np

MiB = 1 << 20
SINK = "/mpcagg.bench.v1.Sink/Upload"


def _drive(kind: str, args: dict[str, Any], queue: Any) -> None:
    """Child process: ``streams`` threads upload ``uploads`` vectors; reports GB/s."""
    from mpcagg import ClientCredentials
    from mpcagg.clients.transport import Transport
    from mpcagg.mpc import FullShare
    from mpcagg.mpc.ring import DTYPE
    from mpcagg.v1 import aggregation_pb2 as pb
    from mpcagg.wire import framing as wire

    vec = np.random.default_rng(1).integers(0, 2**63, args["dim"], dtype=np.uint64).astype(DTYPE)
    upload = wire.PartyUpload.from_share(FullShare(party=0, vector=vec))
    chunk = args["chunk_bytes"]

    def messages(i: int) -> Iterator[Any]:
        return wire.upload_messages(
            upload,
            round_id=args.get("round_id", "sink"),
            client_id=f"ingest-{i:04d}",
            sharing_id=secrets.token_bytes(16),
            chunk_bytes=chunk,
        )

    if kind == "sink":
        options = [("grpc.max_send_message_length", 8 * MiB)]
        ca = args.get("ca")
        tls = (
            grpc.ssl_channel_credentials(ca, args["client_key"], args["client_cert"])
            if ca
            else None
        )
        channels = [
            grpc.secure_channel(args["address"], tls, options=options)
            if tls is not None
            else grpc.insecure_channel(args["address"], options=options)
            for _ in range(args["streams"])
        ]

        def send(i: int) -> None:
            call = channels[i % len(channels)].stream_unary(
                SINK,
                request_serializer=pb.UploadMessage.SerializeToString,
                response_deserializer=pb.UploadReceipt.FromString,
            )
            call(messages(i), timeout=600)

    else:
        transports = [
            Transport(args["cluster"], cert=ClientCredentials(*args["clients"][i]))
            for i in range(args["uploads"])
        ]

        def send(i: int) -> None:
            transports[i].upload(0, messages(i))

    send(0)  # warm-up: connection, TLS handshake, first-call costs (not counted)
    n = args["uploads"]
    cpu0 = sum(os.times()[:2])
    t0 = time.perf_counter()
    with futures.ThreadPoolExecutor(args["streams"]) as pool:
        list(pool.map(send, range(1, n)))
    wall = time.perf_counter() - t0
    client_cpu = sum(os.times()[:2]) - cpu0
    nbytes = (n - 1) * vec.nbytes
    queue.put({"wall_s": wall, "bytes": nbytes, "client_cpu_s_per_gb": client_cpu / nbytes * 1e9})


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Drive uploads from a child process; adds this (server) process's CPU per GB."""
    cpu0 = os.times()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_drive, args=(kind, args, queue))
    proc.start()
    try:
        result: dict[str, Any] = queue.get(timeout=900)
    finally:
        proc.join(timeout=30)
    result["gb_per_s"] = result["bytes"] / result["wall_s"] / 1e9
    # Includes the warm-up upload (one of ``uploads``), hence the larger denominator.
    total = result["bytes"] * args["uploads"] / (args["uploads"] - 1)
    cpu1 = os.times()
    result["server_user_s_per_gb"] = (cpu1.user - cpu0.user) / total * 1e9
    result["server_sys_s_per_gb"] = (cpu1.system - cpu0.system) / total * 1e9
    result["server_cpu_s_per_gb"] = result["server_user_s_per_gb"] + result["server_sys_s_per_gb"]
    return result
