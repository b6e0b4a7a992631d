"""The benchmark grid: presets, cells, which cells are skipped and why, expected duration.

A cell is (trainers N, parameters d, parties n). Each measured round of a cell moves
``N · 8d`` bytes of share data into the servers (one full share per trainer; the
other n − 1 parties get 32-byte seeds) and the same again into the baseline server.
Cells are skipped, with the reason printed, when they cannot fit the machine:

- disk: what the servers hold at once (:func:`disk_bytes`: each party's two
  accumulator checkpoints, the aggregate shares of the cell's rounds and the uploads
  being staged; the baseline's spool of ``N · 8d`` with ``--baseline-durable``) must
  fit in half the free space of the working directory;
- memory: trainer threads (≈ 32 bytes per parameter each: float input, fixed point,
  full share, chunk copies) plus every server's accumulator and in-flight upload
  buffers must fit in 60 % of the available memory;
- duration: the cell's estimated time must stay under ``max_cell_s`` (lifted by
  ``--full``).

The duration model is deliberately simple (fixed cost per round and per trainer plus
bytes over a throughput), calibrated on a 2-core VM; the progress bar corrects
itself with the measured pace as cells finish.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil

from bench.units import si, size

GiB = 1 << 30

# Duration model constants (2-core AMD EPYC VM, TLS on, numpy engine; both modes).
ROUND_FIXED_S = 0.1
"""Per round: open, close, commit, reveal, bookkeeping."""
TRAINER_FIXED_S = 0.012
"""Per trainer and 3 parties: channels, TLS handshakes, round check, acknowledgements."""
THROUGHPUT_BPS = 150e6
"""Share bytes per second into the servers, all parties together, end to end."""
CELL_FIXED_S = 3.0
"""Per cell: start the cluster, warm up connections, stop it."""
PLAIN_FRACTION = 0.3
"""A plaintext round costs about this fraction of a secure one."""


@dataclass(frozen=True, slots=True)
class Cell:
    trainers: int
    dim: int
    parties: int

    @property
    def label(self) -> str:
        return f"N={self.trainers} d={si(self.dim)} n={self.parties}"

    @property
    def share_bytes(self) -> int:
        """Share data per round into the servers (full shares; seeds are negligible)."""
        return self.trainers * 8 * self.dim


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run: the grid and how many rounds per cell."""

    preset: str
    trainers: tuple[int, ...]
    dims: tuple[int, ...]
    parties: tuple[int, ...]
    rounds: int
    warmup: int = 1
    trainer_threads: int = 8
    max_cell_s: float | None = 20 * 60.0
    large_cell_rounds: int = 3
    """Measured rounds for cells with N·d >= 10^9 (the median of 3 is still a median)."""
    engines: bool = True
    engine_dims: tuple[int, ...] = (10**5, 10**6, 10**7)
    micro: bool = False
    scale: tuple[str, ...] = ()
    """Also these scale runs (:data:`bench.scale.SCENARIOS` by name)."""
    baseline_durable: bool = False
    keep_connections: bool = False
    """Trainers keep their channels across rounds, as in a training loop (else: dial anew)."""
    idle_connection_s: float | None = None
    """The scale runs' parties close client connections idle this long (``[limits]``;
    None: the cluster default)."""
    extra: dict[str, object] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        return [
            Cell(N, d, n) for n, N, d in itertools.product(self.parties, self.trainers, self.dims)
        ]

    def rounds_for(self, cell: Cell) -> int:
        if cell.trainers * cell.dim >= 10**9:
            return min(self.rounds, self.large_cell_rounds)
        return self.rounds


PRESETS: dict[str, Plan] = {
    "quick": Plan(
        preset="quick",
        trainers=(10, 100),
        dims=(10**4, 10**5, 10**6),
        parties=(3,),
        rounds=3,
        engine_dims=(10**5, 10**6),
    ),
    "default": Plan(
        preset="default",
        trainers=(10, 100, 1000),
        dims=(10**4, 10**5, 10**6, 10**7),
        parties=(3, 5),
        rounds=5,
    ),
}
PRESETS["full"] = replace(PRESETS["default"], preset="full", max_cell_s=None)


def round_seconds(cell: Cell) -> float:
    """Estimated wall time of one secure round."""
    per_trainer = TRAINER_FIXED_S * cell.parties / 3
    return ROUND_FIXED_S + cell.trainers * per_trainer + cell.share_bytes / THROUGHPUT_BPS


def cell_seconds(cell: Cell, plan: Plan) -> float:
    """Estimated wall time of a whole cell: warm-up and measured rounds, both modes."""
    rounds = plan.warmup + plan.rounds_for(cell)
    return CELL_FIXED_S + rounds * round_seconds(cell) * (1 + PLAIN_FRACTION)


def memory_bytes(cell: Cell, plan: Plan) -> int:
    """Estimated peak memory of a round, all processes."""
    threads = min(plan.trainer_threads, cell.trainers)
    client = threads * 32 * cell.dim
    # Each party: accumulator, committed copies of earlier rounds, in-flight full uploads.
    rounds = plan.warmup + plan.rounds_for(cell)
    per_party = 8 * cell.dim * (rounds + 2 * threads)
    baseline = 8 * cell.dim * (1 + threads)
    return client + cell.parties * per_party + baseline


def disk_bytes(cell: Cell, plan: Plan) -> int:
    """Estimated peak disk use of a cell, all servers: each party's two checkpoint slots,
    the aggregate share kept for each round of the cell and, at worst, every in-flight
    upload staged on disk; the baseline's spool of every upload if it is durable. O(d)
    in the number of trainers, except for the durable baseline."""
    threads = min(plan.trainer_threads, cell.trainers)
    rounds = plan.warmup + plan.rounds_for(cell)
    per_party = 8 * cell.dim * (2 + rounds + threads)
    baseline = cell.share_bytes if plan.baseline_durable else 0
    return cell.parties * per_party + baseline


def skip_reason(cell: Cell, plan: Plan, workdir: Path) -> str | None:
    """Why ``cell`` cannot run here, or None."""
    free = shutil.disk_usage(_existing(workdir)).free
    disk = disk_bytes(cell, plan)
    if disk > free // 2:
        return (
            f"disk: the servers hold up to {size(disk, 1)} at once; "
            f"{size(free, 1)} free in {workdir} (needs at most half)"
        )
    available = psutil.virtual_memory().available
    need = memory_bytes(cell, plan)
    if need > 0.6 * available:
        return f"memory: needs about {size(need, 1)}, {size(available, 1)} available"
    if plan.max_cell_s is not None:
        est = cell_seconds(cell, plan)
        if est > plan.max_cell_s:
            return (
                f"duration: estimated {est / 60:.0f} min > {plan.max_cell_s / 60:.0f} min per "
                f"cell ({size(cell.share_bytes, 1)} of shares per round at "
                f"~{THROUGHPUT_BPS / 1e6:.0f} MB/s); run with --full to include it"
            )
    return None


def _existing(path: Path) -> Path:
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return p
