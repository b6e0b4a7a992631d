"""Client certificates for the benchmark's trainers and collector, issued in memory.

A trainer of a benchmark round presents a certificate from the cluster's CA, as a real
trainer does; issuing them in memory spares writing N key files per cell.
"""

from __future__ import annotations

from collections.abc import Callable

from mpcagg import ClientCredentials
from mpcagg.ops.credentials import issue_client_cert, load_key_pair
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.identity import Role


def cluster_issuer(cluster: LocalCluster) -> Callable[[str, Role], ClientCredentials]:
    """Client certificates from the cluster's CA, issued in memory: the same credentials a
    trainer loads from ``mpcagg certs client`` files, without writing N key files."""
    ca = load_key_pair(cluster.certs_dir / "ca.pem", cluster.certs_dir / "ca-key.pem")

    def issue(client_id: str, role: Role) -> ClientCredentials:
        pair = issue_client_cert(ca, client_id, role)
        return ClientCredentials(pair.cert_pem, pair.key_pem)

    return issue
