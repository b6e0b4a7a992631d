"""Transport security: credential files, TLS-only start-up, and who may open a connection.

Covers: private keys and tokens written 0600 by ``mpcagg certs``; servers refusing to
start without TLS material unless ``--insecure`` (which logs a loud warning);
plaintext connections to TLS ports failing; the peer port requiring a client
certificate from the cluster CA; clients refusing a server from a foreign CA.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from protos.mpcagg.v1 import aggregation_pb2 as pb
from servers.cli import app
from servers.config import ClusterConfig, PartyConfig, TlsConfig, dump_cluster
from servers.credentials import (
    create_ca,
    issue_client_cert,
    issue_party_cert,
    load_token_public_key,
    provision_dev,
)
from servers.errors import ConfigError
from servers.server import start_server
from servers.tokens import TokenVerifier
from tests.security.conftest import RPC_S, SecureEnv, code_of, manifest_req

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
    assert {"ca-key.pem", "token-signing-key.pem", "collector-key.pem"} <= names
    assert {f"party-{i}-key.pem" for i in range(3)} <= names
    assert "trainer-alice-key.pem" in names
    private = [p for p in keys if p.name != "token-public-key.pem"]
    assert {p.name: oct(_mode(p)) for p in private} == {p.name: "0o600" for p in private}
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


def test_certs_token_out_is_0600_and_never_printed(tmp_path: Path, lax_umask: None) -> None:
    out = tmp_path / "certs"
    creds = provision_dev(out, 3)
    token_file = tmp_path / "alice.token"
    result = CliRunner().invoke(
        app,
        ["certs", "token", "--dir", str(out), "--client-id", "alice", "--out", str(token_file)],
    )
    assert result.exit_code == 0, result.output
    assert _mode(token_file) == 0o600
    token = token_file.read_text().strip()
    assert token not in result.output
    verifier = TokenVerifier(load_token_public_key(creds.token_public_key), cluster="local")
    ident = verifier.verify(token)
    assert (ident.client_id, ident.role) == ("alice", "trainer")


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
        [sys.executable, "-m", "servers.cli", "server", "--config", str(cluster_file), *PARTY_1],
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
        start_server(_plain_cluster(tmp_path), 1)
    pki = provision_dev(tmp_path / "pki", 2)
    no_party_cert = _plain_cluster(tmp_path, tls=TlsConfig(ca=pki.ca_cert))
    with pytest.raises(ConfigError, match="needs cert and key"):
        start_server(no_party_cert, 1)
    no_token_key = _plain_cluster(tmp_path / "b", tls=TlsConfig(ca=pki.ca_cert), certs=True)
    with pytest.raises(ConfigError, match="token_public_key"):
        start_server(no_token_key, 1)


def test_insecure_start_logs_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mpcagg.server")
    running = start_server(_plain_cluster(tmp_path), 1, insecure=True)
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
    md = env.collector_md()
    code = code_of(
        lambda: stub.GetRound(pb_get("anything"), metadata=md, timeout=RPC_S, wait_for_ready=False)
    )
    assert code is grpc.StatusCode.UNAVAILABLE
    # The same call over TLS reaches the service (and is answered NOT_FOUND).
    assert (
        code_of(lambda: env.agg(1).GetRound(pb_get("anything"), metadata=md, timeout=RPC_S))
        is grpc.StatusCode.NOT_FOUND
    )


def test_client_refuses_a_server_it_cannot_verify(env: SecureEnv) -> None:
    foreign = create_ca("someone else's CA")
    stub = env.agg(1, root=foreign.cert_pem)
    md = env.collector_md()
    code = code_of(lambda: stub.GetRound(pb_get("anything"), metadata=md, timeout=RPC_S))
    assert code is grpc.StatusCode.UNAVAILABLE


def test_peer_port_requires_a_client_certificate(env: SecureEnv) -> None:
    stub = env.peer(1, peer=True)  # TLS, but no client certificate
    assert code_of(lambda: stub.Manifest(manifest_req(), timeout=RPC_S)) is (
        grpc.StatusCode.UNAVAILABLE
    )
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
        assert code_of(lambda p=peer: p.Manifest(manifest_req(), timeout=RPC_S)) is (
            grpc.StatusCode.UNAVAILABLE
        )
        agg = env.agg(1, peer=True, client=forged)
        assert code_of(lambda a=agg: a.GetRound(pb_get("x"), timeout=RPC_S)) is (
            grpc.StatusCode.UNAVAILABLE
        )


def test_a_party_certificate_on_the_client_port_is_not_a_peer(env: SecureEnv) -> None:
    """The client port never asks for a client certificate (gRPC Python offers only
    'none' or 'required'), so even a genuine party certificate identifies nobody there."""
    stub = env.peer(1, client=env.party_pair(0))
    assert code_of(lambda: stub.Manifest(manifest_req(), timeout=RPC_S)) is (
        grpc.StatusCode.PERMISSION_DENIED
    )


def pb_get(round_id: str) -> pb.GetRoundRequest:
    return pb.GetRoundRequest(round_id=round_id)
