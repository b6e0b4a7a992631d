"""Drift test: the committed stubs are exactly what scripts/gen_protos.py makes from the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "protos" / "mpcagg" / "v1"
PATTERNS = ("*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi")


def stubs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in PATTERNS for p in directory.glob(pattern)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)],
        check=True,
        cwd=ROOT,
        timeout=120,
        capture_output=True,
    )
    return stubs(out / "protos" / "mpcagg" / "v1")


def test_every_proto_has_committed_stubs() -> None:
    names = stubs(COMMITTED)
    for proto in COMMITTED.glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            assert f"{proto.stem}{suffix}" in names


def test_generated_stubs_match_the_committed_ones(generated: dict[str, bytes]) -> None:
    committed = stubs(COMMITTED)
    assert sorted(generated) == sorted(committed)
    drifted = [name for name in sorted(committed) if generated[name] != committed[name]]
    assert not drifted, f"stubs drifted from the .proto files: {drifted}; run scripts/gen_protos.py"
