"""The scale runs: server memory and disk stay O(d) whatever the number of trainers, and a
very long vector streams through trainer and servers: ``python -m bench --scale``.

Each scenario is one round (after a small warm-up round) on a fresh cluster (separate
server processes, mutual TLS with client certificates, numpy engine), trainers as
``trainer_threads`` threads keeping their connections:

- ``many``: N = 1000 trainers, d = 10^6: each party's peak RSS against 4·8d + 200 MB and
  its data directory's peak size against 3·8d (sampled every 10 ms, database included);
- ``wide``: N = 10^4 trainers, d = 10^4, in one round;
- ``huge``: one trainer, d = 10^8: the trainer's peak RSS beyond what it held before the
  round (its input and the benchmark's own), and each party's;
- ``long``: N = 1000 trainers, d = 10^7 (80 GB of full shares in one round, which a
  server that kept each share until the commit could not hold): peak RSS and disk as
  for ``many``. Not run unless named (``--scale long``): about 10 minutes here.

The secure sum is checked against the locally computed one exactly, as in the grid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.certs import cluster_issuer
from bench.procstats import DiskMeter, ProcessMeter, ProcessRound
from bench.rounds import BOUND, PRECISION_BITS, TENSOR, TrainerInputs
from mpcagg import Collector, SecureAggregator
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.state import RoundState

MB = 1e6
KEEP = 1000
"""Scenarios with at most this many trainers keep their channels across rounds."""


@dataclass(frozen=True)
class Scenario:
    name: str
    trainers: int
    dim: int
    parties: int = 3

    @property
    def label(self) -> str:
        return f"{self.name}: N={self.trainers} d={self.dim:.0e} n={self.parties}"


SCENARIOS = (
    Scenario("many", 1000, 10**6),
    Scenario("wide", 10**4, 10**4),
    Scenario("huge", 1, 10**8),
    Scenario("long", 1000, 10**7),
)
DEFAULT = ("many", "wide", "huge")
"""What ``--scale`` runs when it names no scenario."""


def chosen(names: tuple[str, ...]) -> tuple[Scenario, ...]:
    """The scenarios called ``names``, in the order of :data:`SCENARIOS`."""
    unknown = set(names) - {sc.name for sc in SCENARIOS}
    if unknown:
        raise ValueError(
            f"unknown scale scenario(s) {sorted(unknown)}; choose from "
            f"{[sc.name for sc in SCENARIOS]}"
        )
    return tuple(sc for sc in SCENARIOS if sc.name in names)


def run(
    workdir: Path | None = None,
    threads: int = 8,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    log: Any = print,
    on_entry: Callable[[list[dict[str, Any]]], None] | None = None,
    idle_connection_s: float | None = None,
) -> list[dict[str, Any]]:
    """Every scenario in turn; one result entry each (errors are recorded, not raised).
    ``on_entry(entries so far)`` is called after each, so a caller can save them as they
    come (a run stopped half-way keeps what it measured). ``idle_connection_s``: the
    parties' ``[limits]`` value (None: the cluster default)."""
    root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    out = []
    for sc in scenarios:
        log(f"scale {sc.label} ...")
        with tempfile.TemporaryDirectory(prefix="mpcagg-scale-", dir=root) as tmp:
            try:
                entry = run_scenario(sc, Path(tmp), threads, idle_connection_s)
                entry["idle_connection_s"] = idle_connection_s
            except Exception as exc:  # recorded with the results, as grid cells are
                entry = {"scenario": sc.name, "status": "error", "reason": repr(exc)}
        log(line(entry))
        out.append(entry)
        if on_entry is not None:
            on_entry(out)
    return out


