"""The README's benchmark tables, rendered from a run's results.json as Markdown:
``python -m bench.readme bench/results/<run>/results.json [more.json ...]``.

Prints the grid table (every cell, skipped ones with their reason), the scale runs if
the files hold any, and the machine line. Nothing is measured here; the numbers are
the run's, so the README can always be traced back to a results file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.units import si, size

MB = 1e6


def machine(results: dict[str, Any]) -> str:
    """One line: processor, cores, memory, Python and library versions, commit."""
    m = results["machine"]
    libs = m.get("versions", {})
    parts = [
        f"{m.get('cpu_model', '?')} at {m.get('cpu_mhz', 0):.0f} MHz",
        f"{m.get('cores_logical', '?')} cores",
        f"{m.get('memory_bytes', 0) / 2**30:.0f} GiB" if m.get("memory_bytes") else None,
        f"Python {m.get('python', '?')}",
        *(f"{k} {v}" for k, v in sorted(libs.items()) if k in {"numpy", "grpcio", "cryptography"}),
        f"commit {str(m.get('git_commit', '?'))[:10]}",
    ]
    return ", ".join(p for p in parts if p)


def grid(results: dict[str, Any]) -> str:
    """The grid as a Markdown table; the N = 100, d = 10^6, n = 3 row in bold."""
    rows = [
        "| N | d | n | secure median (p95) | plaintext int64 | secure / plaintext "
        "| plaintext float32 | secure / float32 | CPU-s secure / plain (ratio) "
        "| CPU-s per party | client CPU-s | up per trainer (÷ 8d) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results["cells"]:
        ident = [str(c["trainers"]), si(c["dim"]), str(c["parties"])]
        if c["status"] != "ok":
            rows.append("| " + " | ".join(ident) + f" | {c['status']}: {c.get('reason', '')} |")
            continue
        s, p, f, w = c["secure"], c["plaintext"], c["plaintext_f32"], c["wire"]
        cells = [
            *ident,
            f"{s['median_s']:.3g} s ({s['p95_s']:.3g})",
            f"{p['median_s']:.3g} s",
            f"{c['ratio']:.2f}×",
            f"{f['median_s']:.3g} s",
            f"{c['ratio_f32']:.2f}×",
            f"{s['cpu_total_s']:.2f} / {p['cpu_total_s']:.2f} ({c['cpu_ratio']:.2f}×)",
            " / ".join(f"{x['cpu_s']:.2f}" for x in s["servers"]),
            f"{s['client_cpu_s']:.2f}",
            f"{size(w['secure_wire_up_bytes'])} "
            f"({w['secure_wire_up_bytes'] / w['int64_bytes']:.3f})",
        ]
        if (c["trainers"], c["dim"], c["parties"]) == (100, 10**6, 3):
            cells = [f"**{x}**" for x in cells]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def scale(results: dict[str, Any]) -> str:
    """The scale runs as a Markdown table (empty if the run had none)."""
    entries = results.get("scale") or []
    if not entries:
        return ""
    rows = [
        "| run | N × d, n | complete, exact | upload / close | party peak RSS (target) "
        "| data dir peak (target) | trainer process, growth in the round |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for e in entries:
        if e["status"] != "ok":
            rows.append(f"| {e['scenario']} | | {e['status']}: {e.get('reason', '')} | | | | |")
            continue
        rss = max(e["party_peak_rss_bytes"].values())
        disk = max(e["party_peak_disk_bytes"].values())
        grew = e["trainer_process_peak_rss_bytes"] - e["trainer_process_start_rss_bytes"]
        rows.append(
            f"| {e['scenario']} | {e['trainers']} × {si(e['dim'])}, {e['parties']} "
            f"| {e['complete']}/{e['trainers']}, {'yes' if e['exact'] else 'NO'} "
            f"| {e['upload_s']:.1f} s / {e['close_s']:.2f} s "
            f"| {rss / MB:.0f} MB ({e['rss_target_bytes'] / MB:.0f}) "
            f"| {disk / MB:.1f} MB ({e['disk_target_bytes'] / MB:.0f}) "
            f"| +{grew / MB:.0f} MB (8d = {e['eight_d_bytes'] / MB:.0f} MB) |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__)
    parser.add_argument("results", type=Path, nargs="+", help="results.json of a run")
    args = parser.parse_args(argv)
    for path in args.results:
        results = json.loads(path.read_text())
        print(f"<!-- {path}: {results.get('command', '')} -->")
        print(machine(results))
        print()
        if results.get("cells"):
            print(grid(results))
            print()
        if results.get("scale"):
            print(scale(results))
            print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
