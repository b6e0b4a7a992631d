"""The README's Python example, run as written: the collector and each trainer in their
own OS process, each with its own client-only cluster file and certificate, against
server processes. Nothing passes between them but the round id. The processes run
without torch, from a directory holding a `clients` package of the user's own, which
the installed `mpcagg` must not pick up (it adds no generic top-level module names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.cluster import dump_cluster
from tests.integration.conftest import running_cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python_api"


def _client_directory(cluster: LocalCluster, where: Path, clients: list[tuple[str, str]]) -> None:
    """What an organisation hands a client: the CA, a cluster file without any
    server-only field, and the client's own certificate and key."""
    where.mkdir()
    config = cluster.config
    assert config.tls is not None
    shutil.copy(config.tls.ca, where / "ca.pem")
    server_only = {"peer_address": None, "data_dir": None, "cert": None, "key": None}
    parties = [p.model_copy(update=server_only) for p in config.parties]
    client_only = config.model_copy(
        update={"tls": config.tls.model_copy(update={"ca": Path("ca.pem")}), "parties": parties}
    )
    text = dump_cluster(client_only)
    assert not re.search(r"data_dir|cert =|key =|peer_address", text), text
    (where / "cluster.toml").write_text(text)
    for client_id, role in clients:
        files = cluster.client_files(client_id, role)
        assert files is not None
        shutil.copy(files.cert, where / f"{client_id}.pem")
        shutil.copy(files.key, where / f"{client_id}-key.pem")


# Run as a user would from their own project: torch absent (a numpy trainer needs none),
# and the working directory on sys.path holding a `clients` package of the user's own.
RUNNER = (
    "import runpy, sys; sys.modules['torch'] = None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _user_project(where: Path) -> None:
    shadow = where / "clients"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the user's own clients package')\n")


def _run(script: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(EXAMPLE / script), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_readme_example_runs_in_separate_processes(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    for script in ("collector.py", "trainer.py"):  # the README shows these files verbatim
        assert (EXAMPLE / script).read_text().strip() in readme, f"README lacks {script}"

    trainers = [f"trainer-{k}" for k in (1, 2, 3)]
    with running_cluster(tmp_path / "cluster") as cluster:
        orchestrator, host = tmp_path / "orchestrator", tmp_path / "trainers"
        _client_directory(cluster, orchestrator, [("collector", "collector")])
        _client_directory(cluster, host, [(t, "trainer") for t in trainers])
        for where in (orchestrator, host):
            _user_project(where)

        collector = _run("collector.py", cwd=orchestrator)
        assert collector.stdout is not None
        assert collector.stdout.readline().strip() == "open"
        procs = [_run("trainer.py", t, cwd=host) for t in trainers]
        for t, proc in zip(trainers, procs, strict=True):
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            assert f"{t} acknowledged by (0, 1, 2)" in out
        out, _ = collector.communicate(timeout=120)
        assert collector.returncode == 0, out
    assert "cohort 3" in out
    mean_w = np.array(eval(out.split("mean w", 1)[1].strip()))  # a printed list of lists
    assert np.allclose(mean_w, np.full((2, 3), 0.25 * 2))