def run_scenario(
    sc: Scenario, tmp: Path, threads: int, idle_connection_s: float | None = None
) -> dict[str, Any]:
    inputs = TrainerInputs.generate(sc.trainers, sc.dim)
    ids = [f"trainer-{i:05d}" for i in range(sc.trainers)]
    limits: dict[str, Any] = {"min_cohort": 1, "max_clients_per_round": max(100_000, sc.trainers)}
    if idle_connection_s is not None:
        limits["idle_connection_s"] = idle_connection_s
    directory = tmp / "cluster"
    with (
        LocalCluster(
            directory, sc.parties, tls=True, engine="numpy", limits=limits, log_level="WARNING"
        ) as cluster,
        ThreadPoolExecutor(threads, thread_name_prefix="trainer") as pool,
    ):
        issue = cluster_issuer(cluster)
        collector = Collector(cluster.config, cert=issue("collector", "collector"))
        creds = [issue(cid, "trainer") for cid in ids]
        # Up to KEEP trainers keep their channels (a training loop); beyond, each dials
        # for its upload and hangs up, as a fleet of devices does (and 3 channels and a
        # thread pool per trainer would not fit one benchmark process).
        keep = sc.trainers <= KEEP
        kept = [
            SecureAggregator(cluster.config, cid, cert=c, progress=False)
            for cid, c in zip(ids, creds, strict=True)
            if keep
        ]

        def submit(i: int, spec: Any, values: Any) -> Any:
            if keep:
                return kept[i].submit(spec, values)
            with SecureAggregator(cluster.config, ids[i], cert=creds[i], progress=False) as t:
                return t.submit(spec, values)

        pids = {f"party-{p}": cluster.pid(p) for p in range(sc.parties)}
        meter = ProcessMeter({**pids, "client": os.getpid()})
        dirs = {f"party-{p}": directory / f"party-{p}" for p in range(sc.parties)}
        try:
            _warm_up(collector, submit, len(ids) if keep else 2, pool)
            spec = collector.open_round(
                "scale",
                {TENSOR: np.zeros(sc.dim, dtype=np.float32)},
                min_clients=sc.trainers,
                max_clients=sc.trainers,
                bound=BOUND,
                precision_bits=PRECISION_BITS,
            )
            meter.start()
            with DiskMeter(dirs) as disk:
                t0 = time.perf_counter()
                receipts = list(
                    pool.map(lambda i: submit(i, spec, {TENSOR: inputs.of(i)}), range(sc.trainers))
                )
                t1 = time.perf_counter()
                trainer_phase = meter.stop()
                info = collector.close("scale", wait_s=3600.0)
                t2 = time.perf_counter()
            if info.state is not RoundState.COMMITTED:
                raise RuntimeError(f"round did not commit: {info.state.name} {info.reason}")
            servers = meter.stop()
            ring, cohort = collector.aggregate_ring("scale")
            t3 = time.perf_counter()
        finally:
            collector.disconnect()
            for t in kept:
                t.disconnect()
    exact = bool(np.array_equal(ring, inputs.expected_ring())) and cohort == sc.trainers
    shutil.rmtree(directory, ignore_errors=True)
    return _entry(sc, receipts, (t0, t1, t2, t3), trainer_phase, servers, disk.peak, exact)


def _warm_up(collector: Collector, submit: Any, trainers: int, pool: ThreadPoolExecutor) -> None:
    """A round of 1000 zeros from the first ``trainers``: their connections are open
    before the measured round (its result is not used)."""
    spec = collector.open_round(
        "warm-up",
        {TENSOR: np.zeros(1000, dtype=np.float32)},
        min_clients=1,
        max_clients=trainers,
        bound=BOUND,
    )
    zeros = {TENSOR: np.zeros(1000, np.float32)}
    list(pool.map(lambda i: submit(i, spec, zeros), range(trainers)))
    collector.close("warm-up", wait_s=600.0)


def _entry(
    sc: Scenario,
    receipts: list[Any],
    marks: tuple[float, float, float, float],
    trainer_phase: list[ProcessRound],
    servers: list[ProcessRound],
    disk: dict[str, int],
    exact: bool,
) -> dict[str, Any]:
    t0, t1, t2, t3 = marks
    eight_d = 8 * sc.dim
    parties = {p.name: p for p in servers if p.name != "client"}
    client = next(p for p in trainer_phase if p.name == "client")
    return {
        "scenario": sc.name,
        "label": sc.label,
        "status": "ok",
        "trainers": sc.trainers,
        "dim": sc.dim,
        "parties": sc.parties,
        "complete": sum(r.complete for r in receipts),
        "exact": exact,
        "upload_s": t1 - t0,
        "close_s": t2 - t1,
        "reveal_s": t3 - t2,
        "eight_d_bytes": eight_d,
        "rss_target_bytes": int(4 * eight_d + 200e6),
        "disk_target_bytes": 3 * eight_d,
        "party_peak_rss_bytes": {n: p.peak_rss_bytes for n, p in parties.items()},
        "party_start_rss_bytes": {n: p.start_rss_bytes for n, p in parties.items()},
        "party_cpu_s": {n: round(p.cpu_s, 3) for n, p in parties.items()},
        "party_peak_disk_bytes": disk,
        "trainer_process_start_rss_bytes": client.start_rss_bytes,
        "trainer_process_peak_rss_bytes": client.peak_rss_bytes,
        "rss_within_target": all(p.peak_rss_bytes <= 4 * eight_d + 200e6 for p in parties.values()),
        "disk_within_target": all(v <= 3 * eight_d for v in disk.values()),
    }


def line(e: dict[str, Any]) -> str:
    if e["status"] != "ok":
        return f"  {e['scenario']}: {e['status']} ({e['reason']})"
    rss = max(e["party_peak_rss_bytes"].values())
    disk = max(e["party_peak_disk_bytes"].values())
    grew = e["trainer_process_peak_rss_bytes"] - e["trainer_process_start_rss_bytes"]
    return (
        f"  {e['label']}: {e['complete']}/{e['trainers']} complete, exact {e['exact']}; "
        f"upload {e['upload_s']:.1f} s, close {e['close_s']:.2f} s; party peak RSS "
        f"{rss / MB:.0f} MB (target {e['rss_target_bytes'] / MB:.0f}), data dir peak "
        f"{disk / MB:.1f} MB (target {e['disk_target_bytes'] / MB:.1f}); trainer process "
        f"+{grew / MB:.0f} MB over {e['trainer_process_start_rss_bytes'] / MB:.0f} MB "
        f"(8d = {e['eight_d_bytes'] / MB:.0f} MB)"
    )
