"""Committed aggregate shares stay on disk: a server's resident memory does not grow
with the rounds it has committed (``scripts/rss_rounds.py`` measures 100 rounds)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("rss_rounds", ROOT / "scripts" / "rss_rounds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rss_rounds"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_stays_flat_across_committed_rounds(tmp_path: Path) -> None:
    rounds, params, warmup = 14, 1_000_000, 4
    report = _script().measure(tmp_path, rounds, params, trainers=2, every=2)
    held = params * 8 * (rounds - warmup)  # what keeping every aggregate would add: 80 MB
    growth = report.growth(warmup)
    assert max(growth) < held / 4, (
        f"RSS grew by {[g / 2**20 for g in growth]} MiB over {rounds - warmup} rounds; "
        f"holding the aggregates would add {held / 2**20:.0f} MiB"
    )
