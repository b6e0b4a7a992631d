"""mpcagg benchmarks: round latency against a plaintext baseline, and micro benchmarks.

Run ``python -m bench --quick`` (about a minute), ``python -m bench`` (the grid N ∈ {10,
100, 1000}, d ∈ 10^4..10^7, n ∈ {3, 5}; cells too large for the machine are skipped
with the reason), ``--full`` (no per-cell time limit) and ``--micro`` (also the
pytest-benchmark suite of the share arithmetic). Results go to
``bench/results/<timestamp>/``: results.json, results.csv and PNG plots.

Modules: :mod:`bench.harness` (the run), :mod:`bench.grid` (presets, skips, duration),
:mod:`bench.rounds` (one timed round), :mod:`bench.baseline` (the plaintext server),
:mod:`bench.wireprobe` (bytes on the wire), :mod:`bench.procstats` (server CPU, RSS and
data-directory size), :mod:`bench.scale` (the scale runs: many trainers, one huge
vector), :mod:`bench.engines` (numpy vs CrypTen accumulate), :mod:`bench.report`,
:mod:`bench.plots`. :mod:`bench.studies` holds studies run by hand (the reveal
modes); the harness never imports them.
"""

from bench.grid import PRESETS, Cell, Plan

__all__ = ["PRESETS", "Cell", "Plan"]
