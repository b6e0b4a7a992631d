"""Authentication and authorisation of every RPC, and the server-side privacy guards.

Who may call what: peer RPCs need a party certificate of this cluster (from the
leader); collector RPCs need the collector role; uploads need the trainer whose id
the request names; a token must be unexpired, untampered, from this cluster's key.
Privacy guards: each server enforces min_clients and one committed cohort per round.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.mpcagg.v1 import aggregation_pb2 as pb
from protos.mpcagg.v1 import peer_pb2
from servers.credentials import load_token_signing_key
from servers.spec import cohort_digest
from servers.tokens import TokenIssuer
from tests.security.conftest import (
    RPC_S,
    SecureEnv,
    code_of,
    create_round,
    error_of,
    manifest_req,
    seed_upload,
    spec_msg,
    start_env,
)

pytestmark = pytest.mark.timeout(120)

LENGTH = 4
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTH = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("authz"))


def _upload(env: SecureEnv, round_id: str, client_id: str, party: int) -> pb.UploadReceipt:
    seed = client_id.encode().ljust(32, b".")[:32]
    msgs = seed_upload(round_id, client_id, party, LENGTH, seed=seed)
    reply: pb.UploadReceipt = env.agg(party).Upload(
        iter(msgs), metadata=env.md(client_id), timeout=RPC_S
    )
    return reply


def _open_round(env: SecureEnv, round_id: str, clients: list[str], **kw: object) -> pb.RoundSpec:
    spec = spec_msg(round_id, LENGTH, **kw)  # type: ignore[arg-type]
    create_round(env, spec)
    for cid in clients:
        for party in range(env.n):
            _upload(env, round_id, cid, party)
    return spec


def _close(env: SecureEnv, round_id: str) -> pb.RoundStatus:
    reply: pb.RoundStatus = env.agg(0).CloseRound(
        pb.CloseRoundRequest(round_id=round_id), metadata=env.collector_md(), timeout=15
    )
    return reply


def _fetch(env: SecureEnv, party: int, round_id: str, md: object) -> list[pb.AggregateShareMessage]:
    stream = env.agg(party).GetAggregateShare(
        pb.GetAggregateShareRequest(round_id=round_id), metadata=md, timeout=RPC_S
    )
    return list(stream)


def _status(env: SecureEnv, party: int, round_id: str) -> pb.RoundStatus:
    reply: pb.RoundStatus = env.agg(party).GetRound(
        pb.GetRoundRequest(round_id=round_id), metadata=env.collector_md(), timeout=RPC_S
    )
    return reply


@pytest.fixture(scope="module")
def committed(env: SecureEnv) -> pb.RoundSpec:
    """A committed round (trainers may not fetch) with cohort t1, t2, t3."""
    spec = _open_round(env, "committed", ["t1", "t2", "t3"])
    assert _close(env, "committed").state == pb.COMMITTED
    return spec


# --- peer RPCs --------------------------------------------------------------------------


def _peer_calls(env: SecureEnv, **channel: object) -> dict[str, Callable[[object], object]]:
    stub = env.peer(1, **channel)  # type: ignore[arg-type]
    return {
        "Manifest": lambda md: stub.Manifest(manifest_req("committed"), metadata=md, timeout=RPC_S),
        "Commit": lambda md: stub.Commit(
            peer_pb2.CommitRequest(
                round_id="committed",
                cohort=["t1", "t2"],
                cohort_digest=cohort_digest(["t1", "t2"]),
            ),
            metadata=md,
            timeout=RPC_S,
        ),
        "Fail": lambda md: stub.Fail(
            peer_pb2.FailRequest(round_id="committed", reason="x"), metadata=md, timeout=RPC_S
        ),
    }


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
@pytest.mark.parametrize("role", ["trainer", "collector"])
def test_peer_rpcs_refuse_client_tokens_on_the_client_port(
    env: SecureEnv, committed: pb.RoundSpec, method: str, role: str
) -> None:
    md = env.md("t1" if role == "trainer" else "collector", role)
    assert code_of(lambda: _peer_calls(env)[method](md)) is DENIED


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
@pytest.mark.parametrize("who", ["trainer-cert", "collector-cert", "party-7-cert"])
def test_peer_rpcs_refuse_non_party_certificates_on_the_peer_port(
    env: SecureEnv, committed: pb.RoundSpec, method: str, who: str
) -> None:
    """Certificates from the cluster's own CA that do not name a party of the cluster."""
    pair = {
        "trainer-cert": lambda: env.client_pair("t1", "trainer"),
        "collector-cert": lambda: env.client_pair("collector", "collector"),
        "party-7-cert": lambda: env.stray_party_pair(7),
    }[who]()
    md = env.collector_md()  # a valid token does not help either
    assert code_of(lambda: _peer_calls(env, peer=True, client=pair)[method](md)) is DENIED


