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

Parts: :mod:`bench.studies.uploader` (the child that uploads), :mod:`bench.studies.sink`,
:mod:`bench.studies.real_server`, :mod:`bench.studies.pipelines`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from bench.studies.real_server import server
from bench.studies.sink import sink

__all__ = ["main", "server", "sink"]


def main(argv: list[str] | None = None) -> None:
    """Run the four parts (see the module docstring); with ``--out``, write ``ingest.json``."""
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
