"""examples/flower, reduced to 3 rounds: Flower (simulation runtime, no Ray) with mpcagg on
3 TLS servers gives the model plain Flower FedAvg gives on the same seeds, within the
fixed-point error, and reports the dropout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "flower" / "run.py"
ROUNDS, TRAINERS, PRECISION_BITS = 3, 5, 16


def test_secure_flower_training_matches_plain_fedavg(tmp_path: Path) -> None:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--rounds", str(ROUNDS), "--drop", "4@2", "--save", "."],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    secure, plain = np.load(tmp_path / "secure.npz"), np.load(tmp_path / "plain.npz")

    reports = summary["reports"]
    assert [r["state"] for r in reports] == ["COMMITTED"] * ROUNDS
    assert [r["cohort_size"] for r in reports] == [5, 4, 5]  # partition 4 dropped in round 2
    assert [r["dropouts"] for r in reports] == [0, 1, 0]
    assert [r["failed"] for r in reports] == [0, 1, 0]
    assert all(r["receipts_match_cohort"] for r in reports)

    names = sorted({key.split("/", 1)[1] for key in plain.files})
    for r in range(ROUNDS + 1):
        if r == 0:  # the same initial model
            for n in names:
                np.testing.assert_array_equal(secure[f"r0/{n}"], plain[f"r0/{n}"])
            continue
        rep = reports[r - 1]
        # Fixed point: each of the cohort's n rounded elements is off by <= 2^-(p+1), so
        # the weighted mean by <= n·2^-(p+1)/W. Plain FedAvg sums in float32: (n+2) ulps.
        fixed = rep["cohort_size"] * 2.0 ** -(PRECISION_BITS + 1) / rep["total_weight"]
        largest = max(float(np.max(np.abs(plain[f"r{r}/{n}"]))) for n in names)
        float32 = (TRAINERS + 2) * 2.0**-24 * largest
        limit = 4 * r * (fixed + float32)  # earlier rounds' differences carry through training
        diff = max(float(np.max(np.abs(secure[f"r{r}/{n}"] - plain[f"r{r}/{n}"]))) for n in names)
        assert diff <= limit, (
            f"round {r}: secure and plain models differ by {diff:.3g} > {limit:.3g}"
        )
        # ... and a model that ignored the weights would not be within it.
        assert rep["total_weight"] > rep["cohort_size"]

    chance = 0.1  # ten digits
    assert summary["secure"]["accuracy"][-1] > chance + 0.4
    assert abs(summary["secure"]["accuracy"][-1] - summary["plain"]["accuracy"][-1]) < 0.01


def test_the_deployment_app_project_names_its_apps(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy.py submits examples/flower/app with ``flwr run``: its components resolve to
    a ClientApp and a ServerApp (checked here without starting the deployment runtime)."""
    import importlib
    import tomllib

    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    app_dir = ROOT / "examples" / "flower" / "app"
    flwr = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    monkeypatch.syspath_prepend(str(app_dir))
    kinds = {"clientapp": ClientApp, "serverapp": ServerApp}
    for component, ref in flwr["components"].items():
        module, attr = ref.split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), kinds[component])
    assert flwr["config"]["secure"] is True
