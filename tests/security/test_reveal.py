"""Reveal mode ``servers``: who can fetch what, and who may talk in the parties' group.

A TLS cluster of real server processes opens rounds whose spec says ``reveal =
servers``. Then, at every party:

* no aggregate share is served to anyone (collector or trainer);
* the collector reads each party's reveal *state* (digests and counts only) and never
  the sum; a cohort trainer gets the sum only if the spec says ``trainers_may_fetch``,
  another trainer never; a party certificate is not a client on the client port;
* the Group service is served on the peer port only, to party certificates of the
  cluster only (not trainers, the collector, a party index outside the cluster), and
  a frame must name as sender the party whose certificate sent it; a group for a
  collector-mode round, or bound to another cohort, is refused.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from mpcagg.protocol.group import GroupMessage, Hello, binding
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import group_pb2_grpc, reveal_pb2, reveal_pb2_grpc
from mpcagg.wire import group as wire
from tests.security.conftest import (
    RPC_S,
    SecureEnv,
    code_of,
    create_round,
    error_of,
    seed_upload,
    spec_msg,
    start_env,
)

pytestmark = pytest.mark.timeout(180)
LENGTH = 6


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("reveal-authz"))


def _reveal(env: SecureEnv, party: int, **kw: object) -> reveal_pb2_grpc.RevealStub:
    return reveal_pb2_grpc.RevealStub(env.channel(party, **kw))  # type: ignore[arg-type]


def _group(env: SecureEnv, party: int, **kw: object) -> group_pb2_grpc.GroupStub:
    return group_pb2_grpc.GroupStub(env.channel(party, **kw))  # type: ignore[arg-type]


def _open_round(env: SecureEnv, round_id: str, *, servers: bool, may_fetch: bool) -> pb.RoundStatus:
    spec = spec_msg(round_id, LENGTH, trainers_may_fetch=may_fetch)
    if servers:
        spec.reveal = pb.REVEAL_MODE_SERVERS
    create_round(env, spec)
    for cid in ("a", "b"):
        for party in range(env.n):
            msgs = seed_upload(round_id, cid, party, LENGTH, seed=secrets.token_bytes(32))
            env.as_trainer(party, cid).Upload(iter(msgs), timeout=RPC_S)
    closed = env.as_collector(0).CloseRound(pb.CloseRoundRequest(round_id=round_id), timeout=15)
    assert closed.state == pb.COMMITTED
    return closed  # type: ignore[no-any-return]


def _wait_revealed(env: SecureEnv, round_id: str) -> list[reveal_pb2.RevealStatus]:
    deadline = time.monotonic() + 30
    while True:
        req = reveal_pb2.GetRevealRequest(round_id=round_id)
        states = [
            _reveal(env, p, client=env.collector_pair()).GetRevealStatus(req, timeout=RPC_S)
            for p in range(env.n)
        ]
        if all(s.state == reveal_pb2.REVEALED for s in states):
            return states
        assert time.monotonic() < deadline, states
        time.sleep(0.1)


@pytest.fixture(scope="module")
def rounds(env: SecureEnv) -> dict[str, pb.RoundStatus]:
    out = {
        "open-to-cohort": _open_round(env, "open-to-cohort", servers=True, may_fetch=True),
        "servers-only": _open_round(env, "servers-only", servers=True, may_fetch=False),
        "by-collector": _open_round(env, "by-collector", servers=False, may_fetch=False),
    }
    _wait_revealed(env, "open-to-cohort")
    _wait_revealed(env, "servers-only")
    return out


def _revealed_sum(stub: reveal_pb2_grpc.RevealStub, round_id: str) -> list[object]:
    req = reveal_pb2.GetRevealRequest(round_id=round_id)
    return list(stub.GetRevealedSum(req, timeout=RPC_S))


# --- the client port ------------------------------------------------------------------------


def test_no_aggregate_share_is_served_in_servers_mode(
    env: SecureEnv, rounds: dict[str, pb.RoundStatus]
) -> None:
    req = pb.GetAggregateShareRequest(round_id="open-to-cohort")
    for party in range(env.n):
        for stub in (env.as_collector(party), env.as_trainer(party, "a")):
            err = error_of(lambda s=stub: list(s.GetAggregateShare(req, timeout=RPC_S)))
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "reveal mode servers" in (err.details() or "")
    # The collector-mode round next to them still serves its shares to the collector.
    col = pb.GetAggregateShareRequest(round_id="by-collector")
    served = list(env.as_collector(0).GetAggregateShare(col, timeout=RPC_S))
    assert served[0].header.length == LENGTH


def test_the_collector_sees_the_reveal_state_and_never_the_sum(
    env: SecureEnv, rounds: dict[str, pb.RoundStatus]
) -> None:
    cohort = rounds["open-to-cohort"].cohort_digest
    for party in range(env.n):
        stub = _reveal(env, party, client=env.collector_pair())
        status = stub.GetRevealStatus(
            reveal_pb2.GetRevealRequest(round_id="open-to-cohort"), timeout=RPC_S
        )
        assert status.state == reveal_pb2.REVEALED and status.cohort_digest == cohort
        # Nothing in it but ids, counts, a state, a reason and two 32-byte digests.
        assert {f.name for f, _ in status.ListFields()} <= {
            "round_id", "party", "state", "reason", "cohort_size", "cohort_digest", "spec_digest"
        }  # fmt: skip
        err = error_of(lambda s=stub: _revealed_sum(s, "open-to-cohort"))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED


def test_only_cohort_trainers_get_the_sum_and_only_when_the_spec_allows(
    env: SecureEnv, rounds: dict[str, pb.RoundStatus]
) -> None:
    sums = []
    for party in range(env.n):
        msgs = _revealed_sum(_reveal(env, party, client=env.client_pair("a")), "open-to-cohort")
        header = msgs[0].header  # type: ignore[attr-defined]
        assert header.status.party == party and header.length == LENGTH
        assert header.status.cohort_size == 2
        sums.append(b"".join(m.chunk for m in msgs[1:]))  # type: ignore[attr-defined]
    assert len(sums[0]) == 8 * LENGTH and sums == [sums[0]] * env.n  # the same sum everywhere
    for party in range(env.n):
        outsider = _reveal(env, party, client=env.client_pair("c"))  # not in the cohort
        assert code_of(lambda s=outsider: _revealed_sum(s, "open-to-cohort")) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        member = _reveal(env, party, client=env.client_pair("a"))
        assert code_of(lambda s=member: _revealed_sum(s, "servers-only")) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # A party's certificate identifies a server, not a client.
        as_party = _reveal(env, party, client=env.party_pair(party))
        assert code_of(lambda s=as_party: _revealed_sum(s, "open-to-cohort")) is (
            grpc.StatusCode.UNAUTHENTICATED
        )


# --- the peer port: the group ------------------------------------------------------------------


def _hello(round_id: str, bound: bytes, src: int, dst: int) -> Iterator[object]:
    return wire.hello_frames(Hello(round_id, bound, src, dst, secrets.token_bytes(16)))


def test_group_frames_come_from_parties_of_the_cluster_only(
    env: SecureEnv, rounds: dict[str, pb.RoundStatus]
) -> None:
    status = rounds["open-to-cohort"]
    bound = binding(status.spec_digest, status.cohort_digest)

    def send(party: int, src: int, **kw: object) -> grpc.StatusCode:
        stub = _group(env, party, peer=True, **kw)
        return code_of(
            lambda: stub.Send(_hello("open-to-cohort", bound, src, party), timeout=RPC_S)
        )

    # Party 1 as itself: held (its window is open); as party 0: refused.
    assert send(2, 1, client=env.party_pair(1)) is grpc.StatusCode.OK
    assert send(2, 0, client=env.party_pair(1)) is grpc.StatusCode.PERMISSION_DENIED
    for who in (env.client_pair("a"), env.collector_pair(), env.stray_party_pair(7)):
        assert send(2, 1, client=who) is grpc.StatusCode.PERMISSION_DENIED
    # The Group service is not served on the client port, the Reveal service not on the
    # peer port.
    client_port = _group(env, 2, client=env.client_pair("a"))
    assert (
        code_of(lambda: client_port.Send(_hello("open-to-cohort", bound, 1, 2), timeout=RPC_S))
        is grpc.StatusCode.UNIMPLEMENTED
    )
    peer_port = _reveal(env, 2, peer=True, client=env.party_pair(1))
    req = reveal_pb2.GetRevealRequest(round_id="open-to-cohort")
    assert code_of(lambda: peer_port.GetRevealStatus(req, timeout=RPC_S)) is (
        grpc.StatusCode.UNIMPLEMENTED
    )


def test_a_group_is_only_for_a_servers_round_as_committed(
    env: SecureEnv, rounds: dict[str, pb.RoundStatus]
) -> None:
    party1 = env.party_pair(1)
    stub = _group(env, 0, peer=True, client=party1)
    col = rounds["by-collector"]
    col_bound = binding(col.spec_digest, col.cohort_digest)
    err = error_of(lambda: stub.Send(_hello("by-collector", col_bound, 1, 0), timeout=RPC_S))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED and "collector" in (err.details() or "")
    srv = rounds["open-to-cohort"]
    other = binding(srv.spec_digest, b"\x00" * 32)  # another cohort
    assert (
        code_of(lambda: stub.Send(_hello("open-to-cohort", other, 1, 0), timeout=RPC_S))
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    # A message longer than the round's vector is refused before it is read.
    bound = binding(srv.spec_digest, srv.cohort_digest)
    header = GroupMessage(
        "open-to-cohort", bound, 1, 0, secrets.token_bytes(16), b"\x01" * 16, 0, LENGTH + 1
    )
    frames = wire.message_frames(header, np.zeros(LENGTH + 1, dtype=np.uint64), 1 << 20)
    assert code_of(lambda: stub.Send(frames, timeout=RPC_S)) is grpc.StatusCode.INVALID_ARGUMENT
    env.assert_all_serving()
