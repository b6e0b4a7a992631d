"""Drift test: the committed stubs are exactly what scripts/gen_protos.py makes from the .proto."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
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


def _floor(name: str) -> tuple[int, ...]:
    """The lowest version of ``name`` that pyproject's base dependencies allow."""
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    (low,) = [s.version for s in req.specifier if s.operator == ">="]
    return _version(low)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_stubs_load_on_the_oldest_supported_protobuf_runtime() -> None:
    """protobuf gencode (since 5.26) refuses a runtime older than itself, and 5.x
    runtimes refuse gencode of another major version: each ``_pb2.py`` must declare a
    version of the oldest supported runtime's major, no newer than it."""
    oldest = _floor("protobuf")
    for path in sorted(COMMITTED.glob("*_pb2.py")):
        text = path.read_text()
        declared = re.search(r"# Protobuf Python Version: ([\d.]+)", text)
        checked = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,"
            r"\s*(\d+),\s*(\d+),\s*(\d+),",
            text,
        )
        assert declared and checked, f"{path.name}: no gencode version"
        gencode = tuple(int(g) for g in checked.groups())
        assert gencode == _version(declared.group(1))
        assert gencode <= oldest, f"{path.name}: gencode {gencode} needs a newer runtime"
        assert gencode[0] == oldest[0], f"{path.name}: gencode {gencode} for another major"


def test_grpc_stubs_load_on_the_oldest_supported_grpcio() -> None:
    oldest = _floor("grpcio")
    for path in sorted(COMMITTED.glob("*_pb2_grpc.py")):
        found = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text())
        assert found, f"{path.name}: no GRPC_GENERATED_VERSION"
        assert _version(found.group(1)) <= oldest + (0,) * (3 - len(oldest))
