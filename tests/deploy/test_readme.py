"""The README's Deploy section runs as written, and its Operations section says what is true.

The Deploy section's ``toml`` block is written as ``cluster.toml`` (its ports moved to
free ones, so that the test never collides with anything listening here) and its ``sh``
block runs in ``bash -e`` in an empty directory with the venv's ``mpcagg`` first on the
PATH. The metrics table must list exactly the families a party exposes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.common import REPO

pytestmark = pytest.mark.timeout(180)

README = REPO / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def _free_ports(count: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_the_deploy_section_runs_as_written(tmp_path: Path) -> None:
    deploy = section("Deploy")
    (toml,) = blocks(deploy, "toml")
    (script,) = blocks(deploy, "sh")
    ports = sorted(set(re.findall(r":(\d{4,5})\"", toml)))
    assert len(ports) == 6, ports
    moved = dict(zip(ports, map(str, _free_ports(len(ports))), strict=True))
    (tmp_path / "cluster.toml").write_text(
        re.sub(r":(\d{4,5})\"", lambda m: f':{moved[m.group(1)]}"', toml)
    )
    bin_dir = str(Path(sys.executable).parent)
    # The harness's own line: whatever fails, no server outlives the test.
    harness = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
    result = subprocess.run(
        ["bash", "-e", "-c", harness + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\n  peer port ") == 3 and ": NOT serving" not in result.stdout
    assert "(no rounds)" in result.stdout
    for i in range(3):
        log = (tmp_path / f"party-{i}.log").read_text().splitlines()
        first = json.loads(log[0])
        assert first["message"].startswith("mpcagg ") and f"party {i} starting" in first["message"]
        assert all(json.loads(line) for line in log), "--log-format json writes JSON lines"
        assert any("stopped after draining" in json.loads(line)["message"] for line in log)
    assert (tmp_path / "tls" / "hospital-7-key.pem").stat().st_mode & 0o077 == 0


def test_the_metrics_table_lists_what_a_party_exposes() -> None:
    from tests.unit.servers.test_metrics import FAMILIES

    table = section("Operations")
    listed = set(re.findall(r"^\| `(mpcagg_[a-z_]+)`", table, flags=re.M))
    assert len(listed) >= 10
    # Counters are exposed as <name>_total; the table names what a query uses.
    exposed = {f + "_total" if f in COUNTERS else f for f in FAMILIES}
    assert listed == exposed, (sorted(listed - exposed), sorted(exposed - listed))


COUNTERS = {
    "mpcagg_uploads",
    "mpcagg_refusals",
    "mpcagg_ingested_bytes",
    "mpcagg_rounds_pruned",
    "mpcagg_audit_records",
}
