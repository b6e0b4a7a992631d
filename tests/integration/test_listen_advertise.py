"""A party binds ``listen_address`` / ``peer_listen_address``, advertises ``address`` /
``peer_address``, and serves metrics where it is told (``[metrics] address`` or
``--metrics-address``), not only on 127.0.0.1.

The advertised addresses here are TEST-NET (192.0.2.x, RFC 5737): not on this host,
so a server that bound them would fail to start; the certificate names them, and the
health probe reaches the listen address while expecting the advertised name.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from mpcagg.ops.credentials import provision_dev
from mpcagg.protocol.cluster import dump_cluster, load_cluster, parse_cluster
from tests.integration.procs import (
    cluster_toml,
    error_line,
    free_ports,
    reachable,
    run_cli,
    server,
)

pytestmark = pytest.mark.timeout(120)

ADVERTISED = "192.0.2.10"


def _cluster(tmp_path: Path, *, listen: bool, extra: str = "") -> tuple[Path, list[int]]:
    creds = provision_dev(tmp_path / "certs", 2, hosts=(ADVERTISED, "192.0.2.11"))
    client, peer, other, other_peer = free_ports(4)
    party0: dict[str, object] = {
        "id": 0,
        "address": f"{ADVERTISED}:{client}",
        "peer_address": f"{ADVERTISED}:{peer}",
        "data_dir": tmp_path / "p0",
        "cert": creds.parties[0].cert,
        "key": creds.parties[0].key,
    }
    if listen:
        party0["listen_address"] = f"127.0.0.1:{client}"
        party0["peer_listen_address"] = f"127.0.0.1:{peer}"
    party1 = {"id": 1, "address": f"192.0.2.11:{other}", "peer_address": f"192.0.2.11:{other_peer}"}
    path = tmp_path / "cluster.toml"
    path.write_text(cluster_toml([party0, party1], ca=creds.ca_cert, extra=extra))
    return path, [client, peer]


def test_listen_addresses_parse_and_round_trip(tmp_path: Path) -> None:
    path, _ = _cluster(tmp_path, listen=True)
    cluster = load_cluster(path)
    me = cluster.party(0)
    assert me.client_bind.startswith("127.0.0.1:") and me.address.startswith(ADVERTISED)
    assert cluster.party(1).client_bind == cluster.party(1).address  # the default
    again = parse_cluster(dump_cluster(cluster), tmp_path)
    assert again.party(0).listen_address == me.listen_address
    assert again.party(0).peer_listen_address == me.peer_listen_address


def test_party_binds_its_listen_address_and_advertises_another(tmp_path: Path) -> None:
    path, (client, peer) = _cluster(tmp_path, listen=True)
    with server(path, 0, "--log-format", "text"):
        assert reachable("127.0.0.1", client) and reachable("127.0.0.1", peer)
        assert not reachable("127.0.0.2", client), "bound more than its listen address"
        health = run_cli("health", "--config", str(path), "--party", "0")
        assert health.returncode == 0, health.stdout + health.stderr
        assert "client port 127.0.0.1:" in health.stdout


def test_without_listen_address_the_advertised_one_must_be_local(tmp_path: Path) -> None:
    path, _ = _cluster(tmp_path, listen=False)
    result = run_cli("server", "--config", str(path), "--party", "0")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert f"cannot listen on {ADVERTISED}:" in line and "not an address of this host" in line


@pytest.mark.parametrize("where", ["flag", "cluster file"])
def test_metrics_bind_the_configured_address(tmp_path: Path, where: str) -> None:
    (metrics,) = free_ports(1, "127.0.0.2")
    address = f"127.0.0.2:{metrics}"
    extra = f'[metrics]\naddress = "{address}"' if where == "cluster file" else ""
    path, _ = _cluster(tmp_path, listen=True, extra=extra)
    flags = ["--metrics-address", address] if where == "flag" else []
    with server(path, 0, *flags):
        body = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
        assert "mpcagg_build_info" in body
        assert not reachable("127.0.0.1", metrics), "metrics served on 127.0.0.1 as well"
