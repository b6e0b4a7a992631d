"""One cell of the grid: secure and plaintext rounds of (N, d, n), and the cell's entry.

:func:`run_cell` starts a fresh :class:`servers.local.LocalCluster` (n server processes,
mutual TLS with client certificates, numpy engine) beside the baseline server the run
shares; warm-up rounds of each mode, the first one through counting relays
(:mod:`bench.wireprobe`), then the measured rounds, the modes alternating. The entry it
returns holds the summaries (:func:`bench.report.summarize`), the bytes on the wire and
the exactness check; :func:`skipped` is the entry of a cell not run.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.baseline import BaselineCredentials, BaselineServer
from bench.certs import cluster_issuer
from bench.grid import Cell, Plan
from bench.procstats import ProcessMeter
from bench.rounds import PlainRounds, RoundTiming, SecureRounds, TrainerInputs
from bench.wireprobe import CountingRelay
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.cluster import ClusterConfig


def run_cell(
    cell: Cell,
    plan: Plan,
    tmp: Path,
    plain_server: BaselineServer,
    creds: BaselineCredentials,
    pool: ThreadPoolExecutor,
    chunk_bytes: int,
) -> dict[str, Any]:
    """Warm-up and measured rounds of one cell, both modes; the cell's result entry."""
    inputs = TrainerInputs.generate(cell.trainers, cell.dim)
    ids = [f"trainer-{i:04d}" for i in range(cell.trainers)]
    directory = tmp / f"cell-n{cell.parties}-N{cell.trainers}-d{cell.dim}"
    rounds: list[RoundTiming] = []
    wire: dict[str, Any] = {}
    client = {"client": os.getpid()}
    try:
        with LocalCluster(
            directory, cell.parties, tls=True, engine="numpy", log_level="WARNING"
        ) as cluster:
            config = cluster.config
            issue = cluster_issuer(cluster)
            pids = {f"party-{p}": cluster.pid(p) for p in range(cell.parties)}
            secure = SecureRounds(
                cell,
                config,
                [issue(i, "trainer") for i in ids],
                issue("collector", "collector"),
                inputs,
                pool,
                ProcessMeter({**pids, **client}),
                keep_connections=plan.keep_connections,
            )

            def baseline(float32: bool) -> PlainRounds:
                """Plaintext rounds on the baseline server, int64 or float32 uploads."""
                return PlainRounds(
                    cell,
                    plain_server,
                    [creds.client(i) for i in ids],
                    creds.client("collector", "collector"),
                    inputs,
                    pool,
                    ProcessMeter({"baseline": plain_server.pid, **client}),
                    chunk_bytes,
                    keep_connections=plan.keep_connections,
                    float32=float32,
                )

            plain, plain_f32 = baseline(float32=False), baseline(float32=True)
            relays = [CountingRelay(p.address) for p in config.ordered_parties()]
            plain_relay = CountingRelay(plain_server.address)
            try:
                for w in range(plan.warmup):
                    probe = w == 0
                    rounds.append(
                        secure.run(
                            w, warmup=True, probe=_relayed(config, relays) if probe else None
                        )
                    )
                    rounds.append(
                        plain.run(w, warmup=True, probe=plain_relay.address if probe else None)
                    )
                    rounds.append(plain_f32.run(w, warmup=True))
                time.sleep(0.1)  # let the relays count the last TLS close records
                wire = _wire(cell, relays, plain_relay)
                for r in range(plan.rounds_for(cell)):
                    rounds.append(secure.run(plan.warmup + r, warmup=False))
                    rounds.append(plain.run(plan.warmup + r, warmup=False))
                    rounds.append(plain_f32.run(plan.warmup + r, warmup=False))
            finally:
                secure.close()
                plain.close()
                plain_f32.close()
                for relay in [*relays, plain_relay]:
                    relay.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return _cell_result(cell, rounds, inputs, wire)


def _relayed(config: ClusterConfig, relays: Sequence[CountingRelay]) -> ClusterConfig:
    parties = [
        p.model_copy(update={"address": relay.address})
        for p, relay in zip(config.ordered_parties(), relays, strict=True)
    ]
    return config.model_copy(update={"parties": parties})


def _wire(cell: Cell, relays: Sequence[CountingRelay], plain: CountingRelay) -> dict[str, Any]:
    int64 = 8 * cell.dim
    up = sum(r.up_bytes for r in relays)
    return {
        "int64_bytes": int64,
        "target_bytes": int64 + 1024,
        "secure_wire_up_bytes": up,
        "secure_wire_down_bytes": sum(r.down_bytes for r in relays),
        "secure_connections": sum(r.connections for r in relays),
        "plaintext_wire_up_bytes": plain.up_bytes,
        "plaintext_wire_down_bytes": plain.down_bytes,
        "plaintext_connections": plain.connections,
        "secure_over_int64": up / int64,
        "secure_over_plaintext": up / plain.up_bytes if plain.up_bytes else None,
    }


def _cell_result(
    cell: Cell, rounds: list[RoundTiming], inputs: TrainerInputs, wire: dict[str, Any]
) -> dict[str, Any]:
    secure_rounds = [r for r in rounds if r.mode == "secure"]
    plain_rounds = [r for r in rounds if r.mode == "plaintext"]
    f32_rounds = [r for r in rounds if r.mode == "plaintext_f32"]
    for r in rounds:
        if r.cohort != cell.trainers:
            raise RuntimeError(f"{r.mode} round {r.index} summed {r.cohort} of {cell.trainers}")
    secure = report.summarize(secure_rounds, cell.trainers)
    plain = report.summarize(plain_rounds, cell.trainers)
    f32 = report.summarize(f32_rounds, cell.trainers)
    wire["secure_payload_bytes"] = secure["payload_bytes"]
    wire["plaintext_payload_bytes"] = plain["payload_bytes"]
    wire["secure_payload_within_target"] = secure["payload_bytes"] <= wire["target_bytes"]
    wire["secure_wire_within_target"] = wire["secure_wire_up_bytes"] <= wire["target_bytes"]
    check = report.check(secure_rounds[-1].result, plain_rounds[-1].result, inputs.expected_sum())
    check["float32_max_abs_error"] = float(
        np.max(np.abs(f32_rounds[-1].result - inputs.expected_sum()), initial=0.0)
    )
    return {
        "trainers": cell.trainers,
        "dim": cell.dim,
        "parties": cell.parties,
        "label": cell.label,
        "status": "ok",
        "reason": None,
        "rounds": len([r for r in secure_rounds if not r.warmup]),
        "secure": secure,
        "plaintext": plain,
        "plaintext_f32": f32,
        "ratio": secure["median_s"] / plain["median_s"],
        "ratio_p95": secure["p95_s"] / plain["p95_s"],
        "ratio_f32": secure["median_s"] / f32["median_s"],
        "cpu_ratio": secure["cpu_total_s"] / plain["cpu_total_s"],
        "wire": wire,
        "check": check,
        "round_list": [r.as_dict() for r in rounds],
    }


def skipped(cell: Cell, reason: str, status: str = "skipped") -> dict[str, Any]:
    """The result entry of a cell not run: ``status`` ("skipped" or "error") and why."""
    return {
        "trainers": cell.trainers,
        "dim": cell.dim,
        "parties": cell.parties,
        "label": cell.label,
        "status": status,
        "reason": reason,
    }
