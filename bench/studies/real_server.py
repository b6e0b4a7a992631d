"""Part 2 of the ingest study: uploads into a real party 0, its handler under cProfile.

The server (party 0 of a 3-party cluster, mutual TLS with client certificates, numpy
engine) runs in this process; with ``profile``, ``AggregationService.Upload`` is wrapped
from the outside so that each call runs under its own profiler, and the handler's time
is split into the stages of :data:`CATEGORIES` by matching profiler rows by function
name (so they describe the code they were written against).
"""

from __future__ import annotations

import cProfile
import functools
import pstats
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.studies.uploader import run_child

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
            r = run_child("server", args)
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
