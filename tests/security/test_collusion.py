"""n−1 colluding parties replay what honest clients sent them at the honest party.

The attack this guards against: parties 1 and 2 collude and keep everything trainers
and the collector sent them. With bearer tokens (the same token went to every party)
they could replay a co-trainer's token at honest party 0, upload zero shares under
the co-trainers' names before the co-trainers do, and so isolate a victim's update in
the revealed sum; or replay the collector's token to fetch party 0's aggregate share
or create and close rounds. With mutual TLS a party only ever sees a client's public
certificate, never its key, so nothing it received can be replayed.

Set-up: a real 3-party TLS cluster on 127.0.0.1 (port 0). Party 0 is an ordinary,
unmodified server process. Parties 1 and 2 run in this process, as the colluders:
every Aggregation call that reaches them is recorded (the caller's certificate as
gRPC verified it, the metadata, every upload message). An honest warm-up round lets
them capture the trainers' and the collector's material; then the collector opens
the target round and, before any trainer uploads, the colluders try every credential
they can make at party 0:

(a) no client certificate; (b) their own party certificate and key; (c) a
certificate for the victim's co-trainer (or the collector) from a CA of their own;
(d) the captured certificate with a key they hold, both as is (the TLS stack cannot
even offer it: a handshake needs a signature by the certificate's key) and re-bound
to their key (the CA's signature then no longer covers it).

Each refusal is asserted specifically, and controls show that the very same forged
requests get in with the genuine credential, so only the credential makes the
difference. Finally the honest round completes and its sum covers the whole cohort.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpcagg import Collector, SecureAggregator
from mpcagg.mpc import Seed, SharingContext, full_party_for, share
from mpcagg.ops.credentials import KeyPair, create_ca, issue_client_cert
from mpcagg.protocol.spec import RoundSpec
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire import framing as wire
from tests.security.colluders import COLLUDERS, HONEST, ColludingCluster, Loot, World, record_calls
from tests.security.conftest import RPC_S, assert_handshake_refused, error_of

pytestmark = pytest.mark.timeout(180)

VICTIM = "victim"
CO_TRAINERS = ("co-1", "co-2")
TRAINERS = (VICTIM, *CO_TRAINERS)
LENGTH = 8
WARM_UP = "warm-up"
TARGET = "target"

NO_CERT = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
BAD_CERT = "CERTIFICATE_VERIFY_FAILED"
"""Party 0's gRPC core logs why it refused a handshake; these name the two reasons."""


def _update(k: int) -> np.ndarray:
    """Exact binary fractions, so the fixed-point sum equals the float sum exactly."""
    return (np.arange(LENGTH) + 1.0) * (k + 1) * 0.25


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("collusion")
    loot = Loot()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRPC_VERBOSITY", "INFO")  # party 0 logs why it refuses a handshake
        record_calls(loot, mp)
        cluster = ColludingCluster(directory)
        try:
            cluster.start(timeout=60.0)
            cfg = cluster.config
            collector = Collector(cfg, **cluster.client_kwargs("collector", "collector"))
            updates = {cid: _update(k) for k, cid in enumerate(TRAINERS)}
            # An honest round: the colluders see every trainer and the collector.
            warm = collector.open_round(WARM_UP, {"w": np.zeros(LENGTH)}, min_clients=3)
            for cid in TRAINERS:
                with SecureAggregator(cfg, cid, **cluster.client_kwargs(cid)) as t:
                    assert t.submit(warm, {"w": updates[cid]}).complete
            assert collector.close(WARM_UP, wait_s=20).cohort_size == 3
            assert collector.result(WARM_UP, warm).cohort_size == 3
            world = World(cluster, loot, collector, warm, updates, [])
            honest = world.party0(world.genuine("collector", "collector"))
            world.warm_up_share = list(
                honest.GetAggregateShare(
                    pb.GetAggregateShareRequest(round_id=WARM_UP), timeout=RPC_S
                )
            )
            # The target round: open everywhere, nobody has uploaded yet.
            world.spec = collector.open_round(TARGET, {"w": np.zeros(LENGTH)}, min_clients=3)
            yield world
            collector.disconnect()
            world.close()
        finally:
            cluster.stop(timeout=20.0)


# --- what the colluders can make ------------------------------------------------------------


