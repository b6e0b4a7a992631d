"""``python -m bench [--quick | --full] [--micro] [--out DIR] [grid overrides]``.

Presets: ``--quick`` (N ∈ {10, 100}, d ∈ {1e4, 1e5, 1e6}, n=3, 3 measured rounds: about a
minute, and it includes the target cell N=100, d=1e6, n=3),
the default grid (N ∈ {10, 100, 1000}, d ∈ {1e4 … 1e7}, n ∈ {3, 5}, 5 measured
rounds, cells over 20 minutes skipped) and ``--full`` (the default grid without the
time limit; cells that cannot fit disk or memory are still skipped, with the reason).
``--trainers/--dims/--parties/--rounds`` override the preset's grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from bench import scale
from bench.grid import PRESETS, Plan


def parse(argv: list[str]) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Secure-aggregation round latency against plaintext aggregation.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="the ~1 minute preset")
    preset.add_argument("--full", action="store_true", help="the whole grid, no time limit")
    parser.add_argument("--micro", action="store_true", help="also run bench/test_micro.py")
    parser.add_argument(
        "--scale",
        nargs="*",
        metavar="NAME",
        choices=[sc.name for sc in scale.SCENARIOS],
        help="also the scale runs (bench.scale): many (1000 x 1e6), wide (1e4 x 1e4), huge "
        "(1 x 1e8) unless named; long (1000 x 1e7) only when named",
    )
    parser.add_argument(
        "--scale-only", action="store_true", help="only the scale runs (those --scale names)"
    )
    parser.add_argument(
        "--micro-only", action="store_true", help="only the micro suite (no cluster)"
    )
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<ts>)")
    parser.add_argument("--trainers", type=int, nargs="+", metavar="N", help="trainers per round")
    parser.add_argument("--dims", type=int, nargs="+", metavar="D", help="parameters d")
    parser.add_argument("--parties", type=int, nargs="+", metavar="n", help="servers n (>= 2)")
    parser.add_argument("--rounds", type=int, help="measured rounds per cell")
    parser.add_argument("--warmup", type=int, help="warm-up rounds per cell (>= 1)")
    parser.add_argument("--threads", type=int, help="concurrent trainers (thread pool size)")
    parser.add_argument("--max-cell-min", type=float, help="skip cells estimated longer")
    parser.add_argument("--no-engines", action="store_true", help="skip numpy vs CrypTen")
    parser.add_argument("--engine-dims", type=int, nargs="+", metavar="D")
    parser.add_argument(
        "--baseline-durable",
        action="store_true",
        help="the baseline spools and fsyncs every upload, as the real servers do",
    )
    parser.add_argument(
        "--keep-connections",
        action="store_true",
        help="trainers keep their channels across rounds (a training loop) instead of redialling",
    )
    parser.add_argument(
        "--idle-connection-s",
        type=float,
        metavar="S",
        help="scale runs: parties close client connections idle S seconds ([limits] "
        "idle_connection_s; default: the cluster default, off)",
    )
    parser.add_argument("--workdir", type=Path, help="where servers keep their data (tmp)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells, skips and expected duration"
    )
    args = parser.parse_args(argv)

    plan = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    changes: dict[str, object] = {}
    for arg, key in (("trainers", "trainers"), ("dims", "dims"), ("parties", "parties")):
        value = getattr(args, arg)
        if value:
            changes[key] = tuple(value)
    for arg, key in (("rounds", "rounds"), ("warmup", "warmup"), ("threads", "trainer_threads")):
        if getattr(args, arg) is not None:
            changes[key] = getattr(args, arg)
    if args.max_cell_min is not None:
        changes["max_cell_s"] = args.max_cell_min * 60.0
    if args.engine_dims:
        changes["engine_dims"] = tuple(args.engine_dims)
    changes["engines"] = not args.no_engines
    changes["micro"] = args.micro or args.micro_only
    if args.scale is not None or args.scale_only:
        changes["scale"] = tuple(args.scale) or scale.DEFAULT
    if args.scale_only:
        changes.update(trainers=(), engines=False)
    changes["baseline_durable"] = args.baseline_durable
    changes["keep_connections"] = args.keep_connections
    changes["idle_connection_s"] = args.idle_connection_s
    if args.micro_only:
        changes.update(trainers=(), engines=False)
    plan = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]
    problems = []
    if plan.rounds < 1 or plan.warmup < 1 or plan.trainer_threads < 1:
        problems.append("--rounds, --warmup and --threads must be >= 1")
    if any(n < 2 for n in plan.parties):
        problems.append("--parties must be >= 2")
    if any(x < 1 for x in (*plan.trainers, *plan.dims)):
        problems.append("--trainers and --dims must be >= 1")
    if problems:
        parser.error("; ".join(problems))
    return args, plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, plan = parse(argv)
    from bench import harness

    if args.dry_run:
        harness.describe(plan, args.workdir or Path(tempfile.gettempdir()))
        return 0
    out = args.out or harness.default_out()
    results = harness.run(plan, out, argv, workdir=args.workdir, plots=not args.no_plots)
    failed = [c for c in results["cells"] if c["status"] == "error"]
    wrong = [c for c in results["cells"] if c["status"] == "ok" and not c["check"]["exact"]]
    micro = results.get("micro")
    scale_bad = [e for e in results.get("scale") or [] if e["status"] != "ok" or not e["exact"]]
    if failed or wrong or scale_bad or (micro and micro.get("returncode")):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
