"""The two engines side by side on the server's accumulate path.

``engine.accumulate(acc, share)`` for a full share (a uint64 vector) and a seed share
(expanded by AES-CTR inside the engine), numpy and CrypTen, at each d: the median of
``repeats`` timed calls after two untimed ones. CrypTen runs single-party (gloo on
loopback, file rendezvous), so this runs in a child process
(``python -m bench.engines``) and the benchmark process never initialises
``torch.distributed``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("numpy", "crypten")


def measure(dims: list[int], repeats: int) -> list[dict[str, Any]]:
    """Time every (engine, share kind, d); an engine that cannot load gives an error row."""
    import numpy as np

    import mpcagg.mpc as mpc

    rows: list[dict[str, Any]] = []
    engines: dict[str, Any] = {}
    for name in ENGINES:
        try:
            engines[name] = mpc.get_engine(name)
        except mpc.MpcError as exc:
            rows.append({"engine": name, "error": str(exc)})
    for d in dims:
        values = np.random.default_rng(0).standard_normal(d, dtype=np.float32) * np.float32(0.01)
        encoded = mpc.FixedPoint(16).encode(values)
        seeds = [mpc.Seed(hashlib.sha256(b"bench-engine-%d" % i).digest()) for i in range(2)]
        context = mpc.SharingContext(round_id="bench-engines", client_id="bench")
        shares = mpc.share(encoded, 3, 0, seeds, context)
        for name, engine in engines.items():
            for kind, share in (("full", shares[0]), ("seed", shares[1])):
                acc = engine.zeros(d)
                for _ in range(2):  # first calls: allocation, thread pools, caches
                    acc = engine.accumulate(acc, share)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    acc = engine.accumulate(acc, share)
                    times.append(time.perf_counter() - t)
                median = statistics.median(times)
                rows.append(
                    {
                        "engine": name,
                        "kind": kind,
                        "d": d,
                        "repeats": repeats,
                        "median_s": median,
                        "min_s": min(times),
                        "gb_per_s": 8 * d / median / 1e9,
                    }
                )
    return rows


def run(dims: list[int], repeats: int, timeout: float = 600.0) -> list[dict[str, Any]]:
    """:func:`measure` in a child process (CrypTen single-party); returns its rows."""
    with tempfile.TemporaryDirectory(prefix="mpcagg-engines-") as tmp:
        out = Path(tmp) / "engines.json"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            DISTRIBUTED_BACKEND="gloo",
            RENDEZVOUS=f"file://{tmp}/rdv",
            WORLD_SIZE="1",
            RANK="0",
            GLOO_SOCKET_IFNAME="lo",
        )
        cmd = [sys.executable, "-m", "bench.engines", "--out", str(out), "--repeats", str(repeats)]
        cmd += ["--dims", *map(str, dims)]
        proc = subprocess.run(
            cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not out.exists():
            return [{"engine": "*", "error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}]
        rows: list[dict[str, Any]] = json.loads(out.read_text())
        return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__)
    parser.add_argument("--dims", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write JSON rows here (default: stdout)")
    args = parser.parse_args(argv)
    rows = measure(args.dims, args.repeats)
    text = json.dumps(rows, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