def _forged_upload(spec: RoundSpec, client_id: str, chunk_bytes: int) -> list[pb.UploadMessage]:
    """A well-formed upload to party 0 of a zero update under ``client_id``'s name: with the
    colluders' own shares of zero for that client, it would cancel the client out."""
    zero = np.zeros(spec.length, dtype=np.uint64)
    seeds = [Seed.generate() for _ in range(spec.n_parties - 1)]
    parts = share(
        zero,
        spec.n_parties,
        full_party_for(client_id, spec.n_parties),
        seeds,
        SharingContext(spec.round_id, client_id),
    )
    return list(
        wire.upload_messages(
            wire.PartyUpload.from_share(parts[HONEST]),
            round_id=spec.round_id,
            client_id=client_id,
            sharing_id=secrets.token_bytes(16),
            chunk_bytes=chunk_bytes,
            spec_digest=spec.digest,
        )
    )


def _rekeyed(captured_pem: bytes, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    """The captured certificate with every field kept (issuer, serial, validity, SANs, the
    CA's key identifier) but the colluders' public key, signed by what they hold."""
    cert = x509.load_pem_x509_certificate(captured_pem)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(value, ext.critical)
    forged = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return KeyPair(forged.public_bytes(serialization.Encoding.PEM), key_pem)


def _colluder_key(world: World) -> ec.EllipticCurvePrivateKey:
    return world.colluder_pair(1).private_key()


ATTEMPTS = ["no-cert", "party-cert", "own-ca", "captured-cert-own-key", "captured-cert-rekeyed"]


def _credential(world: World, attempt: str, client_id: str, role: str) -> KeyPair | None:
    """What the colluders present at party 0 to pass as ``client_id``."""
    if attempt == "no-cert":
        return None
    if attempt == "party-cert":
        return world.colluder_pair(1)
    if attempt == "own-ca":
        return issue_client_cert(create_ca("mpcagg dev CA"), client_id, role)  # type: ignore[arg-type]
    captured = world.loot.certificate_of(client_id)
    colluder_key = world.colluder_pair(1).key_pem
    if attempt == "captured-cert-own-key":
        return KeyPair(captured, colluder_key)
    assert attempt == "captured-cert-rekeyed"
    return _rekeyed(captured, _colluder_key(world))


def _assert_refused(world: World, attempt: str, call: Callable[[], object]) -> None:
    """``call`` with ``attempt``'s credential is refused, for the reason that attempt has."""
    if attempt == "party-cert":
        err = error_of(call)
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
        assert "party 1's certificate identifies a server" in (err.details() or "")
        return
    if attempt == "captured-cert-own-key":
        # The TLS stack will not offer a certificate with a key that is not its own: a
        # client proves possession of the certificate's key in the handshake.
        err = error_of(call)
        assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
        assert "Failed to create security handshaker" in (err.details() or "")
        return
    reason = NO_CERT if attempt == "no-cert" else BAD_CERT
    before = world.log_count(reason)
    assert_handshake_refused(call)
    deadline = time.monotonic() + 10
    while world.log_count(reason) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert world.log_count(reason) > before, f"party 0 did not log {reason}"


# --- the tests ------------------------------------------------------------------------------


def test_the_colluders_hold_every_certificate_and_no_key(world: World) -> None:
    """The capture is real: each honest client's certificate reached the colluders, with
    its uploads' headers, and nothing they hold is a private key or a bearer credential."""
    for cid in TRAINERS:
        assert world.loot.certificate_of(cid) == world.genuine(cid).cert_pem
        headers = world.loot.headers(cid)
        assert {h.party for h in headers} <= set(COLLUDERS) and headers
    collector = world.loot.certificate_of("collector")
    assert collector == world.genuine("collector", "collector").cert_pem
    methods = {s.method for s in world.loot.calls}
    assert methods >= {"UploadWhole", "CreateRound", "GetAggregateShare"}
    assert {s.party for s in world.loot.calls} == set(COLLUDERS)
    everything = b"".join(
        (s.client_pem or b"")
        + repr(s.metadata).encode()
        + b"".join(m.SerializeToString() for m in s.messages)
        for s in world.loot.calls
    )
    assert b"PRIVATE KEY" not in everything
    for cid, role in [*((c, "trainer") for c in TRAINERS), ("collector", "collector")]:
        key_body = b"".join(world.genuine(cid, role).key_pem.splitlines()[1:-1])
        assert key_body[:32] not in everything.replace(b"\n", b"")
    assert all("authorization" not in s.metadata for s in world.loot.calls)


@pytest.mark.parametrize("attempt", ATTEMPTS)
@pytest.mark.parametrize("client_id", CO_TRAINERS)
def test_uploads_under_a_co_trainers_name_are_refused(
    world: World, attempt: str, client_id: str
) -> None:
    credential = _credential(world, attempt, client_id, "trainer")
    forged = _forged_upload(world.spec, client_id, world.cluster.config.limits.chunk_bytes)
    stub = world.party0(credential)
    _assert_refused(world, attempt, lambda: stub.Upload(iter(forged), timeout=RPC_S))
    assert world.status(TARGET).received == 0, "nothing reached party 0's round"


def test_a_party_certificate_reaches_no_upload_on_the_peer_port_either(world: World) -> None:
    forged = _forged_upload(world.spec, CO_TRAINERS[0], world.cluster.config.limits.chunk_bytes)
    stub = world.party0(world.colluder_pair(1), peer=True)
    err = error_of(lambda: stub.Upload(iter(forged), timeout=RPC_S))
    assert err.code() is grpc.StatusCode.UNIMPLEMENTED  # the peer port serves Peer only
    assert world.status(TARGET).received == 0


def _collector_calls(world: World, stub: Any) -> dict[str, Callable[[], object]]:
    spec = pb.RoundSpec(
        round_id="colluders-round",
        tensors=[pb.TensorSpec(name="w", shape=[LENGTH])],
        precision_bits=16,
        bound=1000.0,
        min_clients=2,
        max_clients=2,
        n_parties=3,
    )
    return {
        "GetAggregateShare": lambda: list(
            stub.GetAggregateShare(pb.GetAggregateShareRequest(round_id=WARM_UP), timeout=RPC_S)
        ),
        "CreateRound": lambda: stub.CreateRound(pb.CreateRoundRequest(spec=spec), timeout=RPC_S),
        "CloseRound": lambda: stub.CloseRound(pb.CloseRoundRequest(round_id=TARGET), timeout=RPC_S),
    }


@pytest.mark.parametrize("attempt", ATTEMPTS)
@pytest.mark.parametrize("method", ["GetAggregateShare", "CreateRound", "CloseRound"])
def test_the_collectors_calls_are_refused(world: World, attempt: str, method: str) -> None:
    credential = _credential(world, attempt, "collector", "collector")
    _assert_refused(world, attempt, _collector_calls(world, world.party0(credential))[method])
    assert world.status(TARGET).state == pb.OPEN, "the target round was not closed"
    err = error_of(lambda: world.status("colluders-round"))
    assert err.code() is grpc.StatusCode.NOT_FOUND, "no round was created at party 0"


def test_controls_the_forgeries_get_in_with_the_genuine_credentials(world: World) -> None:
    """The refusals above are the credentials' doing: the very same kind of forged upload,
    and the same collector calls, are accepted from the genuine certificate and key."""
    honest_collector = world.party0(world.genuine("collector", "collector"))
    calls = _collector_calls(world, honest_collector)
    shares = calls["GetAggregateShare"]()
    assert shares == world.warm_up_share
    control = "control"
    control_spec = world.collector.open_round(control, {"w": np.zeros(LENGTH)}, min_clients=3)
    forged = _forged_upload(control_spec, CO_TRAINERS[0], world.cluster.config.limits.chunk_bytes)
    receipt = world.party0(world.genuine(CO_TRAINERS[0])).Upload(iter(forged), timeout=RPC_S)
    assert receipt.party == HONEST and receipt.client_id == CO_TRAINERS[0]
    assert world.status(control).received == 1
    assert world.status(TARGET).received == 0, "the control round is another round"


def test_the_honest_round_reveals_the_whole_cohort(world: World) -> None:
    """After every attempt, the honest trainers complete the target round: the victim is
    not isolated, the sum covers all three of them."""
    for cid in TRAINERS:
        with world.trainer(cid) as t:
            assert t.submit(world.spec, {"w": world.updates[cid]}).complete
    closed = world.collector.close(TARGET, wait_s=20)
    assert closed.cohort_size == len(TRAINERS)
    result = world.collector.result(TARGET, world.spec)
    expected = sum(world.updates.values())
    assert np.array_equal(result.sum["w"], expected)
    assert not np.array_equal(result.sum["w"], world.updates[VICTIM])
    assert result.cohort_size == len(TRAINERS)
