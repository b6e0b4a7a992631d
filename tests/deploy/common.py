"""Paths and small helpers shared by the deployment-artefact tests (all offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

CLIENT_PORT = 50051
PEER_PORT = 50061
N_PARTIES = 3

# Every cluster file under deploy/: each must load with the servers' own parser.
CLUSTER_FILES = {
    "compose": DEPLOY / "compose" / "cluster.toml",
    "kubernetes": DEPLOY / "kubernetes" / "base" / "cluster.toml",
    "systemd": DEPLOY / "systemd" / "cluster.toml.example",
}


def tool(name: str) -> str:
    """The path of ``name``, or skip the calling test saying which tool is missing."""
    # The venv's own bin first (hadolint comes from a wheel), then PATH and sbin.
    search = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
    )
    path = shutil.which(name, path=search)
    if path is None:
        pytest.skip(f"{name} is not installed here; only the static checks ran")
    return path


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
