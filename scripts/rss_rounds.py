"""Resident memory of each server across many committed rounds.

    python scripts/rss_rounds.py --rounds 100 --params 2000000 [--trainers 2] [--csv out.csv]

Starts a local three-party TLS cluster, runs ``--rounds`` rounds of ``--params`` ring
elements (each: open, every trainer submits, close, the collector fetches the result,
which streams every party's aggregate share from its file), and prints each party's
VmRSS after every ``--every`` rounds, then the growth between the first report after
warm-up and the last. A committed aggregate share is 8·params bytes: a server that kept
them in memory would grow by that much per round (1.6 GB over 100 rounds of 2·10⁶).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def rss_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Report:
    rounds: int
    params: int
    samples: list[tuple[int, list[int]]]  # (rounds done, RSS per party)
    seconds: float

    def growth(self, warmup: int) -> list[int]:
        """RSS growth per party from the first sample after ``warmup`` rounds to the last."""
        base = next(rss for done, rss in self.samples if done >= warmup)
        last = self.samples[-1][1]
        return [b - a for a, b in zip(base, last, strict=True)]


def measure(
    directory: Path,
    rounds: int,
    params: int,
    trainers: int = 2,
    every: int = 10,
    progress: bool = False,
) -> Report:
    from mpcagg import Collector, SecureAggregator, TensorLayout
    from mpcagg.ops.local import LocalCluster

    limits = {"max_vector_length": max(params, 1000), "rpc_timeout_s": 60.0, "min_cohort": 1}
    rng = np.random.default_rng(7)  # test data only
    layout = TensorLayout.from_shapes([("w", (params,))])
    samples: list[tuple[int, list[int]]] = []
    started = time.monotonic()
    with LocalCluster(directory, 3, limits=limits, log_level="WARNING") as cluster:
        config = cluster.config
        pids = [cluster.pid(p) for p in range(3)]
        samples.append((0, [rss_bytes(pid) for pid in pids]))
        ids = [f"rss-trainer-{k}" for k in range(trainers)]
        clients = [
            SecureAggregator(config, i, **cluster.client_kwargs(i), progress=False) for i in ids
        ]
        with Collector(config, **cluster.client_kwargs("collector", "collector")) as collector:
            for r in range(1, rounds + 1):
                round_id = f"rss-{r}"
                spec = collector.open_round(round_id, layout, min_clients=trainers, bound=10.0)
                for client in clients:
                    client.submit(spec, {"w": rng.uniform(-1, 1, params)})
                collector.close(round_id, wait_s=120)
                collector.result(round_id, spec)
                if r % every == 0 or r == rounds:
                    rss = [rss_bytes(pid) for pid in pids]
                    samples.append((r, rss))
                    if progress:
                        shown = "  ".join(f"{x / 2**20:8.1f}" for x in rss)
                        print(f"{r:6d}  {shown}", flush=True)
        for client in clients:
            client.disconnect()
    return Report(rounds, params, samples, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--params", type=int, default=2_000_000)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    print(f"{args.rounds} rounds of {args.params} parameters, {args.trainers} trainers, 3 parties")
    print(" round  RSS MiB: party 0   party 1   party 2")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        report = measure(
            Path(tmp), args.rounds, args.params, args.trainers, args.every, progress=True
        )
    growth = report.growth(min(args.warmup, args.rounds))
    held = args.params * 8 * (args.rounds - min(args.warmup, args.rounds)) / 2**20
    print(
        f"growth after round {args.warmup}: "
        + ", ".join(f"party {p} {g / 2**20:+.1f} MiB" for p, g in enumerate(growth))
        + f" (holding every aggregate in memory would add {held:.0f} MiB); "
        f"{report.seconds:.0f}s in all"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
