"""The round-latency benchmark: secure rounds on a real local cluster against the plaintext
baseline on the same gRPC stack, over a grid of (trainers N, parameters d, parties n).

For each cell (:mod:`bench.cell`): a fresh :class:`servers.local.LocalCluster` (n server
processes on 127.0.0.1, mutual TLS with client certificates, numpy engine) and the baseline
server (started once per run, :mod:`bench.baseline`); one warm-up round of each mode, in
which trainer 0 dials through counting relays (:mod:`bench.wireprobe`: bytes on the wire),
then the measured rounds, secure and plaintext alternating so that a noisy neighbour hurts
both alike. Server CPU and peak RSS are read per round (:mod:`bench.procstats`).
The last measured round's secure sum must equal the plaintext server's sum and the
locally computed one exactly; a mismatch is recorded (``check.exact``), not hidden.

Then the accumulate path of both engines (:mod:`bench.engines`), optionally the
pytest-benchmark micro suite, and the files: results.json, results.csv, PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import engines as engine_bench
from bench import grid, report
from bench.baseline import BaselineCredentials, BaselineServer
from bench.cell import run_cell, skipped
from bench.grid import Cell, Plan
from mpcagg.protocol.cluster import Limits

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
ENGINE_REPEATS = 7
ENGINES_EST_S = 25.0
MICRO_EST_S = 30.0
SCALE_EST_S = 300.0

Log = Callable[[str], None]

__all__ = ["default_out", "describe", "run", "run_micro"]


def default_out() -> Path:
    """A fresh results directory: ``bench/results/YYYYmmdd-HHMMSS``."""
    return RESULTS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")


def run(
    plan: Plan,
    out: Path,
    argv: Sequence[str] = (),
    *,
    workdir: Path | None = None,
    plots: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Run ``plan``, write everything to ``out``, print the summary; returns the results."""
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work_root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    chunk_bytes = Limits().chunk_bytes
    results: dict[str, Any] = {
        "schema": report.SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": report.command_line(argv),
        "machine": report.machine_info(),
        "settings": _settings(plan, chunk_bytes),
        "cells": [],
        "engines": [],
        "micro": None,
        "scale": None,
    }
    decisions, estimate = describe(plan, work_root, log)
    runnable = [c for c, reason in decisions if reason is None]
    log(f"results in {out}")
    bar = tqdm(
        total=round(estimate),
        unit="s",
        desc="bench",
        disable=not sys.stderr.isatty(),
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} est. s [{elapsed}<{remaining}]",
    )
    if runnable:
        _run_cells(plan, decisions, results, out, work_root, bar)
    else:
        results["cells"] = [skipped(cell, str(reason)) for cell, reason in decisions]
    if plan.engines:
        bar.set_description("engines")
        results["engines"] = engine_bench.run(list(plan.engine_dims), ENGINE_REPEATS)
        bar.update(round(ENGINES_EST_S))
    if plan.scale:
        from bench import scale

        bar.set_description("scale")

        def save(entries: list[dict[str, Any]]) -> None:
            results["scale"] = entries
            report.write(out, results)

        scale.run(
            work_root, plan.trainer_threads, scale.chosen(plan.scale), log=tqdm.write,
            on_entry=save, idle_connection_s=plan.idle_connection_s,
        )  # fmt: skip
        bar.update(round(SCALE_EST_S))
    if plan.micro:
        bar.set_description("micro")
        results["micro"] = run_micro(out)
        bar.update(round(MICRO_EST_S))
    bar.close()
    results["duration_s"] = time.monotonic() - started
    results["machine"]["load_average_end"] = list(os.getloadavg())
    json_path, csv_path = report.write(out, results)
    written = [json_path, csv_path]
    if plots:
        from bench import plots as plotting

        written += plotting.write_all(out, results)
    log("")
    log(report.table(results))
    log("")
    log(
        f"wrote {', '.join(p.name for p in written)} to {out} in {_duration(results['duration_s'])}"
    )
    return results


def describe(
    plan: Plan, work_root: Path, log: Log = print
) -> tuple[list[tuple[Cell, str | None]], float]:
    """Which cells run and which are skipped (printed with the reason); expected seconds."""
    decisions = [(cell, grid.skip_reason(cell, plan, work_root)) for cell in plan.cells()]
    runnable = [c for c, reason in decisions if reason is None]
    for cell, reason in decisions:
        if reason is not None:
            log(f"skip {cell.label}: {reason}")
    estimate = sum(grid.cell_seconds(c, plan) for c in runnable)
    estimate += ENGINES_EST_S if plan.engines else 0.0
    estimate += MICRO_EST_S if plan.micro else 0.0
    estimate += SCALE_EST_S * len(plan.scale)
    log(
        f"{len(runnable)} of {len(decisions)} cells to run "
        f"({plan.warmup} warm-up + {plan.rounds} measured rounds each, at most "
        f"{plan.large_cell_rounds} where N·d >= 1e9; {plan.trainer_threads} trainer threads); "
        f"expected duration ~{_duration(estimate)} on a 2-core machine"
    )
    return decisions, estimate


