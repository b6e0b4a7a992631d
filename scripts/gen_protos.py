"""Regenerate the committed gRPC stubs from protos/mpcagg/v1/*.proto.

Usage: ``python scripts/gen_protos.py [--out DIR]`` (default: the repository root,
so the stubs land beside the .proto files as ``protos/mpcagg/v1/*_pb2*.py[i]``).
The drift test runs this into a temporary directory and compares.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PROTOS = sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / "mpcagg" / "v1").glob("*.proto"))


def generate(out: Path) -> None:
    """Write ``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi`` under ``out/protos``."""
    target = out / "protos"
    target.mkdir(parents=True, exist_ok=True)
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={target}",
        f"--grpc_python_out={target}",
        f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
        f"--mypy_out={target}",
        *[str(p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Generated code imports `mpcagg.v1...`: the package the stubs are installed as.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
