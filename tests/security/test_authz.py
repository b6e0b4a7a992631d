"""Authentication and authorisation of every RPC, and the server-side privacy guards.

Who may call what: peer RPCs need a party certificate of this cluster (from the
leader) on the peer port; collector RPCs need a collector certificate, uploads the
certificate of the trainer whose id the request names, both on the client port (the
handshake's own checks of client certificates are in test_handshake.py). Privacy
guards: each server enforces min_clients and one committed cohort per round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mpcagg.ops.credentials import KeyPair
from mpcagg.protocol.spec import Holding, cohort_digest
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import peer_pb2
from tests.security.conftest import (
    LENGTH,
    RPC_S,
    SecureEnv,
    close_round,
    code_of,
    create_round,
    error_of,
    manifest_req,
    open_round,
    seed_upload,
    sharing_of,
    spec_msg,
    start_env,
    upload_seed,
)

pytestmark = pytest.mark.timeout(120)

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("authz"))


def _fetch(
    env: SecureEnv, party: int, round_id: str, client: KeyPair
) -> list[pb.AggregateShareMessage]:
    stream = env.agg(party, client=client).GetAggregateShare(
        pb.GetAggregateShareRequest(round_id=round_id), timeout=RPC_S
    )
    return list(stream)


def _status(env: SecureEnv, party: int, round_id: str) -> pb.RoundStatus:
    reply: pb.RoundStatus = env.as_collector(party).GetRound(
        pb.GetRoundRequest(round_id=round_id), timeout=RPC_S
    )
    return reply


# --- peer RPCs --------------------------------------------------------------------------


def _peer_calls(env: SecureEnv, **channel: object) -> dict[str, Callable[[], object]]:
    stub = env.peer(1, **channel)  # type: ignore[arg-type]
    return {
        "Manifest": lambda: stub.Manifest(manifest_req("committed"), timeout=RPC_S),
        # Refused before the request is read: its content does not matter.
        "Commit": lambda: stub.Commit(
            peer_pb2.CommitRequest(round_id="committed", cohort_digest=b"\x00" * 32),
            timeout=RPC_S,
        ),
        "Fail": lambda: stub.Fail(
            peer_pb2.FailRequest(round_id="committed", reason="x"), timeout=RPC_S
        ),
    }


def _holders(env: SecureEnv) -> dict[str, Callable[[], KeyPair]]:
    """Certificates from the cluster's own CA, by who holds them."""
    return {
        "trainer-cert": lambda: env.client_pair("t1"),
        "collector-cert": env.collector_pair,
        "leader-cert": lambda: env.party_pair(0),
    }


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
@pytest.mark.parametrize("who", ["trainer-cert", "collector-cert", "leader-cert"])
def test_peer_rpcs_are_not_served_on_the_client_port(
    env: SecureEnv, committed: pb.RoundSpec, method: str, who: str
) -> None:
    """The Peer service listens on the peer port only: even the leader's certificate
    reaches no peer RPC through the client port (which trainers can reach)."""
    calls = _peer_calls(env, client=_holders(env)[who]())
    assert code_of(calls[method]) is grpc.StatusCode.UNIMPLEMENTED
    assert _status(env, 1, "committed").state == pb.COMMITTED


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
@pytest.mark.parametrize("who", ["trainer-cert", "collector-cert", "party-7-cert"])
def test_peer_rpcs_refuse_non_party_certificates_on_the_peer_port(
    env: SecureEnv, committed: pb.RoundSpec, method: str, who: str
) -> None:
    """Certificates from the cluster's own CA that do not name a party of the cluster."""
    pair = {
        "trainer-cert": lambda: env.client_pair("t1", "trainer"),
        "collector-cert": env.collector_pair,
        "party-7-cert": lambda: env.stray_party_pair(7),
    }[who]()
    assert code_of(_peer_calls(env, peer=True, client=pair)[method]) is DENIED


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
def test_peer_rpcs_are_taken_only_from_the_leader(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    """Party 2 is a genuine party, but only party 0 coordinates rounds."""
    calls = _peer_calls(env, peer=True, client=env.party_pair(2))
    assert code_of(calls[method]) is DENIED
    assert _status(env, 1, "committed").state == pb.COMMITTED


def test_the_leader_certificate_is_accepted_on_the_peer_port(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    stub = env.peer(1, peer=True, client=env.party_pair(0))
    reply = stub.Manifest(
        peer_pb2.ManifestRequest(round_id="committed", spec_digest=committed_digest(env)),
        timeout=RPC_S,
    )
    assert reply.state == pb.COMMITTED and [h.client_id for h in reply.held] == ["t1", "t2", "t3"]


def committed_digest(env: SecureEnv) -> bytes:
    return bytes(_status(env, 1, "committed").spec_digest)


# --- client RPCs: roles and identities ----------------------------------------------------


def _collector_calls(
    env: SecureEnv, party: int = 0, **channel: object
) -> dict[str, Callable[[], object]]:
    stub = env.agg(party, **channel)  # type: ignore[arg-type]
    return {
        "CreateRound": lambda: stub.CreateRound(
            pb.CreateRoundRequest(spec=spec_msg("by-a-trainer")), timeout=RPC_S
        ),
        "CloseRound": lambda: stub.CloseRound(
            pb.CloseRoundRequest(round_id="committed"), timeout=RPC_S
        ),
        "GetAggregateShare": lambda: list(
            stub.GetAggregateShare(pb.GetAggregateShareRequest(round_id="committed"), timeout=RPC_S)
        ),
    }


@pytest.mark.parametrize("method", ["CreateRound", "CloseRound", "GetAggregateShare"])
def test_a_trainer_may_not_run_rounds_or_fetch_shares(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    err = error_of(_collector_calls(env, client=env.client_pair("t1"))[method])
    assert err.code() is DENIED
    assert "collector" in (err.details() or "")


def test_a_trainer_may_not_fetch_an_open_rounds_share_either(env: SecureEnv) -> None:
    open_round(env, "still-open", ["t1"], LENGTH)
    assert code_of(lambda: _fetch(env, 1, "still-open", env.client_pair("t1"))) is DENIED


@pytest.mark.parametrize("method", ["CreateRound", "CloseRound", "GetAggregateShare"])
def test_a_party_certificate_is_no_collector_credential(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    """A genuine party certificate (the leader's) on the client port identifies a server,
    not the collector; on the peer port the Aggregation service is not served at all."""
    on_client_port = _collector_calls(env, 1, client=env.party_pair(0))
    err = error_of(on_client_port[method])
    assert err.code() is UNAUTH
    assert "identifies a server, not a trainer or the collector" in (err.details() or "")
    on_peer_port = _collector_calls(env, 1, peer=True, client=env.collector_pair())
    assert code_of(on_peer_port[method]) is grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("whole", [False, True], ids=["Upload", "UploadWhole"])
def test_upload_naming_another_client_is_denied(env: SecureEnv, whole: bool) -> None:
    round_id = f"impersonation-{int(whole)}"
    create_round(env, spec_msg(round_id, LENGTH))
    msgs = seed_upload(round_id, "victim", 1, LENGTH)

    def upload(stub: Any) -> Any:
        if whole:
            return stub.UploadWhole(pb.UploadRequest(header=msgs[0].header), timeout=RPC_S)
        return stub.Upload(iter(msgs), timeout=RPC_S)

    err = error_of(lambda: upload(env.as_trainer(1, "mallory")))
    assert err.code() is DENIED
    assert "authenticated as 'mallory' but the request names client 'victim'" in (
        err.details() or ""
    )
    # The collector is no trainer: it may not upload for anyone either.
    err = error_of(lambda: upload(env.as_collector(1)))
    assert err.code() is DENIED
    assert _status(env, 1, round_id).received == 0
    # The victim's own certificate is accepted for the very same messages.
    assert upload(env.as_trainer(1, "victim")).party == 1


def test_metadata_claims_change_nobody_s_identity(env: SecureEnv, committed: pb.RoundSpec) -> None:
    """Only the certificate identifies the caller: a header naming the collector (an old
    bearer token, say) does not make a trainer the collector."""
    stub = env.as_trainer(1, "t1")
    md = (("authorization", "Bearer collector"), ("x-mpcagg-client-id", "collector"))
    err = error_of(
        lambda: stub.CreateRound(
            pb.CreateRoundRequest(spec=spec_msg("by-header")), metadata=md, timeout=RPC_S
        )
    )
    assert err.code() is DENIED and "caller 't1' has role trainer" in (err.details() or "")


# --- who may fetch -------------------------------------------------------------------------


def _ring_sum(env: SecureEnv, round_id: str, client: KeyPair) -> np.ndarray:
    total = np.zeros(LENGTH, dtype=np.uint64)
    for party in range(env.n):
        msgs = _fetch(env, party, round_id, client)
        assert msgs[0].WhichOneof("body") == "header"
        assert msgs[0].header.cohort_size == 2
        data = b"".join(m.chunk for m in msgs[1:])
        total += np.frombuffer(data, dtype="<u8")
    return total


def test_cohort_trainers_may_fetch_when_the_spec_allows(env: SecureEnv) -> None:
    open_round(env, "open-result", ["f1", "f2"], LENGTH, trainers_may_fetch=True)
    upload_seed(env, "open-result", "late", 1, LENGTH)  # reaches one party only: outside the cohort
    assert close_round(env, "open-result").cohort_size == 2
    by_collector = _ring_sum(env, "open-result", env.collector_pair())
    by_trainer = _ring_sum(env, "open-result", env.client_pair("f1"))
    assert np.array_equal(by_collector, by_trainer)
    for outsider in ("late", "stranger"):
        pair = env.client_pair(outsider)
        assert code_of(lambda p=pair: _fetch(env, 1, "open-result", p)) is DENIED


def test_cohort_trainers_may_not_fetch_when_the_spec_does_not_allow(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    t1 = env.client_pair("t1")
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "committed", t1)) is DENIED


# --- privacy guards ------------------------------------------------------------------------


def _commit(
    env: SecureEnv, party: int, round_id: str, cohort: list[str], by: int = 0
) -> pb.RoundStatus:
    stub = env.peer(party, peer=True, client=env.party_pair(by))
    spec_digest = bytes(_status(env, party, round_id).spec_digest)
    held = [Holding(c, sharing_of(c)) for c in cohort]
    reply: pb.RoundStatus = stub.Commit(
        peer_pb2.CommitRequest(
            round_id=round_id,
            cohort=[pb.Holding(client_id=h.client_id, sharing_id=h.sharing_id) for h in held],
            cohort_digest=cohort_digest(held),
            spec_digest=spec_digest,
        ),
        timeout=RPC_S,
    )
    return reply


def test_each_server_enforces_min_clients(env: SecureEnv) -> None:
    """A commit below min_clients sent straight to a non-leader, with the leader's own
    certificate, is refused there and leaves the round open."""
    open_round(env, "small", ["s1", "s2", "s3"], LENGTH, min_clients=3)
    err = error_of(lambda: _commit(env, 1, "small", ["s1", "s2"]))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "min_clients" in (err.details() or "")
    assert code_of(lambda: _fetch(env, 1, "small", env.collector_pair())) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert _status(env, 1, "small").state == pb.OPEN, "a refused commit changes nothing"
    # The same cohort padded with a repeated id is no bigger.
    err = error_of(lambda: _commit(env, 1, "small", ["s1", "s1", "s2"]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _status(env, 1, "small").state == pb.OPEN


def test_a_cohort_below_min_clients_fails_the_round_and_reveals_nothing(env: SecureEnv) -> None:
    open_round(env, "too-few", ["u1"], LENGTH, min_clients=2)
    status = close_round(env, "too-few")
    assert status.state == pb.FAILED and "min_clients" in status.reason
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "too-few", env.collector_pair())) is (
            grpc.StatusCode.FAILED_PRECONDITION
        )


def test_a_committed_round_is_never_recommitted_to_another_cohort(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    before = [_fetch(env, p, "committed", env.collector_pair()) for p in range(env.n)]
    # The same cohort again: idempotent, at every party.
    for party in range(env.n):
        again = _commit(env, party, "committed", ["t1", "t2", "t3"])
        assert again.state == pb.COMMITTED and again.cohort_size == 3
    # A subset (still >= min_clients) would reveal t3 by differencing: refused everywhere.
    for party in range(env.n):
        err = error_of(lambda p=party: _commit(env, p, "committed", ["t1", "t2"]))
        assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert close_round(env, "committed").cohort_size == 3
    after = [_fetch(env, p, "committed", env.collector_pair()) for p in range(env.n)]
    assert before == after
    # Late uploads cannot change it either.
    assert code_of(lambda: upload_seed(env, "committed", "t9", 1, LENGTH)) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )


def test_a_committed_round_cannot_be_failed_afterwards(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    stub = env.peer(2, peer=True, client=env.party_pair(0))
    err = error_of(
        lambda: stub.Fail(peer_pb2.FailRequest(round_id="committed", reason="x"), timeout=RPC_S)
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_servers_are_still_serving(env: SecureEnv, tmp_path: Path) -> None:
    env.assert_all_serving()