def _run_cells(
    plan: Plan,
    decisions: list[tuple[Cell, str | None]],
    results: dict[str, Any],
    out: Path,
    work_root: Path,
    bar: Any,
) -> None:
    """Every cell in order (skipped ones recorded with their reason), one line each."""
    chunk_bytes = results["settings"]["chunk_bytes"]
    with (
        tempfile.TemporaryDirectory(prefix="mpcagg-bench-", dir=work_root) as tmp,
        ThreadPoolExecutor(plan.trainer_threads, thread_name_prefix="trainer") as pool,
    ):
        creds = BaselineCredentials.provision(Path(tmp) / "baseline-certs")
        with BaselineServer(Path(tmp) / "baseline", creds, plan.baseline_durable) as plain:
            for cell, reason in decisions:
                if reason is not None:
                    results["cells"].append(skipped(cell, reason))
                    continue
                try:
                    result = run_cell(cell, plan, Path(tmp), plain, creds, pool, chunk_bytes)
                except Exception as exc:
                    result = skipped(cell, f"{type(exc).__name__}: {exc}", status="error")
                    result["traceback"] = traceback.format_exc()
                results["cells"].append(result)
                bar.update(round(grid.cell_seconds(cell, plan)))
                tqdm.write(_cell_line(result), file=sys.stdout)
                report.write(out, results)  # a long run leaves its progress behind


def run_micro(out: Path) -> dict[str, Any]:
    """``pytest bench/test_micro.py --benchmark-only``; its JSON goes to ``out/micro.json``."""
    path = out / "micro.json"
    cmd = [
        sys.executable, "-m", "pytest", "bench/test_micro.py", "--benchmark-only",
        "-q", "-p", "no:cacheprovider", f"--benchmark-json={path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT)
    entry: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode, "json": None}
    if path.exists():
        data = json.loads(path.read_text())
        entry["json"] = path.name
        entry["benchmarks"] = [
            {
                "group": b.get("group"),
                "name": b["name"],
                "median_s": b["stats"]["median"],
                "min_s": b["stats"]["min"],
                "rounds": b["stats"]["rounds"],
                "extra_info": b.get("extra_info", {}),
            }
            for b in data.get("benchmarks", [])
        ]
    return entry


def _settings(plan: Plan, chunk_bytes: int) -> dict[str, Any]:
    settings = dataclasses.asdict(plan)
    settings.update(
        engine="numpy",
        tls=True,
        client_certificates=True,
        chunk_bytes=chunk_bytes,
        trainers_run_as=(
            f"a thread pool of {plan.trainer_threads} threads in the benchmark process; "
            + (
                "each trainer keeps its channels across rounds"
                if plan.keep_connections
                else "each trainer dials its own channels per round"
            )
        ),
        baseline=(
            "one gRPC server process (bench.baseline), same mutual TLS, message types and "
            "chunking; int64 fixed point summed in memory"
            + ("; each upload spooled and fsync'ed" if plan.baseline_durable else "")
        ),
        p95="numpy percentile (linear interpolation) over the measured rounds",
    )
    return settings


def _cell_line(c: dict[str, Any]) -> str:
    if c["status"] != "ok":
        return f"{c['label']}: {c['status']} ({c['reason']})"
    s, p, f = c["secure"], c["plaintext"], c["plaintext_f32"]
    parties = "/".join(f"{x['cpu_s']:.2f}" for x in s["servers"])
    return (
        f"{c['label']}: secure {s['median_s']:.3f} s (p95 {s['p95_s']:.3f}), plaintext "
        f"{p['median_s']:.3f} s (float32 {f['median_s']:.3f} s), ratio {c['ratio']:.2f}× "
        f"(vs float32 {c['ratio_f32']:.2f}×), CPU {s['cpu_total_s']:.2f}/{p['cpu_total_s']:.2f} s "
        f"= {c['cpu_ratio']:.2f}× (parties {parties}, client {s['client_cpu_s']:.2f}), "
        f"exact {c['check']['exact']}"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
