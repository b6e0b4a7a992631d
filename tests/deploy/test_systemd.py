"""deploy/systemd: the templated unit and its sysusers.d file.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` check the unit
where systemd is installed (Debian's ``systemd`` package; they need no running
systemd); the directives are asserted in any case.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mpcagg.protocol.cluster import Limits, load_cluster
from tests.deploy.common import CLUSTER_FILES, DEPLOY, N_PARTIES, run, tool

SYSTEMD = DEPLOY / "systemd"
UNIT = SYSTEMD / "mpcagg-server@.service"
SYSUSERS = SYSTEMD / "mpcagg.sysusers.conf"
EXEC = "/opt/mpcagg/bin/mpcagg"
# systemd-analyze security's overall exposure, times ten (its --threshold scale):
# 1.2 today; anything above 2.0 means hardening was lost.
MAX_EXPOSURE = 20


def directives(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd allows repeats)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def service() -> dict[str, list[str]]:
    return directives()["Service"]


def single(key: str) -> str:
    values = service().get(key)
    assert values, f"[Service] has no {key}="
    return values[-1]


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a stub, since /opt/mpcagg is not installed here."""
    stub = tmp_path / "bin" / "mpcagg"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    text = UNIT.read_text()
    assert EXEC in text
    (units / UNIT.name).write_text(text.replace(EXEC, str(stub)))
    return units / UNIT.name.replace("@.", "@1.")


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    instance = _unit_copy(tmp_path)
    result = run([analyze, "verify", str(instance)])
    # verify exits 0 on unknown keys and bad values too: any word about our unit fails.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "mpcagg" in line and line.strip()
    ]
    assert result.returncode == 0 and not ours, "\n".join(ours) or result.stderr


def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    instance = _unit_copy(tmp_path)
    result = run(
        [analyze, "security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", str(instance)]
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline security analysis")
    overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert result.returncode == 0, (overall and overall.group(0)) or result.stderr[-2000:]


def test_service_directives() -> None:
    s = service()
    assert single("Restart") == "on-failure"
    assert single("User") == "mpcagg" and single("Group") == "mpcagg"
    assert "DynamicUser" not in s or single("DynamicUser") in ("no", "false")
    assert single("ProtectSystem") == "strict"
    assert single("ReadWritePaths") == "/var/lib/mpcagg"
    assert single("StateDirectory") == "mpcagg"
    assert single("StateDirectoryMode") == "0700"
    for key in (
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectHome",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
    ):
        assert single(key) == "yes", f"{key}={single(key)}"
    assert single("CapabilityBoundingSet") == "", "no capabilities at all"
    assert set(single("RestrictAddressFamilies").split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in s["SystemCallFilter"]
    assert single("UMask") == "0077"


def test_exec_start_and_stop() -> None:
    argv = single("ExecStart").split()
    assert argv[0] == EXEC and argv[1] == "server"
    assert argv[argv.index("--party") + 1] == "%i", "the instance name is the party index"
    assert argv[argv.index("--config") + 1] == "/etc/mpcagg/cluster.toml"
    assert "--insecure" not in argv
    stop = single("TimeoutStopSec")
    seconds = int(stop.removesuffix("s")) if stop.endswith("s") else int(stop)
    assert seconds > Limits().drain_timeout_s, "shorter than the drain after SIGTERM"
    assert single("KillSignal") == "SIGTERM"
    unit = directives()["Unit"]
    assert "network-online.target" in unit["After"] and "network-online.target" in unit["Wants"]
    assert directives()["Install"]["WantedBy"] == ["multi-user.target"]


def test_example_cluster_file_fits_the_unit() -> None:
    cluster = load_cluster(CLUSTER_FILES["systemd"])
    assert cluster.n_parties == N_PARTIES and cluster.tls is not None
    for party in cluster.parties:
        assert party.data_dir is not None
        assert party.data_dir.parent == Path("/var/lib/mpcagg"), (
            f"party {party.id}: data_dir {party.data_dir} is outside the StateDirectory"
        )
        for path in (party.cert, party.key, cluster.tls.ca):
            assert path is not None and Path("/etc/mpcagg") in path.parents


def test_sysusers_file() -> None:
    entries = [
        shlex.split(line)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(entries) == 1, entries
    kind, name, uid, _gecos, home, shell = entries[0]
    assert (kind, name, uid) == ("u", "mpcagg", "-"), "a dynamic system uid for user mpcagg"
    assert (home, shell) == ("/var/lib/mpcagg", "/usr/sbin/nologin")


def test_systemd_sysusers_creates_the_user(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group"):
        (tmp_path / "etc" / name).write_text("")
    result = run([sysusers, f"--root={tmp_path}", "-"], input=SYSUSERS.read_text())
    assert result.returncode == 0, result.stderr
    users = [line.split(":") for line in (tmp_path / "etc" / "passwd").read_text().splitlines()]
    (user,) = [u for u in users if u[0] == "mpcagg"]
    assert user[2] != "0" and user[5] == "/var/lib/mpcagg" and user[6] == "/usr/sbin/nologin"
