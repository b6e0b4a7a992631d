"""Versions on the wire: a party refuses a peer call in an incompatible protocol, the
leader refuses a peer that announces one, and ``mpcagg health`` shows what runs."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from mpcagg.ops.health import probe
from mpcagg.ops.local import LocalCluster
from mpcagg.protocol.errors import ServiceError
from mpcagg.protocol.version import PROTOCOL_HEADER, PROTOCOL_VERSION, package_version
from mpcagg.servers.peers import PeerClient
from mpcagg.v1 import peer_pb2
from tests.integration.conftest import running_cluster
from tests.integration.procs import run_cli

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("versions"), 2) as c:
        yield c


def _as_leader(cluster: LocalCluster, target: int, protocol: str | None) -> Exception | None:
    """A Manifest call to ``target``'s peer port with party 0's certificate."""
    cfg = cluster.config
    assert cfg.tls is not None
    me = cfg.party(0)
    assert me.cert is not None and me.key is not None
    creds = grpc.ssl_channel_credentials(
        cfg.tls.ca.read_bytes(), me.key.read_bytes(), me.cert.read_bytes()
    )
    metadata = () if protocol is None else ((PROTOCOL_HEADER, protocol),)
    with grpc.secure_channel(cfg.address_of(target, peer=True), creds) as channel:
        call = channel.unary_unary(
            "/mpcagg.v1.Peer/Manifest",
            request_serializer=peer_pb2.ManifestRequest.SerializeToString,
            response_deserializer=peer_pb2.ManifestReply.FromString,
        )
        try:
            call(peer_pb2.ManifestRequest(round_id="none"), metadata=metadata, timeout=5)
        except grpc.RpcError as exc:
            return exc  # type: ignore[return-value]
    return None


def test_a_peer_call_in_another_protocol_is_refused(cluster: LocalCluster) -> None:
    refused = _as_leader(cluster, 1, "2")
    assert isinstance(refused, grpc.RpcError)
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    assert "speaks mpcagg peer protocol '2', this party speaks 1" in refused.details()  # type: ignore[attr-defined]
    # The same call in this protocol, or from before versions, reaches the servicer.
    for protocol in (str(PROTOCOL_VERSION), None):
        answered = _as_leader(cluster, 1, protocol)
        assert isinstance(answered, grpc.RpcError)
        assert answered.code() is grpc.StatusCode.NOT_FOUND, answered  # type: ignore[attr-defined]


def test_the_leader_refuses_a_peer_announcing_another_protocol() -> None:
    def manifest(request: Any, context: grpc.ServicerContext) -> peer_pb2.ManifestReply:
        context.send_initial_metadata(((PROTOCOL_HEADER, "9"),))
        return peer_pb2.ManifestReply(round_id=request.round_id, party=1)

    handler = grpc.method_handlers_generic_handler(
        "mpcagg.v1.Peer",
        {
            "Manifest": grpc.unary_unary_rpc_method_handler(
                manifest,
                request_deserializer=peer_pb2.ManifestRequest.FromString,
                response_serializer=peer_pb2.ManifestReply.SerializeToString,
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        peer = PeerClient(1, lambda: f"127.0.0.1:{port}", None, 5.0, 1 << 20)
        with pytest.raises(ServiceError, match="party 1 speaks mpcagg peer protocol '9'"):
            peer.manifest("r", b"")
        peer.close()
    finally:
        server.stop(None)


def test_health_shows_the_versions(cluster: LocalCluster) -> None:
    ports = probe(cluster.config, 1)
    assert [(p.port, p.serving, p.version, p.protocol) for p in ports] == [
        ("client", True, package_version(), str(PROTOCOL_VERSION)),
        ("peer", True, package_version(), str(PROTOCOL_VERSION)),
    ]
    result = run_cli("health", "--config", str(cluster.cluster_file), "--party", "1")
    assert result.returncode == 0
    assert f"mpcagg {package_version()}, peer protocol {PROTOCOL_VERSION}" in result.stdout


def test_the_first_log_line_names_the_versions(cluster: LocalCluster) -> None:
    first = cluster.log_text(1).splitlines()[0]
    assert f"mpcagg {package_version()} party 1 starting (peer protocol {PROTOCOL_VERSION}" in first
