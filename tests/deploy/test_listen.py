"""Where each deployment's cluster file binds, and what it advertises."""

from __future__ import annotations

import pytest

from mpcagg.protocol.cluster import load_cluster
from tests.deploy.common import CLIENT_PORT, CLUSTER_FILES, PEER_PORT


@pytest.mark.parametrize("name", ["kubernetes", "systemd"])
def test_bind_all_interfaces_and_advertise_a_name(name: str) -> None:
    for party in load_cluster(CLUSTER_FILES[name]).parties:
        assert party.client_bind == f"0.0.0.0:{CLIENT_PORT}"
        assert party.peer_bind == f"0.0.0.0:{PEER_PORT}"
        for advertised in (party.address, party.peer_address or ""):
            host = advertised.rpartition(":")[0]
            assert host and host != "0.0.0.0" and not host[0].isdigit(), advertised


def test_compose_binds_each_port_on_its_own_network() -> None:
    # The peer port must exist only on the internal peers network: no listen_address.
    for party in load_cluster(CLUSTER_FILES["compose"]).parties:
        assert party.listen_address is None and party.peer_listen_address is None
        assert party.peer_bind == party.peer_address and party.peer_bind.endswith(".peer:50061")


def test_systemd_example_serves_metrics_on_loopback() -> None:
    cluster = load_cluster(CLUSTER_FILES["systemd"])
    assert cluster.metrics is not None and cluster.metrics.address == "127.0.0.1:9464"
    assert cluster.retention.keep_days == 30 and cluster.retention.open_max_age_days == 7
