"""Smoke test of the benchmark harness on its smallest cell (N=3, d=1000, n=3, one round).

Runs ``python -m bench`` as a user would (real server processes, TLS, the baseline
server), then checks the results.json schema and that the secure sum equals the
plaintext server's sum and the locally computed one exactly. No timing assertions.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM = (int, float)

TOP = {
    "schema": str,
    "created": str,
    "command": str,
    "duration_s": NUM,
    "machine": dict,
    "settings": dict,
    "cells": list,
    "engines": list,
}
MACHINE = {
    "cpu_model": str,
    "cores_logical": int,
    "memory_bytes": int,
    "python": str,
    "versions": dict,
}
CELL = {
    "trainers": int,
    "dim": int,
    "parties": int,
    "label": str,
    "status": str,
    "rounds": int,
    "secure": dict,
    "plaintext": dict,
    "ratio": NUM,
    "ratio_p95": NUM,
    "wire": dict,
    "check": dict,
    "round_list": list,
}
MODE = {
    "median_s": NUM,
    "p95_s": NUM,
    "mean_s": NUM,
    "min_s": NUM,
    "max_s": NUM,
    "breakdown": dict,
    "trainer_share_s": NUM,
    "trainer_upload_s": NUM,
    "payload_bytes": NUM,
    "ingest_bytes_per_s": NUM,
    "client_cpu_s": NUM,
    "cpu_total_s": NUM,
    "servers": list,
}
SERVER = {"name": str, "cpu_s": NUM, "peak_rss_bytes": int}
WIRE = {
    "int64_bytes": int,
    "target_bytes": int,
    "secure_wire_up_bytes": int,
    "secure_wire_down_bytes": int,
    "secure_connections": int,
    "plaintext_wire_up_bytes": int,
    "secure_payload_bytes": NUM,
    "plaintext_payload_bytes": NUM,
    "secure_payload_within_target": bool,
}
CHECK = {
    "exact": bool,
    "secure_equals_plaintext": bool,
    "secure_equals_expected": bool,
    "secure_sha256": str,
    "plaintext_sha256": str,
    "expected_sha256": str,
}
PHASES = ("share_s", "upload_s", "close_s", "reveal_s")


def _check(obj: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for key, kind in schema.items():
        assert key in obj, f"{where}: missing key {key!r}"
        value = obj[key]
        assert isinstance(value, kind) and not (kind is NUM and isinstance(value, bool)), (
            f"{where}.{key} is {type(value).__name__} {value!r}, expected {kind}"
        )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-out")
    cmd = [
        sys.executable, "-m", "bench", "--trainers", "3", "--dims", "1000", "--parties", "3",
        "--rounds", "1", "--no-engines", "--out", str(out),
        "--workdir", str(tmp_path_factory.mktemp("bench-work")),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, json.loads((out / "results.json").read_text())


def test_schema(results: tuple[Path, dict[str, Any]]) -> None:
    _, res = results
    _check(res, TOP, "results")
    assert res["schema"] == "mpcagg-bench/1"
    assert "-m bench" in res["command"] and "--trainers 3" in res["command"]
    _check(res["machine"], MACHINE, "machine")
    for dist in ("numpy", "grpcio"):
        assert isinstance(res["machine"]["versions"][dist], str)
    assert len(res["cells"]) == 1
    cell = res["cells"][0]
    _check(cell, CELL, "cell")
    assert (cell["trainers"], cell["dim"], cell["parties"], cell["status"]) == (3, 1000, 3, "ok")
    assert cell["rounds"] == 1
    for mode in ("secure", "plaintext"):
        _check(cell[mode], MODE, mode)
        assert set(cell[mode]["breakdown"]) == set(PHASES)
        assert all(isinstance(cell[mode]["breakdown"][p], float) for p in PHASES)
        for server in cell[mode]["servers"]:
            _check(server, SERVER, f"{mode}.servers")
    assert [s["name"] for s in cell["secure"]["servers"]] == ["party-0", "party-1", "party-2"]
    assert [s["name"] for s in cell["plaintext"]["servers"]] == ["baseline"]
    _check(cell["wire"], WIRE, "wire")
    assert cell["wire"]["int64_bytes"] == 8000
    # Warm-up and measured rounds of both modes; every round summed all three trainers.
    modes = sorted((r["mode"], r["warmup"]) for r in cell["round_list"])
    assert modes == [("plaintext", False), ("plaintext", True), ("secure", False), ("secure", True)]
    assert all(r["cohort"] == 3 for r in cell["round_list"])


def test_secure_sum_equals_plaintext_sum(results: tuple[Path, dict[str, Any]]) -> None:
    _, res = results
    check = res["cells"][0]["check"]
    _check(check, CHECK, "check")
    assert check["secure_sha256"] == check["plaintext_sha256"] == check["expected_sha256"]
    assert check["exact"] and check["secure_equals_plaintext"] and check["secure_equals_expected"]


def test_wire_bytes_are_measured(results: tuple[Path, dict[str, Any]]) -> None:
    wire = results[1]["cells"][0]["wire"]
    # The share and the plaintext each cross the wire once, plus TLS and gRPC overhead.
    assert wire["secure_wire_up_bytes"] > wire["int64_bytes"]
    assert wire["plaintext_wire_up_bytes"] > wire["int64_bytes"]
    assert wire["secure_connections"] >= 3 and wire["plaintext_connections"] >= 1


def test_files(results: tuple[Path, dict[str, Any]]) -> None:
    out, _ = results
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["exact"] == "True"
    for name in ("latency_vs_N", "latency_vs_d", "latency_vs_Nd", "ratio_heatmap", "breakdown"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
