"""PNG plots of a results dict (matplotlib, Agg backend: no display needed).

- ``latency_vs_N.png``: median round latency against trainers, one line per d
  (secure solid, plaintext dashed), one panel per n, log-log;
- ``latency_vs_d.png``: the same against d, one line per N, with a slope-1 guide;
- ``latency_vs_Nd.png``: every cell against N·d with the linear fit through the
  secure cells; a cell more than 2× above it is labelled (super-linear);
- ``ratio_heatmap.png``: secure / plaintext median latency per (N, d), one panel per n;
- ``breakdown.png``: each cell's round split into share, upload, close→commit, reveal
  (fractions of the round, total latency printed at the bar's end);
- ``engines.png``: accumulate throughput of numpy and CrypTen, full and seed shares.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from bench.units import si

PHASES = (
    ("share_s", "share (client)"),
    ("upload_s", "upload"),
    ("close_s", "close→commit"),
    ("reveal_s", "reveal"),
)
PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
DPI = 120


def write_all(out: Path, results: dict[str, Any]) -> list[Path]:
    """Write every plot that has data; returns the paths written."""
    ok = [c for c in results["cells"] if c["status"] == "ok"]
    written: list[Path] = []
    figures: list[tuple[str, Callable[[], Figure | None]]] = [
        ("latency_vs_N.png", lambda: latency_vs(ok, "trainers", "dim", "trainers N")),
        ("latency_vs_d.png", lambda: latency_vs(ok, "dim", "trainers", "parameters d")),
        ("latency_vs_Nd.png", lambda: scaling(ok)),
        ("ratio_heatmap.png", lambda: ratio_heatmap(results["cells"])),
        ("breakdown.png", lambda: breakdown(ok)),
        (
            "engines.png",
            lambda: engines([e for e in results.get("engines") or [] if "gb_per_s" in e]),
        ),
    ]
    for name, make in figures:
        fig = make()
        if fig is None:
            continue
        path = out / name
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, fontsize=12, y=1.0 + 0.04 * text.count("\n") + 0.02)


def _parties(cells: Sequence[dict[str, Any]]) -> list[int]:
    return sorted({c["parties"] for c in cells})


def latency_vs(
    cells: list[dict[str, Any]], x_key: str, line_key: str, x_label: str
) -> Figure | None:
    """Median latency against ``x_key``, one line per ``line_key`` value, panel per n."""
    if not cells:
        return None
    parties = _parties(cells)
    fig, axes = plt.subplots(1, len(parties), figsize=(6 * len(parties), 4.5), squeeze=False)
    for ax, n in zip(axes[0], parties, strict=True):
        mine = [c for c in cells if c["parties"] == n]
        values = sorted({c[line_key] for c in mine})
        colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(values), 1)))
        for color, v in zip(colors, values, strict=True):
            line = sorted((c for c in mine if c[line_key] == v), key=lambda c: c[x_key])
            xs = [c[x_key] for c in line]
            label = f"d={si(v)}" if line_key == "dim" else f"N={v}"
            secure = [c["secure"]["median_s"] for c in line]
            p95 = [c["secure"]["p95_s"] for c in line]
            ax.plot(xs, secure, "o-", color=color, label=f"{label} secure")
            ax.vlines(xs, secure, p95, color=color, alpha=0.5)
            ax.plot(xs, [c["plaintext"]["median_s"] for c in line], "s--", color=color,
                    alpha=0.7, label=f"{label} plaintext")  # fmt: skip
            if len(xs) > 1:  # what linear growth from this line's first point looks like
                guide = [secure[0] * x / xs[0] for x in xs]
                ax.plot(xs, guide, ":", color=color, alpha=0.6, linewidth=1)
        ax.plot([], [], ":", color="grey", label=f"∝ {x_label.split()[-1]} from first point")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(x_label)
        ax.set_ylabel("round latency, median (s); bar to p95")
        ax.set_title(f"n = {n} parties")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    _title(fig, f"Round latency vs {x_label}\nsecure solid, plaintext dashed")
    return fig


def scaling(cells: list[dict[str, Any]]) -> Figure | None:
    """Cost per trainer-parameter (latency / N·d) against N·d.

    Linear growth in N·d with fixed costs shows as a falling or flat curve; a cell
    whose cost per element rises by more than 25 % over the next smaller d (same N, n)
    or the next smaller N (same d, n) grows super-linearly and is labelled in red.
    """
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"secure": "#4C72B0", "plaintext": "#DD8452"}
    markers = dict(zip(_parties(cells), "o^sD", strict=False))
    for mode, color in colors.items():
        for n, marker in markers.items():
            for N in sorted({c["trainers"] for c in cells}):
                line = sorted(
                    (c for c in cells if c["parties"] == n and c["trainers"] == N),
                    key=lambda c: c["dim"],
                )
                xs = [c["trainers"] * c["dim"] for c in line]
                ys = [c[mode]["median_s"] / x * 1e9 for c, x in zip(line, xs, strict=True)]
                filled = mode == "secure"
                ax.plot(xs, ys, marker=marker, color=color, alpha=0.8,
                        linestyle="-" if filled else "--",
                        markerfacecolor=color if filled else "none")  # fmt: skip
    for c in cells:
        worse = _superlinear(c, cells)
        if worse:
            x = c["trainers"] * c["dim"]
            ax.annotate(f"{c['label']}: {worse}", (x, c["secure"]["median_s"] / x * 1e9),
                        fontsize=7, color="red")  # fmt: skip
    for mode, color in colors.items():
        ax.plot([], [], color=color, linestyle="-" if mode == "secure" else "--", label=mode)
    for n, marker in markers.items():
        ax.plot([], [], marker=marker, color="grey", linestyle="none", label=f"n = {n}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N · d (trainers × parameters); lines join cells of the same N")
    ax.set_ylabel("latency / (N·d), ns per trainer-parameter")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _title(fig, "Linear in N·d? Cost per element should fall or stay flat")
    return fig


def _superlinear(cell: dict[str, Any], cells: list[dict[str, Any]]) -> str:
    """'d×k: cost/elem ×r' if the per-element cost rose > 25 % from the next smaller cell."""

    def cost(c: dict[str, Any]) -> float:
        return float(c["secure"]["median_s"]) / float(c["trainers"] * c["dim"])

    notes = []
    for key, other in (("dim", "trainers"), ("trainers", "dim")):
        smaller = [
            c for c in cells
            if c["parties"] == cell["parties"] and c[other] == cell[other] and c[key] < cell[key]
        ]  # fmt: skip
        if smaller:
            prev = max(smaller, key=lambda c: c[key])
            rise = cost(cell) / cost(prev)
            if rise > 1.25:
                notes.append(f"{'d' if key == 'dim' else 'N'} up, cost/elem ×{rise:.2f}")
    return "; ".join(notes)


def ratio_heatmap(cells: list[dict[str, Any]]) -> Figure | None:
    """Secure / plaintext median latency per (N, d), one panel per n; skipped cells grey."""
    if not cells:
        return None
    parties = _parties(cells)
    trainers = sorted({c["trainers"] for c in cells})
    dims = sorted({c["dim"] for c in cells})
    fig, axes = plt.subplots(
        1, len(parties), figsize=(1.6 * len(dims) * len(parties) + 2.5, 1.0 * len(trainers) + 2),
        squeeze=False,
    )  # fmt: skip
    bounds = [1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 1000.0]
    cmap = plt.get_cmap("RdYlGn_r", len(bounds) - 1).copy()
    cmap.set_bad("#DDDDDD")
    norm = BoundaryNorm(bounds, cmap.N)
    image = None
    for ax, n in zip(axes[0], parties, strict=True):
        grid = np.full((len(trainers), len(dims)), np.nan)
        text: dict[tuple[int, int], str] = {}
        for c in cells:
            if c["parties"] != n:
                continue
            i, j = trainers.index(c["trainers"]), dims.index(c["dim"])
            if c["status"] == "ok":
                grid[i, j] = c["ratio"]
                text[i, j] = f"{c['ratio']:.2f}×"
            else:
                text[i, j] = c["status"]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm,
                          origin="lower", aspect="auto")  # fmt: skip
        for (i, j), label in text.items():
            ax.text(j, i, label, ha="center", va="center", fontsize=9,
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})  # fmt: skip
        ax.set_xticks(range(len(dims)), [si(d) for d in dims])
        ax.set_yticks(range(len(trainers)), [str(t) for t in trainers])
        ax.set_xlabel("parameters d")
        ax.set_ylabel("trainers N")
        ax.set_title(f"n = {n} parties")
    if image is not None:
        bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
        bar.set_ticks(bounds[:-1], labels=[f"{b:g}×" for b in bounds[:-1]])
        bar.set_label("secure / plaintext")
    _title(
        fig,
        "Cost of security: secure / plaintext round latency (median)\n"
        "targets: ≤ 1.3× at N=100, d=1e6, n=3; ≤ 2× everywhere",
    )
    return fig


def breakdown(cells: list[dict[str, Any]]) -> Figure | None:
    """Per cell, the secure and plaintext rounds split into phases (fractions)."""
    if not cells:
        return None
    rows: list[tuple[str, dict[str, float], float]] = []
    for c in sorted(cells, key=lambda c: (c["parties"], c["trainers"], c["dim"])):
        for mode, short in (("secure", "sec"), ("plaintext", "plain")):
            s = c[mode]
            rows.append((f"{c['label']} {short}", s["breakdown"], s["median_s"]))
    height = 0.32 * len(rows) + 1.5
    fig, ax = plt.subplots(figsize=(9, height))
    # Fixed margins in inches: the default fractions leave a tall figure mostly empty.
    fig.subplots_adjust(top=1 - 0.45 / height, bottom=1.0 / height)
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for (key, label), color in zip(PHASES, PHASE_COLORS, strict=True):
        parts = np.array([r[1][key] for r in rows])
        totals = np.array([sum(r[1].values()) or 1.0 for r in rows])
        frac = parts / totals
        ax.barh(y, frac, left=left, color=color, label=label, height=0.7)
        left += frac
    for yi, (_, _, total) in zip(y, rows, strict=True):
        ax.text(1.01, yi, f"{total:.3g} s", va="center", fontsize=8)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("fraction of the round (median of each phase)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / (height - 1.45)),
              ncol=4, fontsize=8)  # fmt: skip
    _title(fig, "Where a round's time goes")
    return fig


def engines(rows: list[dict[str, Any]]) -> Figure | None:
    """Grouped bars: GB/s of uint64 share data accumulated, per d."""
    if not rows:
        return None
    dims = sorted({r["d"] for r in rows})
    series = [(e, k) for e in ("numpy", "crypten") for k in ("full", "seed")]
    series = [s for s in series if any((r["engine"], r["kind"]) == s for r in rows)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    width = 0.8 / len(series)
    for k, (engine, kind) in enumerate(series):
        vals = [
            next(
                (
                    r["gb_per_s"]
                    for r in rows
                    if (r["engine"], r["kind"], r["d"]) == (engine, kind, d)
                ),
                0.0,
            )
            for d in dims
        ]
        xs = np.arange(len(dims)) + (k - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=f"{engine} {kind} share")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(dims)), [f"d={si(d)}" for d in dims])
    ax.set_ylabel("GB/s of share data (median)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _title(fig, "Accumulate path: numpy vs CrypTen engine")
    return fig
