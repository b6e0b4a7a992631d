"""Smoke test of the benchmark harness on its smallest cell (N=3, d=1000, n=3, one round).

Runs ``python -m bench`` as a user would (real server processes, TLS, the baseline
server) and checks what the numbers rest on: the secure sum equals the plaintext
server's sum and the locally computed one exactly. No timing or schema assertions; the
README's table is rendered from the same results file (``python -m bench.readme``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python -m bench`` on the smallest cell, as a user runs it."""
    out = tmp_path_factory.mktemp("bench-out")
    cmd = [
        sys.executable, "-m", "bench", "--trainers", "3", "--dims", "1000", "--parties", "3",
        "--rounds", "1", "--no-engines", "--no-plots", "--out", str(out),
        "--workdir", str(tmp_path_factory.mktemp("bench-work")),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    return proc, out


def test_the_benchmark_runs_and_its_secure_sum_is_exact(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = run
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (cell,) = json.loads((out / "results.json").read_text())["cells"]
    assert cell["status"] == "ok", cell.get("reason")
    check = cell["check"]
    assert check["secure_sha256"] == check["plaintext_sha256"] == check["expected_sha256"]
    assert check["exact"]


def test_the_readme_table_is_rendered_from_the_results(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = run
    cmd = [sys.executable, "-m", "bench.readme", str(out / "results.json")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| 3 | 1e3 | 3 |")]
    assert row.count("|") == 13, row  # every column filled: the cell ran
