"""Transport security: credential files, TLS-only start-up, and who may open a connection.

Covers: private keys written 0600 by ``mpcagg certs``; servers refusing to start
without TLS material unless ``--insecure`` (which logs a loud warning); plaintext
connections to TLS ports failing; both ports requiring a client certificate from the
cluster CA (mutual TLS); each service served on its own port only; clients refusing a
server from a foreign CA.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from typer.testing import CliRunner

from mpcagg.ops.cli import app
from mpcagg.ops.credentials import (
    certificate_identity,
    create_ca,
    is_issued_by,
    issue_client_cert,
    issue_party_cert,
    load_key_pair,
    provision_dev,
)
from mpcagg.protocol.cluster import ClusterConfig, PartyConfig, TlsConfig, dump_cluster
from mpcagg.protocol.errors import ConfigError
from mpcagg.servers.server import create_server
from mpcagg.v1 import aggregation_pb2 as pb
from tests.security.conftest import (
    RPC_S,
    SecureEnv,
    assert_handshake_refused,
    code_of,
    manifest_req,
)

pytestmark = pytest.mark.timeout(120)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """Umask 0: a file created without an explicit mode would come out world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- credential files ------------------------------------------------------------------


def test_certs_dev_writes_private_keys_0600(tmp_path: Path, lax_umask: None) -> None:
    out = tmp_path / "certs"
    result = CliRunner().invoke(
        app, ["certs", "dev", "--dir", str(out), "--parties", "3", "--trainer", "alice"]
    )
    assert result.exit_code == 0, result.output
    keys = sorted(out.glob("*key*.pem"))
    names = {p.name for p in keys}
    assert {"ca-key.pem", "collector-key.pem", "trainer-alice-key.pem"} <= names
    assert {f"party-{i}-key.pem" for i in range(3)} <= names
    assert not any("token" in p.name for p in out.iterdir()), "no token keys any more"
    assert {p.name: oct(_mode(p)) for p in keys} == {p.name: "0o600" for p in keys}
    assert _mode(out) & 0o077 == 0, "the credentials directory is private too"
    # No private key material is echoed to the terminal.
    assert "PRIVATE KEY" not in result.output


def test_certs_party_writes_its_key_0600(tmp_path: Path, lax_umask: None) -> None:
    out = tmp_path / "certs"
    provision_dev(out, 1)
    result = CliRunner().invoke(
        app, ["certs", "party", "--dir", str(out), "--party", "2", "--host", "p2.example.org"]
    )
    assert result.exit_code == 0, result.output
    assert _mode(out / "party-2-key.pem") == 0o600


@pytest.mark.parametrize("role", ["trainer", "collector"])
def test_certs_client_writes_its_key_0600_and_never_prints_it(
    tmp_path: Path, lax_umask: None, role: str
) -> None:
    ca_dir = tmp_path / "certs"
    creds = provision_dev(ca_dir, 3)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["certs", "client", "--dir", str(ca_dir), "--client-id", "alice", "--role", role,
         "--days", "7", "--out-dir", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cert, key = out / "alice.pem", out / "alice-key.pem"
    assert _mode(key) == 0o600
    assert _mode(out) & 0o077 == 0
    pair = load_key_pair(cert, key)  # the key is the certificate's
    assert is_issued_by(pair, load_key_pair(creds.ca_cert, creds.ca_key))
    ident = certificate_identity(pair.cert_pem)
    assert ident is not None and (ident.client_id, ident.role) == ("alice", role)
    lifetime = pair.certificate.not_valid_after_utc - pair.certificate.not_valid_before_utc
    assert 7 * 86400 <= lifetime.total_seconds() <= 7 * 86400 + 600
    assert "PRIVATE KEY" not in result.output and key.read_text() not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-id", "a/b"], "client id must be"),
        (["--client-id", "alice", "--role", "admin"], "unknown role 'admin'"),
        (["--client-id", "alice", "--days", "0"], "valid_days must be a positive integer"),
    ],
)
def test_certs_client_refuses_bad_arguments_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    ca_dir = tmp_path / "certs"
    provision_dev(ca_dir, 1)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["certs", "client", "--dir", str(ca_dir), "--out-dir", str(out), *args]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() or not any(out.iterdir())


