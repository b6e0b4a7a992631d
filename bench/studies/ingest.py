"""Where a server's ingest time goes: ``python -m bench.studies.ingest [--quick] [--out DIR]``.

Three measurements, all on loopback with the client in a child process:

1. ``sink``: a gRPC server that discards upload chunks — the ceiling of the transport
   itself (TLS on and off; chunk size 1, 2, 4 MiB; 1, 2, 4 parallel streams).
2. ``server``: the real aggregation server (party 0 of a 3-party cluster, mutual TLS
   with client certificates, numpy engine) started in this process, receiving full
   shares through the real client wire path; each ``Upload`` call runs under its own
   cProfile, so the handler's time splits into receiving (gRPC: TLS, HTTP/2, protobuf
   parse and the wait for the client), SHA-256, the copy into the upload buffer, the
   spool write, fsync, publish (rename + directory fsync), SQLite and the accumulate.
3. ``stages``: each stage alone on 2 MiB chunks (SHA-256, memcpy, page-cache write,
   write + fsync), the ceilings the server path runs into.
4. ``pipelines``: the handler's per-upload work without the network, as it is and
   with the alternatives suggested (spool as mmap, fallocate, a writer thread).

Nothing here changes the server: the profiler wraps ``AggregationService.Upload``
from the outside.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import logging
import multiprocessing as mp
import os
import pstats
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

MiB = 1 << 20
SINK = "/mpcagg.bench.v1.Sink/Upload"


# --------------------------------------------------------------------------- client (child)


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


def _run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- 1. sink


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
                    r = _run_child("sink", args)
                    rows.append({"tls": tls, "chunk_mib": chunk_mib, "streams": s, **r})
                    print(
                        f"  sink tls={tls!s:5} chunk {chunk_mib} MiB streams {s}: "
                        f"{r['gb_per_s']:.2f} GB/s; CPU s/GB: server "
                        f"{r['server_cpu_s_per_gb']:.2f}, client {r['client_cpu_s_per_gb']:.2f}"
                    )
        finally:
            server.stop(0)
    return rows


# --------------------------------------------------------------------------- 2. real server

PROFILES: list[cProfile.Profile] = []
_LOCK = threading.Lock()


def _profiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        prof = cProfile.Profile()
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
            with _LOCK:
                PROFILES.append(prof)

    return wrapper


# (label, predicate on (file, function name), use cumulative time?)
CATEGORIES: list[tuple[str, Callable[[str, str], bool], bool]] = [
    ("receive: wait for + parse the next chunk (gRPC)",
     lambda f, n: n == "__next__" and "grpc" in f, True),
    ("sha256", lambda f, n: "update" in n and "HASH" in n, False),
    ("copy into the upload buffer (UploadSession._write)",
     lambda f, n: n == "_write" and ("upload" in f or "aggregator" in f), False),
    ("spool write (os.write)", lambda f, n: n == "<built-in method posix.write>", False),
    ("fsync (file and directory)", lambda f, n: n == "<built-in method posix.fsync>", False),
    ("rename (os.replace)", lambda f, n: n == "<built-in method posix.replace>", False),
    ("sqlite", lambda f, n: "sqlite3.Connection" in n, False),
    ("accumulate (engine)", lambda f, n: n == "accumulate" and "engine" in f, True),
    ("round lock waits", lambda f, n: "acquire" in n and "RLock" in n, False),
]  # fmt: skip


def _categorize(stats: pstats.Stats, total: float) -> list[dict[str, Any]]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = []
    for label, match, cumulative in CATEGORIES:
        seconds = 0.0
        for (file, _line, name), (_cc, _nc, tt, ct, _callers) in raw.items():
            if match(file, name):
                seconds += ct if cumulative else tt
        rows.append(
            {"stage": label, "seconds": seconds, "fraction": seconds / total if total else 0}
        )
    return rows


def server(
    creds: Any,
    workdir: Path,
    dim: int,
    uploads: int,
    streams_list: tuple[int, ...],
    *,
    profile: bool,
) -> dict[str, Any]:
    """Uploads into a real party 0; with ``profile``, each Upload call under cProfile."""
    from mpcagg.clients.transport import Transport
    from mpcagg.ops.credentials import issue_client_cert, load_key_pair
    from mpcagg.protocol.cluster import ClusterConfig, PartyConfig, TlsConfig, dump_cluster
    from mpcagg.protocol.spec import RoundSpec, TensorSpec
    from mpcagg.servers.server import create_server
    from mpcagg.servers.service import AggregationService

    workdir = workdir / ("profiled" if profile else "unprofiled")
    original = AggregationService.Upload
    if profile:  # before start: the servicer's methods are bound at registration
        AggregationService.Upload = _profiled(original)  # type: ignore[method-assign]
    parties = [
        PartyConfig(
            id=i,
            address="127.0.0.1:0",
            peer_address="127.0.0.1:0",
            data_dir=workdir / f"party-{i}",
            cert=creds.parties[i].cert,
            key=creds.parties[i].key,
        )
        for i in range(3)
    ]
    config = ClusterConfig(
        name="ingest",
        tls=TlsConfig(ca=creds.ca_cert),
        parties=parties,
    )
    ca = load_key_pair(creds.ca_cert, creds.ca_key)
    results: dict[str, Any] = {"runs": []}
    running = create_server(config, 0)
    try:
        live = config.model_copy(
            update={
                "parties": [
                    parties[0].model_copy(update={"address": f"127.0.0.1:{running.port}"}),
                    *parties[1:],
                ]
            }
        )
        cluster_file = workdir / "cluster.toml"
        cluster_file.write_text(dump_cluster(live))
        collector = Transport(cluster_file, cert=creds.collector.cert, key=creds.collector.key)
        for k, streams in enumerate(streams_list):
            rid = f"ingest-{k}"
            spec = RoundSpec(
                round_id=rid,
                tensors=(TensorSpec("w", (dim,)),),
                n_parties=3,
                precision_bits=16,
                bound=1.0,
                min_clients=2,
                max_clients=uploads,
                deadline_unix=0.0,
                trainers_may_fetch=False,
            )
            collector.create_round(0, spec)
            PROFILES.clear()
            args = {
                "cluster": str(cluster_file),
                "clients": [  # (cert PEM, key PEM): picklable for the child process
                    (pair.cert_pem, pair.key_pem)
                    for pair in (
                        issue_client_cert(ca, f"ingest-{i:04d}", "trainer") for i in range(uploads)
                    )
                ],
                "round_id": rid,
                "dim": dim,
                "uploads": uploads,
                "streams": streams,
                "chunk_bytes": config.limits.chunk_bytes,
            }
            r = _run_child("server", args)
            label = "profiled" if profile else "unprofiled"
            print(
                f"  real server ({label}), {streams} stream(s): {r['gb_per_s']:.2f} GB/s; "
                f"CPU s/GB: server {r['server_user_s_per_gb']:.2f} user + "
                f"{r['server_sys_s_per_gb']:.2f} sys, client {r['client_cpu_s_per_gb']:.2f}"
            )
            if not profile:
                results["runs"].append({"streams": streams, **r})
                continue
            measured = PROFILES[1:]  # the first upload is the warm-up
            stats = pstats.Stats(measured[0])
            for prof in measured[1:]:
                stats.add(prof)
            handler = sum(
                ct
                for (f, _l, n), (_a, _b, _t, ct, _c) in stats.stats.items()  # type: ignore[attr-defined]
                if n == "Upload" and "service" in f
            )
            run = {
                "streams": streams,
                **r,
                "handler_s": handler,
                "stages": _categorize(stats, handler),
            }
            results["runs"].append(run)
            for st in run["stages"]:
                print(
                    f"    {st['stage']:<52} {st['seconds']:7.3f} s  {100 * st['fraction']:5.1f} %"
                )
        collector.close()
    finally:
        running.stop()
        AggregationService.Upload = original  # type: ignore[method-assign]
    return results


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.studies.ingest", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer sink variants, smaller data")
    parser.add_argument("--out", type=Path, help="write ingest.json here")
    parser.add_argument("--dim", type=int, default=10**7, help="elements per upload (8 bytes each)")
    parser.add_argument(
        "--uploads", type=int, default=9, help="uploads per measurement (1 warm-up)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from mpcagg.ops.credentials import provision_dev

    dim = args.dim // 4 if args.quick else args.dim
    with tempfile.TemporaryDirectory(prefix="mpcagg-ingest-") as tmp:
        work = Path(tmp)
        creds = provision_dev(work / "certs", 3)
        print(f"ingest: {args.uploads - 1} uploads of {8 * dim / 1e6:.0f} MB each per measurement")
        print("1. transport ceiling (sink server):")
        out: dict[str, Any] = {"dim": dim, "uploads": args.uploads}
        out["sink"] = sink(creds, dim, args.uploads, args.quick)
        print("2. the real server (party 0): rates, then the Upload handler under cProfile:")
        streams = (1, 2) if args.quick else (1, 2, 4)
        out["server"] = server(creds, work, dim, args.uploads, streams, profile=False)
        out["server_profiled"] = server(creds, work, dim, args.uploads, streams, profile=True)
        from bench.studies.pipelines import pipelines, stages

        print("3. stages alone:")
        out["stages"] = stages(work)
        print(f"4. the server's per-upload work, {8 * dim / 1e6:.0f} MB uploads, no network:")
        out["pipelines"] = pipelines(work, 8 * dim)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ingest.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
