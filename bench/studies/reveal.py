"""Reveal among the servers (reveal mode ``servers``) next to the collector's reveal.

Usage::

    python -m bench.studies.reveal [--dims 1e5 1e6 1e7] [--engine crypten] [--repeats 3]
                                   [--out bench/results/reveal-<timestamp>]

A local cluster of 3 real server processes (mutual TLS) on the chosen engine. For each
d, ``--repeats`` rounds of 2 trainers in each mode:

* ``servers``: close, then poll every party's reveal state until all are REVEALED
  (``e2e_s``, from the close's return; the revealer ticks every 0.1 s). Each party's log
  line gives its own figures: ``formed_s`` (hellos acknowledged by every other party;
  at parties 1 and 2 this includes waiting for the leader, which commits last),
  ``opened_s`` (CrypTen's reveal over the group plus the digest check), the payload it
  sent and received (ring elements × 8) and the serialized frames it sent (hellos and
  keep-alives included; TLS and HTTP/2 framing add well under 1 %).
* ``collector``: close, then ``Collector.result`` (fetch the 3 aggregate shares, add,
  decode): ``e2e_s``; the collector downloads 3 · 8d bytes, each party uploads 8d.

Writes ``results.json`` (every figure, the machine, the command) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine_info
from mpcagg import Collector, SecureAggregator, TensorLayout
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.group import RevealState

LINE = re.compile(
    r"round (?P<round>\S+) revealed among \d+ parties: formed in (?P<formed>[\d.]+)s, "
    r"opened in (?P<opened>[\d.]+)s \((?P<attempts>\d+) attempts\), payload sent "
    r"(?P<sent>\d+) B, received (?P<received>\d+) B, frames sent (?P<frames>\d+) B"
)


def _submit(cluster: LocalCluster, spec: Any, d: int, trainers: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for k in range(trainers):
        cid = f"bench-{k}"
        with SecureAggregator(
            cluster.config, cid, **cluster.client_kwargs(cid), progress=False
        ) as t:
            assert t.submit(spec, {"w": rng.uniform(-1, 1, d)}).complete


def _party_figures(cluster: LocalCluster, round_id: str) -> list[dict[str, float]]:
    out = []
    for p in range(cluster.n_parties):
        found = [m for m in LINE.finditer(cluster.log_text(p)) if m["round"] == round_id]
        if not found:
            raise RuntimeError(f"party {p} logged no reveal of {round_id}")
        m = found[-1]
        out.append(
            {
                "party": p,
                "formed_s": float(m["formed"]),
                "opened_s": float(m["opened"]),
                "attempts": int(m["attempts"]),
                "payload_sent_bytes": int(m["sent"]),
                "payload_received_bytes": int(m["received"]),
                "frame_bytes_sent": int(m["frames"]),
            }
        )
    return out


def run_round(
    cluster: LocalCluster, collector: Collector, mode: str, d: int, name: str, trainers: int
) -> dict[str, Any]:
    spec = collector.open_round(
        name,
        TensorLayout.from_shapes([("w", (d,))]),
        min_clients=trainers,
        bound=10.0,
        reveal=mode,
    )
    _submit(cluster, spec, d, trainers, seed=d)
    collector.close(name, wait_s=120)
    started = time.monotonic()
    if mode == "collector":
        collector.result(name, spec)
        return {"mode": mode, "d": d, "e2e_s": time.monotonic() - started}
    while True:
        states = collector.reveal_status(name)
        if all(s.state is RevealState.REVEALED for s in states):
            break
        if any(s.state is RevealState.FAILED for s in states):
            raise RuntimeError(f"round {name}: {states}")
        time.sleep(0.01)
    e2e = time.monotonic() - started
    time.sleep(0.2)  # the log lines are written right after the record
    return {"mode": mode, "d": d, "e2e_s": e2e, "parties": _party_figures(cluster, name)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="+", type=float, default=[1e5, 1e6, 1e7])
    parser.add_argument("--engine", default="crypten", choices=["numpy", "crypten"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or Path("bench/results") / time.strftime("reveal-%Y%m%dT%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mpcagg-reveal-") as tmp:
        limits = {"rpc_timeout_s": 120.0, "reveal_timeout_s": 300.0, "min_cohort": 1}
        cluster = LocalCluster(Path(tmp), 3, engine=args.engine, limits=limits, log_level="INFO")
        cluster.start(timeout=120)
        try:
            kwargs = cluster.client_kwargs("collector", "collector")
            with Collector(cluster.config, **kwargs) as collector:
                for d in (int(x) for x in args.dims):
                    for mode in ("servers", "collector"):
                        for r in range(args.repeats):
                            row = run_round(
                                cluster, collector, mode, d, f"{mode}-{d}-{r}", args.trainers
                            )
                            rows.append(row)
                            print(json.dumps(row), flush=True)
        finally:
            cluster.stop()
    summary = summarize(rows)
    doc = {
        "schema": "mpcagg-bench-reveal/1",
        "engine": args.engine,
        "command": " ".join(
            [sys.executable, "-m", "bench.studies.reveal", *(argv or sys.argv[1:])]
        ),
        "machine": machine_info(),
        "rows": rows,
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    print(table(summary))
    print(f"wrote {out / 'results.json'}")
    return 0


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (d, mode); per-party medians for the servers mode."""
    out = []
    for d in sorted({r["d"] for r in rows}):
        cell: dict[str, Any] = {"d": d}
        for mode in ("servers", "collector"):
            these = [r for r in rows if r["d"] == d and r["mode"] == mode]
            if not these:
                continue
            cell[f"{mode}_e2e_s"] = statistics.median(r["e2e_s"] for r in these)
            if mode == "servers":
                parties = [p for r in these for p in r["parties"]]
                leader = [p for p in parties if p["party"] == 0]
                cell["formed_s_leader"] = statistics.median(p["formed_s"] for p in leader)
                cell["opened_s"] = statistics.median(p["opened_s"] for p in parties)
                cell["payload_sent_bytes"] = statistics.median(
                    p["payload_sent_bytes"] for p in parties
                )
                cell["frame_bytes_sent"] = statistics.median(p["frame_bytes_sent"] for p in parties)
        out.append(cell)
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| d | group formed (leader) | opened (per party) | servers e2e | collector e2e "
        "| payload sent per party (÷ 8d) | frames sent per party |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in summary:
        d = c["d"]
        lines.append(
            f"| {d:.0e} | {c['formed_s_leader'] * 1e3:.1f} ms | {c['opened_s']:.3f} s "
            f"| {c['servers_e2e_s']:.3f} s | {c['collector_e2e_s']:.3f} s "
            f"| {c['payload_sent_bytes'] / 1e6:.2f} MB ({c['payload_sent_bytes'] / (8 * d):.3f}) "
            f"| {c['frame_bytes_sent'] / 1e6:.2f} MB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
