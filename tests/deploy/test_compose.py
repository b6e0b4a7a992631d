"""deploy/compose/compose.yaml: the Compose Specification schema, then its meaning.

The schema is vendored (tests/deploy/schemas/compose-spec.json, see the README
there): no network at test time, and no ``docker compose`` plugin on this machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mpcagg.protocol.cluster import load_cluster
from tests.deploy.common import CLIENT_PORT, DEPLOY, N_PARTIES, PEER_PORT, host_port

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
PARTIES = [f"party-{i}" for i in range(N_PARTIES)]


def load() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())  # resolves the x-party / x-healthcheck merges
    assert isinstance(doc, dict)
    return doc


def test_schema_is_the_vendored_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"].endswith("draft-07/schema")
    jsonschema.Draft7Validator.check_schema(schema)


def test_validates_against_the_compose_spec_schema() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = sorted(validator.iter_errors(load()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def _secret_targets(service: dict[str, Any]) -> dict[str, str]:
    """Secret source -> path in the container (/run/secrets/<target> unless absolute)."""
    out = {}
    for entry in service.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        out[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


def _networks(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nets = service.get("networks", {})
    return (
        {n: {} for n in nets} if isinstance(nets, list) else {n: v or {} for n, v in nets.items()}
    )


def test_three_parties_each_with_its_own_index_data_and_key() -> None:
    doc = load()
    services = doc["services"]
    assert sorted(s for s in services if s.startswith("party-")) == PARTIES
    volumes_seen = set()
    for i, name in enumerate(PARTIES):
        svc = services[name]
        command = svc["command"]
        assert command[:1] == ["server"] and command[command.index("--party") + 1] == str(i)
        assert "--insecure" not in command
        assert str(svc["environment"]["MPCAGG_PARTY"]) == str(i)
        # healthcheck: mpcagg health for this very party
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and "health" in test, test
        assert test[1:3] == ["mpcagg", "health"] and test[test.index("--party") + 1] == str(i)
        assert test[test.index("--config") + 1] == command[command.index("--config") + 1]
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in svc["healthcheck"], f"{name}: healthcheck without {key}"
        # a named volume of its own at the image's data directory
        mounts = [v.split(":") for v in svc["volumes"]]
        (data,) = [m for m in mounts if m[1] == "/var/lib/mpcagg"]
        assert data[0] in doc["volumes"], f"{name}: {data[0]} is not a named volume"
        assert data[0] not in volumes_seen, f"{name} shares a data volume"
        volumes_seen.add(data[0])
        # its own certificate and key, and no other party's
        sources = set(_secret_targets(svc))
        assert {f"party-{i}-cert", f"party-{i}-key", "ca"} <= sources
        others = {s for s in sources if re.fullmatch(r"party-\d+-(cert|key)", s)}
        assert others == {f"party-{i}-cert", f"party-{i}-key"}, f"{name} mounts {others}"
        # hardening and draining
        assert svc["read_only"] is True
        assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add")
        assert svc.get("privileged", False) is False
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        assert _seconds(svc["stop_grace_period"]) > 30, "shorter than the 30 s drain"


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


def test_peer_ports_only_on_an_internal_network() -> None:
    doc = load()
    assert doc["networks"]["peers"].get("internal") is True, "the peer network must be internal"
    assert doc["networks"]["clients"].get("internal") is not True
    on_peers = sorted(n for n, s in doc["services"].items() if "peers" in _networks(s))
    assert on_peers == PARTIES, f"only the parties may join the peer network: {on_peers}"
    for name in PARTIES:
        svc = doc["services"][name]
        for port in svc.get("ports", []):
            published = str(port).split(":")
            assert published[-1].split("/")[0] == str(CLIENT_PORT), f"{name} publishes {port}"
            assert len(published) == 3 and published[0] == "127.0.0.1", (
                f"{name}: publish the client port on the host's loopback only: {port}"
            )
        assert str(PEER_PORT) not in json.dumps(svc.get("expose", []))


def test_cluster_file_matches_the_mounts_and_networks() -> None:
    doc = load()
    configs = doc["configs"]
    assert (COMPOSE_DIR / configs["cluster"]["file"]).is_file()
    cluster = load_cluster(COMPOSE_DIR / configs["cluster"]["file"])
    assert cluster.n_parties == N_PARTIES and cluster.tls is not None
    for i, name in enumerate(PARTIES):
        svc = doc["services"][name]
        command = svc["command"]
        mounted = {c["target"]: c["source"] for c in svc["configs"]}
        assert mounted[command[command.index("--config") + 1]] == "cluster"
        me = cluster.party(i)
        nets = _networks(svc)
        host, port = host_port(me.address)
        assert port == CLIENT_PORT and host in nets["clients"].get("aliases", []), (
            f"party {i}: address {me.address} is not its alias on the clients network"
        )
        assert me.peer_address is not None
        peer_host, peer_port = host_port(me.peer_address)
        assert peer_port == PEER_PORT and peer_host in nets["peers"].get("aliases", []), (
            f"party {i}: peer_address {me.peer_address} is not its alias on the peer network"
        )
        assert peer_host not in nets["clients"].get("aliases", [])
        # every file the server reads is mounted where the cluster file says
        targets = _secret_targets(svc)
        assert str(me.cert) == targets[f"party-{i}-cert"]
        assert str(me.key) == targets[f"party-{i}-key"]
        assert str(cluster.tls.ca) == targets["ca"]
        assert me.data_dir is not None
        assert Path("/var/lib/mpcagg") in [me.data_dir, *me.data_dir.parents]


def test_secrets_come_from_an_ignored_directory() -> None:
    doc = load()
    for name, secret in doc["secrets"].items():
        assert secret["file"].startswith("./secrets/"), f"secret {name}: {secret['file']}"
    ignore = (COMPOSE_DIR / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore, "deploy/compose/secrets/ must ignore its keys"
    tracked = subprocess.run(
        ["git", "ls-files", "--", str(COMPOSE_DIR / "secrets")],
        capture_output=True,
        text=True,
        check=False,
        cwd=DEPLOY,
    ).stdout.split()
    assert all(t.endswith(".gitignore") for t in tracked), f"secrets tracked by git: {tracked}"


def test_demo_job_is_one_shot_after_healthy_parties() -> None:
    doc = load()
    demo = doc["services"]["demo"]
    assert demo["restart"] == "no"
    assert demo["depends_on"] == {p: {"condition": "service_healthy"} for p in PARTIES}
    assert "peers" not in _networks(demo) and "clients" in _networks(demo)
    assert not any(s.startswith("party-") and s.endswith("-key") for s in _secret_targets(demo))
    script = {c["target"]: c["source"] for c in demo["configs"]}
    (path,) = [t for t in script if t.endswith(".py")]
    assert demo["entrypoint"][-1] == path
    source = COMPOSE_DIR / doc["configs"][script[path]]["file"]
    assert source.is_file()
    assert demo["image"] == doc["services"]["party-0"]["image"]


def test_demo_script_needs_no_torch() -> None:
    # The job runs in the server image (no torch): importing the script must not need it.
    code = (
        "import sys, runpy; sys.modules['torch'] = None; sys.modules['crypten'] = None; "
        f"runpy.run_path({str(COMPOSE_DIR / 'demo_round.py')!r}, run_name='not_main')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("party", range(N_PARTIES))
def test_healthcheck_and_image_default_agree(party: int) -> None:
    # The Dockerfile's HEALTHCHECK reads MPCAGG_PARTY; each service sets it to its --party.
    svc = load()["services"][f"party-{party}"]
    assert svc["environment"]["MPCAGG_PARTY"] == svc["command"][-1] == str(party)
