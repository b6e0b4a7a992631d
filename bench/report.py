"""Results: per-cell summaries, the machine, results.json, results.csv, the summary table.

Schema ``mpcagg-bench/1`` (every figure; times in seconds, sizes in bytes)::

    {schema, created, command, duration_s, machine{…}, settings{…},
     cells[{trainers, dim, parties, label, status: ok|skipped|error, reason,
            rounds, secure{…}, plaintext{…}, plaintext_f32{…}, ratio, ratio_p95,
            ratio_f32, cpu_ratio, wire{…}, check{…},
            round_list[…]}],
     engines[{engine, kind, d, median_s, gb_per_s, …}], micro[…] | null,
     scale[{scenario, trainers, dim, exact, party_peak_rss_bytes, party_peak_disk_bytes,
            trainer_process_peak_rss_bytes, …}] | null}

``secure``/``plaintext``/``plaintext_f32`` (the baseline fed the float32 updates as they
are, 4 bytes per parameter): median_s, p95_s, mean_s, min_s, max_s, breakdown (median of
share_s, upload_s, close_s, reveal_s), trainer_share_s, trainer_upload_s,
payload_bytes, ingest_bytes_per_s, client_cpu_s (the benchmark process: trainers and
collector), cpu_total_s (client and servers), servers[{name, cpu_s, peak_rss_bytes}].
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.rounds import RoundTiming
from bench.units import si, size

SCHEMA = "mpcagg-bench/1"
PHASES = ("share_s", "upload_s", "close_s", "reveal_s")
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions that matter for the numbers."""
    versions: dict[str, str | None] = {}
    for dist in ("numpy", "grpcio", "protobuf", "cryptography", "torch", "crypten", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    vm = psutil.virtual_memory()
    return {
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_mhz": _cpu_mhz(),
        "memory_bytes": vm.total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_mhz() -> float | None:
    freq = psutil.cpu_freq()
    return round(freq.current, 1) if freq else None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def command_line(argv: Sequence[str]) -> str:
    import shlex

    return shlex.join([sys.executable, "-m", "bench", *argv])


# --------------------------------------------------------------------------- per cell


def summarize(rounds: Sequence[RoundTiming], trainers: int) -> dict[str, Any]:
    """Median/p95 and the rest over the measured (non-warm-up) rounds of one mode."""
    measured = [r for r in rounds if not r.warmup]
    totals = np.array([r.total_s for r in measured])
    servers: dict[str, list[tuple[float, int]]] = {}
    client_cpu = []
    for r in measured:
        for p in r.processes:
            if p.name == "client":
                client_cpu.append(p.cpu_s)
            else:
                servers.setdefault(p.name, []).append((p.cpu_s, p.peak_rss_bytes))
    trainer_phase = [r.share_s + r.upload_s for r in measured]
    cpu_total = [sum(p.cpu_s for p in r.processes) for r in measured]
    payload = float(np.mean([r.payload_bytes for r in measured]))
    return {
        "median_s": float(np.median(totals)),
        "p95_s": float(np.percentile(totals, 95)),
        "mean_s": float(totals.mean()),
        "min_s": float(totals.min()),
        "max_s": float(totals.max()),
        "breakdown": {k: float(np.median([getattr(r, k) for r in measured])) for k in PHASES},
        "trainer_share_s": float(np.median([r.trainer_share_s for r in measured])),
        "trainer_upload_s": float(np.median([r.trainer_upload_s for r in measured])),
        "payload_bytes": payload,
        "ingest_bytes_per_s": trainers * payload / float(np.median(trainer_phase)),
        "client_cpu_s": float(np.median(client_cpu)) if client_cpu else None,
        "cpu_total_s": float(np.median(cpu_total)),
        "servers": [
            {
                "name": name,
                "cpu_s": float(np.median([c for c, _ in vals])),
                "peak_rss_bytes": int(max(m for _, m in vals)),
            }
            for name, vals in sorted(servers.items())
        ],
    }


def digest(vector: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vector, dtype=np.float64).tobytes()).hexdigest()


def check(secure: np.ndarray, plain: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Exact equality of the decoded sums (float64 of the same ring sum is bit-identical)."""
    s_eq_p = bool(np.array_equal(secure, plain))
    s_eq_e = bool(np.array_equal(secure, expected))
    return {
        "exact": s_eq_p and s_eq_e,
        "secure_equals_plaintext": s_eq_p,
        "secure_equals_expected": s_eq_e,
        "secure_sha256": digest(secure),
        "plaintext_sha256": digest(plain),
        "expected_sha256": digest(expected),
    }


# --------------------------------------------------------------------------- files

CSV_COLUMNS = (
    "trainers",
    "dim",
    "parties",
    "status",
    "rounds",
    "secure_median_s",
    "secure_p95_s",
    "plain_median_s",
    "plain_p95_s",
    "ratio",
    "plain_f32_median_s",
    "ratio_f32",
    "secure_cpu_total_s_ratio",
    "party_cpu_s",
    "secure_share_s",
    "secure_upload_s",
    "secure_close_s",
    "secure_reveal_s",
    "plain_share_s",
    "plain_upload_s",
    "plain_close_s",
    "plain_reveal_s",
    "secure_payload_bytes",
    "secure_wire_up_bytes",
    "plain_payload_bytes",
    "plain_wire_up_bytes",
    "int64_bytes",
    "server_cpu_s_max",
    "server_peak_rss_bytes_max",
    "plain_server_cpu_s",
    "plain_server_peak_rss_bytes",
    "client_cpu_s",
    "secure_cpu_total_s",
    "plain_cpu_total_s",
    "exact",
    "reason",
)


def csv_row(cell: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {k: cell.get(k) for k in ("trainers", "dim", "parties", "status")}
    row["reason"] = cell.get("reason") or ""
    if cell["status"] != "ok":
        return row
    s, p, w = cell["secure"], cell["plaintext"], cell["wire"]
    row.update(
        rounds=cell["rounds"],
        secure_median_s=s["median_s"],
        secure_p95_s=s["p95_s"],
        plain_median_s=p["median_s"],
        plain_p95_s=p["p95_s"],
        ratio=cell["ratio"],
        plain_f32_median_s=cell["plaintext_f32"]["median_s"],
        ratio_f32=cell["ratio_f32"],
        secure_cpu_total_s_ratio=cell["cpu_ratio"],
        party_cpu_s=" ".join(f"{x['cpu_s']:.3f}" for x in s["servers"]),
        secure_payload_bytes=s["payload_bytes"],
        secure_wire_up_bytes=w["secure_wire_up_bytes"],
        plain_payload_bytes=p["payload_bytes"],
        plain_wire_up_bytes=w["plaintext_wire_up_bytes"],
        int64_bytes=w["int64_bytes"],
        server_cpu_s_max=max(x["cpu_s"] for x in s["servers"]),
        server_peak_rss_bytes_max=max(x["peak_rss_bytes"] for x in s["servers"]),
        plain_server_cpu_s=p["servers"][0]["cpu_s"] if p["servers"] else None,
        plain_server_peak_rss_bytes=p["servers"][0]["peak_rss_bytes"] if p["servers"] else None,
        client_cpu_s=s["client_cpu_s"],
        secure_cpu_total_s=s["cpu_total_s"],
        plain_cpu_total_s=p["cpu_total_s"],
        exact=cell["check"]["exact"],
    )
    for phase in PHASES:
        row[f"secure_{phase}"] = s["breakdown"][phase]
        row[f"plain_{phase}"] = p["breakdown"][phase]
    return row


def write(out: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write results.json and results.csv into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
    csv_path = out / "results.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for cell in results["cells"]:
            writer.writerow(csv_row(cell))
    return json_path, csv_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


# --------------------------------------------------------------------------- stdout


def table(results: dict[str, Any]) -> str:
    """The summary table printed at the end of a run."""
    head = (
        f"{'N':>5} {'d':>6} {'n':>2}  {'secure':>17}  {'plaintext':>17}  {'ratio':>6}  "
        f"{'f32':>7} {'ratio':>6}  "
        f"{'share':>6} {'upload':>7} {'commit':>7} {'reveal':>7}  {'CPU s':>11} {'ratio':>6}  "
        f"{'CPU s per party':>17}  {'up/trainer':>11} {'/8d':>6}  {'srv rss':>7}  exact"
    )
    sub = (
        f"{'':>5} {'':>6} {'':>2}  {'median  (p95) s':>17}  {'median  (p95) s':>17}  {'':>6}  "
        f"{'plain s':>7} {'':>6}  "
        f"{'secure breakdown, median s':>30}  {'sec / plain':>11} {'':>6}  "
        f"{'(secure)':>17}  {'wire bytes':>11} {'':>6}  {'MiB max':>7}"
    )
    lines = [head, sub, "-" * len(head)] if results["cells"] else []
    for c in results["cells"]:
        ident = f"{c['trainers']:>5} {si(c['dim']):>6} {c['parties']:>2}"
        if c["status"] != "ok":
            lines.append(f"{ident}  {c['status'].upper()}: {c.get('reason', '')}")
            continue
        s, p, w = c["secure"], c["plaintext"], c["wire"]
        f32 = c["plaintext_f32"]
        b = s["breakdown"]
        rss = max(x["peak_rss_bytes"] for x in s["servers"]) / 2**20
        up = w["secure_wire_up_bytes"]
        cpu = f"{s['cpu_total_s']:.2f}/{p['cpu_total_s']:.2f}"
        parties = "/".join(f"{x['cpu_s']:.2f}" for x in s["servers"])
        lines.append(
            f"{ident}  {s['median_s']:>7.3f} ({s['p95_s']:>7.3f})  "
            f"{p['median_s']:>7.3f} ({p['p95_s']:>7.3f})  {c['ratio']:>5.2f}×  "
            f"{f32['median_s']:>7.3f} {c['ratio_f32']:>5.2f}×  "
            f"{b['share_s']:>6.3f} {b['upload_s']:>7.3f} {b['close_s']:>7.3f} "
            f"{b['reveal_s']:>7.3f}  {cpu:>11} {c['cpu_ratio']:>5.2f}×  {parties:>17}  "
            f"{size(up):>11} {up / w['int64_bytes']:>6.3f}  "
            f"{rss:>7.0f}  {'yes' if c['check']['exact'] else 'NO'}"
        )
    engines = [e for e in results.get("engines") or [] if "median_s" in e]
    if engines:
        lines += ["", "accumulate path (GB/s of uint64 share data, median):"]
        dims = sorted({e["d"] for e in engines})
        lines.append(f"{'engine':>8} {'share':>5}  " + " ".join(f"{si(d):>8}" for d in dims))
        for name in ("numpy", "crypten"):
            for kind in ("full", "seed"):
                rates = {
                    e["d"]: e["gb_per_s"]
                    for e in engines
                    if (e["engine"], e["kind"]) == (name, kind)
                }
                if rates:
                    vals = " ".join(
                        f"{rates[d]:>8.2f}" if d in rates else f"{'-':>8}" for d in dims
                    )
                    lines.append(f"{name:>8} {kind:>5}  {vals}")
    if results.get("scale"):
        from bench.scale import line

        lines += ["", "scale runs (one round each):"]
        lines += [line(e) for e in results["scale"]]
    micro = results.get("micro") or {}
    if micro.get("benchmarks"):
        lines += ["", f"micro suite ({micro.get('json')}, exit {micro.get('returncode')}):"]
        for m in micro["benchmarks"]:
            gbs = m["extra_info"].get("gb_per_s_uint64")
            rate = f"{gbs:>7.2f} GB/s" if gbs is not None else ""
            lines.append(
                f"  {m['group'] or '':<18} {m['name']:<44} {m['median_s'] * 1e3:>9.3f} ms {rate}"
            )
    for e in results.get("engines") or []:
        if "error" in e:
            lines.append(
                f"engine {e['engine']}: {e['error'].splitlines()[-1] if e['error'] else ''}"
            )
    return "\n".join(lines)