def test_certs_client_needs_the_ca(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["certs", "client", "--dir", str(tmp_path), "--client-id", "alice", "--out-dir",
         str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "ca.pem" in result.output


# --- start-up --------------------------------------------------------------------------


def _plain_cluster(
    tmp_path: Path, tls: TlsConfig | None = None, certs: bool = False
) -> ClusterConfig:
    pki = provision_dev(tmp_path / "certs", 2) if certs else None
    return ClusterConfig(
        name="local",
        tls=tls,
        parties=[
            PartyConfig(
                id=i,
                address="127.0.0.1:0",
                peer_address="127.0.0.1:0",
                data_dir=tmp_path / f"party-{i}",
                cert=pki.parties[i].cert if pki else None,
                key=pki.parties[i].key if pki else None,
            )
            for i in range(2)
        ],
    )


PARTY_1 = ("--party", "1")


def test_server_cli_refuses_to_start_without_tls(tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(dump_cluster(_plain_cluster(tmp_path)))
    proc = subprocess.run(
        [sys.executable, "-m", "mpcagg.ops.cli", "server", "--config", str(cluster_file), *PARTY_1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no [tls] section" in proc.stderr
    assert "--insecure" in proc.stderr
    assert not (tmp_path / "party-1").exists(), "nothing is created before the refusal"


def test_start_server_refuses_half_configured_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="without TLS unless started with --insecure"):
        create_server(_plain_cluster(tmp_path), 1)
    pki = provision_dev(tmp_path / "pki", 2)
    no_party_cert = _plain_cluster(tmp_path, tls=TlsConfig(ca=pki.ca_cert))
    with pytest.raises(ConfigError, match="needs cert and key"):
        create_server(no_party_cert, 1)


def test_insecure_start_logs_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mpcagg.server")
    running = create_server(_plain_cluster(tmp_path), 1, insecure=True)
    try:
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert any("WITHOUT TLS OR AUTHENTICATION" in r.getMessage() for r in warnings)
        assert any("--insecure" in r.getMessage() for r in warnings)
    finally:
        running.drain_timeout = 0.5
        running.stop()


# --- connections -----------------------------------------------------------------------


@pytest.mark.parametrize("peer", [False, True], ids=["client-port", "peer-port"])
def test_plaintext_connection_to_a_tls_port_fails(env: SecureEnv, peer: bool) -> None:
    stub = env.agg(1, peer=peer, plaintext=True)
    code = code_of(lambda: stub.GetRound(pb_get("anything"), timeout=RPC_S, wait_for_ready=False))
    assert code is grpc.StatusCode.UNAVAILABLE
    # The same call over mutual TLS reaches the service (and is answered NOT_FOUND).
    assert (
        code_of(lambda: env.as_collector(1).GetRound(pb_get("anything"), timeout=RPC_S))
        is grpc.StatusCode.NOT_FOUND
    )


def test_client_refuses_a_server_it_cannot_verify(env: SecureEnv) -> None:
    foreign = create_ca("someone else's CA")
    stub = env.agg(1, root=foreign.cert_pem, client=env.collector_pair())
    code = code_of(lambda: stub.GetRound(pb_get("anything"), timeout=RPC_S))
    assert code is grpc.StatusCode.UNAVAILABLE


def test_client_port_requires_a_client_certificate(env: SecureEnv) -> None:
    stub = env.agg(1)  # TLS, but no client certificate
    assert_handshake_refused(lambda: stub.GetRound(pb_get("anything"), timeout=RPC_S))
    # Health checks too: nothing on the port answers a connection without one.
    health = health_pb2_grpc.HealthStub(env.channel(1))
    assert_handshake_refused(
        lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_S)
    )
    # The collector's certificate gets the same call answered by the service.
    assert code_of(lambda: env.as_collector(1).GetRound(pb_get("anything"), timeout=RPC_S)) is (
        grpc.StatusCode.NOT_FOUND
    )


def test_peer_port_requires_a_client_certificate(env: SecureEnv) -> None:
    stub = env.peer(1, peer=True)  # TLS, but no client certificate
    assert_handshake_refused(lambda: stub.Manifest(manifest_req(), timeout=RPC_S))
    # With party 0's certificate the same call is answered by the service.
    stub = env.peer(1, peer=True, client=env.party_pair(0))
    assert code_of(lambda: stub.Manifest(manifest_req(), timeout=RPC_S)) is (
        grpc.StatusCode.NOT_FOUND
    )


def test_certificates_from_a_foreign_ca_are_refused_on_the_peer_port(env: SecureEnv) -> None:
    foreign = create_ca("mpcagg dev CA")  # same name, different key
    forged_party = issue_party_cert(foreign, 0, ["127.0.0.1", "localhost"])
    forged_collector = issue_client_cert(foreign, "collector", "collector")
    for forged in (forged_party, forged_collector):
        peer = env.peer(1, peer=True, client=forged)
        assert_handshake_refused(lambda p=peer: p.Manifest(manifest_req(), timeout=RPC_S))


def test_certificates_from_a_foreign_ca_are_refused_on_the_client_port(env: SecureEnv) -> None:
    foreign = create_ca("mpcagg dev CA")  # same name, different key
    for forged in (
        issue_client_cert(foreign, "collector", "collector"),
        issue_client_cert(foreign, "t1", "trainer"),
        issue_party_cert(foreign, 0, ["127.0.0.1", "localhost"]),
    ):
        agg = env.agg(1, client=forged)
        assert_handshake_refused(lambda a=agg: a.GetRound(pb_get("x"), timeout=RPC_S))


def test_each_service_is_served_on_its_own_port_only(env: SecureEnv) -> None:
    """Both ports take the cluster CA's certificates, but the Peer service is not on the
    client port (which trainers reach) and the Aggregation service is not on the peer port."""
    peer_on_client_port = env.peer(1, client=env.party_pair(0))
    assert code_of(lambda: peer_on_client_port.Manifest(manifest_req(), timeout=RPC_S)) is (
        grpc.StatusCode.UNIMPLEMENTED
    )
    agg_on_peer_port = env.agg(1, peer=True, client=env.collector_pair())
    assert code_of(lambda: agg_on_peer_port.GetRound(pb_get("x"), timeout=RPC_S)) is (
        grpc.StatusCode.UNIMPLEMENTED
    )
    # Health is answered on both.
    for peer in (False, True):
        health = health_pb2_grpc.HealthStub(env.channel(1, peer=peer, client=env.party_pair(0)))
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def pb_get(round_id: str) -> pb.GetRoundRequest:
    return pb.GetRoundRequest(round_id=round_id)


def test_mpcagg_health_probes_both_ports_with_the_partys_certificate(
    env: SecureEnv, tmp_path: Path
) -> None:
    """Container probes: a party checks itself over mutual TLS with its own certificate."""
    cluster_file = str(env.cluster.cluster_file)
    result = CliRunner().invoke(app, ["health", "--config", cluster_file, "--party", "1"])
    assert result.exit_code == 0, result.output
    assert "party 1: serving" in result.output
    # Party 1's peer port moved to where nothing listens: not serving, exit code 1.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    cfg = env.cluster.config
    parties = [p.model_copy(update={"peer_address": dead}) if p.id == 1 else p for p in cfg.parties]
    moved = tmp_path / "moved.toml"
    moved.write_text(dump_cluster(cfg.model_copy(update={"parties": parties})))
    args = ["health", "--config", str(moved), "--party", "1", "--timeout", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "party 1: NOT serving" in result.output
