"""The development environment holds mpcagg beside Flower: pip finds no conflict and both
import in one interpreter (the ``flower`` extra is part of ``dev``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# The Makefile installs CrypTen with --no-deps: its metadata names packages it never
# imports (sklearn, torchvision, tensorboard, pandas, future). Nothing else may conflict.
KNOWN = ("crypten ",)


def optional(extra: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["optional-dependencies"][extra]]


def test_pip_check_finds_no_conflict() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    conflicts = [line for line in lines if not line.startswith(KNOWN)]
    assert not conflicts, "\n".join(conflicts)


def test_the_installed_flower_is_the_one_the_extra_names() -> None:
    (flwr,) = [r for r in optional("flower") if r.name == "flwr"]
    assert flwr.specifier.contains(metadata.version("flwr"))
    assert flwr.specifier.contains("1.42.0")


def test_flower_and_mpcagg_import_together_without_version_warnings() -> None:
    code = (
        "import flwr, mpcagg, mpcagg.flower\n"
        "from flwr.clientapp import ClientApp\n"
        "from flwr.serverapp import ServerApp, Grid\n"
        "from mpcagg.v1 import aggregation_pb2, aggregation_pb2_grpc, peer_pb2, peer_pb2_grpc\n"
        "import google.protobuf\n"
        "print(flwr.__version__, google.protobuf.__version__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FLWR_TELEMETRY_ENABLED": "0", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == metadata.version("flwr")
