"""Train on load_digits across 5 Flower clients with mpcagg (3 servers, mutual TLS) and
again with plain Flower FedAvg on the same seeds; print accuracy and time per round.

    FLWR_TELEMETRY_ENABLED=0 python examples/flower/run.py --rounds 10 [--drop 4@2]

Everything runs on this machine: three mpcagg server processes on 127.0.0.1 and
Flower's simulation runtime in this process without Ray (``inprocess.py``).
``--save DIR`` writes ``secure.npz``/``plain.npz`` (every round's global model) and
``summary.json``.
"""

# ruff: noqa: E402  (the environment and sys.path are set before the imports below)
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # before flwr is imported
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "app")]  # inprocess.py; the Flower app's package

import inprocess
import numpy as np
from digits import client_app, server_app
from digits.server_app import FEDAVG, TRAINERS, History
from flwr.app import Context
from flwr.serverapp.strategy import FedAvg

from mpcagg import Collector
from mpcagg.flower import NodeCredentials, SecureAggregationMod, SecureFedAvg
from mpcagg.ops.local import LocalCluster

BOUND = 50.0  # |trained − global| per coordinate; this task's updates stay below 2
MAX_WEIGHT = 2000.0  # the largest partition has 462 examples
PRECISION_BITS = 16


def parse_drop(values: list[str]) -> set[tuple[int, int]]:
    out = set()
    for v in values:
        partition, _, server_round = v.partition("@")
        out.add((int(partition), int(server_round)))
    return out


def run_plain(rounds: int, drop: set[tuple[int, int]]) -> History:
    history = History()
    server = server_app.make(lambda: FedAvg(**FEDAVG), rounds, history)
    inprocess.run(server, client_app.make([], drop), TRAINERS)
    return history


def run_secure(
    rounds: int, drop: set[tuple[int, int]], workdir: Path
) -> tuple[History, list[object]]:
    history = History()
    reports: list[object] = []
    with LocalCluster(workdir / "cluster", 3, tls=True, log_level="WARNING") as cluster:

        def credentials(context: Context) -> NodeCredentials:
            files = cluster.client_kwargs(f"trainer-{context.node_config['partition-id']}")
            return NodeCredentials(str(cluster.cluster_file), str(files["cert"]), str(files["key"]))

        mod = SecureAggregationMod(credentials)
        collector_files = cluster.client_kwargs("collector", "collector")
        with Collector(cluster.config, **collector_files) as collector:

            def strategy() -> SecureFedAvg:
                s = SecureFedAvg(
                    collector,
                    bound=BOUND,
                    max_weight=MAX_WEIGHT,
                    precision_bits=PRECISION_BITS,
                    **FEDAVG,
                )
                s.reports = reports  # type: ignore[assignment]
                return s

            server = server_app.make(strategy, rounds, history)
            try:
                inprocess.run(server, client_app.make([mod], drop), TRAINERS)
            finally:
                mod.close()
    return history, reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--drop", action="append", default=[], help="PARTITION@ROUND")
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    drop = parse_drop(args.drop)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("mpcagg     :      %(message)s"))
    logging.getLogger("mpcagg.flower").addHandler(handler)
    logging.getLogger("mpcagg.flower").setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="mpcagg-flower-") as tmp:
        secure, reports = run_secure(args.rounds, drop, Path(tmp))
    plain = run_plain(args.rounds, drop)

    print("\nround  cohort  acc secure  acc plain  s/round secure  s/round plain  max|Δmodel|")
    for r in range(1, args.rounds + 1):
        diff = max(
            float(np.max(np.abs(secure.models[r][k] - plain.models[r][k]))) for k in plain.models[r]
        )
        rep = reports[r - 1]
        print(
            f"{r:5d}  {rep.cohort_size:6d}  {secure.accuracy[r]:10.4f}  {plain.accuracy[r]:9.4f}"
            f"  {secure.seconds_per_round[r - 1]:14.3f}  {plain.seconds_per_round[r - 1]:13.3f}"
            f"  {diff:11.2e}"
        )
        if rep.dropouts:
            print(f"       dropouts (node ids): {list(rep.dropouts)}")
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        for name, h in (("secure", secure), ("plain", plain)):
            flat = {f"r{r}/{k}": v for r, m in enumerate(h.models) for k, v in m.items()}
            np.savez(args.save / f"{name}.npz", **flat)  # type: ignore[arg-type]
        summary = {
            "rounds": args.rounds,
            "secure": {"accuracy": secure.accuracy, "seconds": secure.seconds_per_round},
            "plain": {"accuracy": plain.accuracy, "seconds": plain.seconds_per_round},
            "reports": [
                {
                    "round": rep.server_round,
                    "state": rep.state,
                    "cohort_size": rep.cohort_size,
                    "total_weight": rep.total_weight,
                    "sampled": len(rep.sampled),
                    "dropouts": len(rep.dropouts),
                    "failed": len(rep.failed),
                    "receipts_match_cohort": rep.receipts_match_cohort,
                }
                for rep in reports
            ],
        }
        (args.save / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
