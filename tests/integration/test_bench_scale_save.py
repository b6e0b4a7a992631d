"""A scale run saves its results after each scenario, so a run stopped half-way keeps
what it measured (the scenarios are replaced by stand-ins: no cluster is started)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from bench import harness, scale
from bench.grid import PRESETS


def test_each_scenario_is_on_disk_before_the_next_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_on_disk: list[list[str]] = []

    def stand_in(
        sc: scale.Scenario, tmp: Path, threads: int, idle_connection_s: float | None
    ) -> dict[str, Any]:
        results = tmp_path / "results.json"
        saved = json.loads(results.read_text())["scale"] if results.exists() else None
        seen_on_disk.append([e["scenario"] for e in saved or []])
        if sc.name == "wide":
            raise RuntimeError("stopped")
        return {"scenario": sc.name, "status": "error", "reason": "stand-in"}

    monkeypatch.setattr(scale, "run_scenario", stand_in)
    plan = dataclasses.replace(
        PRESETS["quick"], trainers=(), engines=False, scale=("many", "wide", "huge")
    )
    harness.run(plan, tmp_path, [], workdir=tmp_path, plots=False, log=lambda _: None)
    assert seen_on_disk == [[], ["many"], ["many", "wide"]]
    final = json.loads((tmp_path / "results.json").read_text())["scale"]
    assert [(e["scenario"], e["status"]) for e in final] == [
        ("many", "error"), ("wide", "error"), ("huge", "error")
    ]  # fmt: skip