@pytest.mark.parametrize("method", ["Manifest", "Commit", "Fail"])
def test_peer_rpcs_are_taken_only_from_the_leader(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    """Party 2 is a genuine party, but only party 0 coordinates rounds."""
    calls = _peer_calls(env, peer=True, client=env.party_pair(2))
    assert code_of(lambda: calls[method](())) is DENIED
    assert _status(env, 1, "committed").state == pb.COMMITTED


def test_the_leader_certificate_is_accepted_on_the_peer_port(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    stub = env.peer(1, peer=True, client=env.party_pair(0))
    reply = stub.Manifest(
        peer_pb2.ManifestRequest(round_id="committed", spec_digest=committed_digest(env)),
        timeout=RPC_S,
    )
    assert reply.state == pb.COMMITTED and list(reply.client_ids) == ["t1", "t2", "t3"]


def committed_digest(env: SecureEnv) -> bytes:
    return bytes(_status(env, 1, "committed").spec_digest)


# --- client RPCs: roles and identities ----------------------------------------------------


def _collector_calls(
    env: SecureEnv, party: int = 0, **channel: object
) -> dict[str, Callable[[object], object]]:
    stub = env.agg(party, **channel)  # type: ignore[arg-type]
    return {
        "CreateRound": lambda md: stub.CreateRound(
            pb.CreateRoundRequest(spec=spec_msg("by-a-trainer")), metadata=md, timeout=RPC_S
        ),
        "CloseRound": lambda md: stub.CloseRound(
            pb.CloseRoundRequest(round_id="committed"), metadata=md, timeout=RPC_S
        ),
        "GetAggregateShare": lambda md: list(
            stub.GetAggregateShare(
                pb.GetAggregateShareRequest(round_id="committed"), metadata=md, timeout=RPC_S
            )
        ),
    }


@pytest.mark.parametrize("method", ["CreateRound", "CloseRound", "GetAggregateShare"])
def test_a_trainer_may_not_run_rounds_or_fetch_shares(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    err = error_of(lambda: _collector_calls(env)[method](env.md("t1")))
    assert err.code() is DENIED
    assert "collector" in (err.details() or "")


def test_a_trainer_may_not_fetch_an_open_rounds_share_either(env: SecureEnv) -> None:
    _open_round(env, "still-open", ["t1"])
    assert code_of(lambda: _fetch(env, 1, "still-open", env.md("t1"))) is DENIED


@pytest.mark.parametrize("method", ["CreateRound", "CloseRound", "GetAggregateShare"])
def test_a_party_certificate_is_no_collector_credential(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    calls = _collector_calls(env, 1, peer=True, client=env.party_pair(0))
    assert code_of(lambda: calls[method](())) is UNAUTH


def test_upload_naming_another_client_is_denied(env: SecureEnv) -> None:
    create_round(env, spec_msg("impersonation", LENGTH))
    msgs = seed_upload("impersonation", "victim", 1, LENGTH)
    err = error_of(lambda: env.agg(1).Upload(iter(msgs), metadata=env.md("mallory"), timeout=RPC_S))
    assert err.code() is DENIED
    # The collector is no trainer: it may not upload for anyone either.
    err = error_of(
        lambda: env.agg(1).Upload(iter(msgs), metadata=env.collector_md(), timeout=RPC_S)
    )
    assert err.code() is DENIED
    assert _status(env, 1, "impersonation").received == 0


def _all_client_calls(env: SecureEnv) -> dict[str, Callable[[object], object]]:
    stub = env.agg(1)
    return {
        "CreateRound": lambda md: stub.CreateRound(
            pb.CreateRoundRequest(spec=spec_msg("anon")), metadata=md, timeout=RPC_S
        ),
        "GetRound": lambda md: stub.GetRound(
            pb.GetRoundRequest(round_id="committed"), metadata=md, timeout=RPC_S
        ),
        "Upload": lambda md: stub.Upload(
            iter(seed_upload("committed", "t1", 1, LENGTH)), metadata=md, timeout=RPC_S
        ),
        "Upload-malformed": lambda md: stub.Upload(
            iter([pb.UploadMessage(chunk=b"x")]), metadata=md, timeout=RPC_S
        ),
        "CloseRound": lambda md: env.agg(0).CloseRound(
            pb.CloseRoundRequest(round_id="committed"), metadata=md, timeout=RPC_S
        ),
        "GetAggregateShare": lambda md: list(
            stub.GetAggregateShare(
                pb.GetAggregateShareRequest(round_id="committed"), metadata=md, timeout=RPC_S
            )
        ),
    }


CLIENT_METHODS = [
    "CreateRound",
    "GetRound",
    "Upload",
    "Upload-malformed",
    "CloseRound",
    "GetAggregateShare",
]


@pytest.mark.parametrize("method", CLIENT_METHODS)
def test_no_credential_is_unauthenticated(
    env: SecureEnv, committed: pb.RoundSpec, method: str
) -> None:
    assert code_of(lambda: _all_client_calls(env)[method](())) is UNAUTH


def _issuer(env: SecureEnv, clock: Callable[[], float] = time.time) -> TokenIssuer:
    key = load_token_signing_key(env.cluster.directory / "certs" / "token-signing-key.pem")
    return TokenIssuer(key, clock=clock)


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _bad_tokens(env: SecureEnv) -> dict[str, str]:
    good = env.cluster.token("collector", "collector")
    assert good is not None
    body, sig = good.split(".")
    claims = json.loads(_unb64(body))
    promoted = _b64(json.dumps({**claims, "sub": "mallory"}, separators=(",", ":")).encode())
    flipped = bytearray(_unb64(sig))
    flipped[0] ^= 1
    an_hour_ago = time.time() - 3600
    return {
        "expired": _issuer(env, clock=lambda: an_hour_ago).issue(
            "collector", "collector", 60, "local"
        ),
        "expired-beyond-leeway": _issuer(env, clock=lambda: time.time() - 100).issue(
            "collector", "collector", 60, "local"
        ),
        "tampered-payload": f"{promoted}.{sig}",
        "tampered-signature": f"{body}.{_b64(bytes(flipped))}",
        "foreign-key": TokenIssuer(Ed25519PrivateKey.generate()).issue(
            "collector", "collector", 3600, "local"
        ),
        "other-cluster": _issuer(env).issue("collector", "collector", 3600, "elsewhere"),
        "truncated": good[:-3],
        "garbage": "not-a-token",
    }


BAD_TOKENS = [
    "expired",
    "expired-beyond-leeway",
    "tampered-payload",
    "tampered-signature",
    "foreign-key",
    "other-cluster",
    "truncated",
    "garbage",
]


@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.parametrize("method", ["GetRound", "CreateRound", "GetAggregateShare"])
def test_bad_tokens_are_unauthenticated(
    env: SecureEnv, committed: pb.RoundSpec, kind: str, method: str
) -> None:
    token = _bad_tokens(env)[kind]
    err = error_of(lambda: _all_client_calls(env)[method](_bearer(token)))
    assert err.code() is UNAUTH, err.details()
    detail = err.details() or ""
    assert token not in detail
    assert token.split(".")[-1] not in detail


def test_a_token_just_past_expiry_is_accepted_within_the_leeway(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    """The 30 s clock-skew leeway, and no more (the expired cases above are beyond it)."""
    token = _issuer(env, clock=lambda: time.time() - 70).issue(
        "collector", "collector", 60, "local"
    )
    assert code_of(lambda: _all_client_calls(env)["GetRound"](_bearer(token))) is grpc.StatusCode.OK


@pytest.mark.parametrize("scheme", ["Basic {t}", "Bearer", "{t}", "bearer  {t}x"])
def test_malformed_authorization_headers_are_unauthenticated(
    env: SecureEnv, committed: pb.RoundSpec, scheme: str
) -> None:
    token = env.cluster.token("collector", "collector")
    md = (("authorization", scheme.format(t=token)),)
    assert code_of(lambda: _all_client_calls(env)["GetRound"](md)) is UNAUTH


# --- who may fetch -------------------------------------------------------------------------


def _ring_sum(env: SecureEnv, round_id: str, md: object) -> np.ndarray:
    total = np.zeros(LENGTH, dtype=np.uint64)
    for party in range(env.n):
        msgs = _fetch(env, party, round_id, md)
        assert msgs[0].WhichOneof("body") == "header"
        assert msgs[0].header.cohort_size == 2
        data = b"".join(m.chunk for m in msgs[1:])
        total += np.frombuffer(data, dtype="<u8")
    return total


def test_cohort_trainers_may_fetch_when_the_spec_allows(env: SecureEnv) -> None:
    _open_round(env, "open-result", ["f1", "f2"], trainers_may_fetch=True)
    _upload(env, "open-result", "late", 1)  # reaches one party only: outside the cohort
    assert _close(env, "open-result").cohort_size == 2
    by_collector = _ring_sum(env, "open-result", env.collector_md())
    by_trainer = _ring_sum(env, "open-result", env.md("f1"))
    assert np.array_equal(by_collector, by_trainer)
    for outsider in ("late", "stranger"):
        assert code_of(lambda o=outsider: _fetch(env, 1, "open-result", env.md(o))) is DENIED


def test_cohort_trainers_may_not_fetch_when_the_spec_does_not_allow(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "committed", env.md("t1"))) is DENIED


# --- privacy guards ------------------------------------------------------------------------


def _commit(
    env: SecureEnv, party: int, round_id: str, cohort: list[str], by: int = 0
) -> pb.RoundStatus:
    stub = env.peer(party, peer=True, client=env.party_pair(by))
    spec_digest = bytes(_status(env, party, round_id).spec_digest)
    reply: pb.RoundStatus = stub.Commit(
        peer_pb2.CommitRequest(
            round_id=round_id,
            cohort=cohort,
            cohort_digest=cohort_digest(cohort),
            spec_digest=spec_digest,
        ),
        timeout=RPC_S,
    )
    return reply


def test_each_server_enforces_min_clients(env: SecureEnv) -> None:
    """A commit below min_clients sent straight to a non-leader, with the leader's own
    certificate, is refused there and leaves the round open."""
    _open_round(env, "small", ["s1", "s2", "s3"], min_clients=3)
    err = error_of(lambda: _commit(env, 1, "small", ["s1", "s2"]))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "min_clients" in (err.details() or "")
    assert code_of(lambda: _fetch(env, 1, "small", env.collector_md())) is (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert _status(env, 1, "small").state == pb.OPEN, "a refused commit changes nothing"
    # The same cohort padded with a repeated id is no bigger.
    err = error_of(lambda: _commit(env, 1, "small", ["s1", "s1", "s2"]))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert _status(env, 1, "small").state == pb.OPEN


def test_a_cohort_below_min_clients_fails_the_round_and_reveals_nothing(env: SecureEnv) -> None:
    _open_round(env, "too-few", ["u1"], min_clients=2)
    status = _close(env, "too-few")
    assert status.state == pb.FAILED and "min_clients" in status.reason
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "too-few", env.collector_md())) is (
            grpc.StatusCode.FAILED_PRECONDITION
        )


def test_a_committed_round_is_never_recommitted_to_another_cohort(
    env: SecureEnv, committed: pb.RoundSpec
) -> None:
    before = [_fetch(env, p, "committed", env.collector_md()) for p in range(env.n)]
    # The same cohort again: idempotent, at every party.
    for party in range(env.n):
        again = _commit(env, party, "committed", ["t1", "t2", "t3"])
        assert again.state == pb.COMMITTED and again.cohort_size == 3
    # A subset (still >= min_clients) would reveal t3 by differencing: refused everywhere.
    for party in range(env.n):
        err = error_of(lambda p=party: _commit(env, p, "committed", ["t1", "t2"]))
        assert err.code() is grpc.StatusCode.ALREADY_EXISTS
    assert _close(env, "committed").cohort_size == 3
    after = [_fetch(env, p, "committed", env.collector_md()) for p in range(env.n)]
    assert before == after
    # Late uploads cannot change it either.
    assert code_of(lambda: _upload(env, "committed", "t9", 1)) is (
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
