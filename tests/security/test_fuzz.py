"""Hostile input: malformed, truncated, oversized, out-of-order and type-confused messages
to every RPC, on one cluster shared by the module (hypothesis, bounded example counts).

An honest round stays open while the fuzzing runs against it. Every refusal must be
a deliberate status (never a hang, never an unexpected exception in a handler), and
afterwards every server is SERVING, the honest round's sum is exact over exactly the
honest cohort, and a following honest round is exact too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpcagg import Collector, SecureAggregator
from mpcagg.ops.credentials import KeyPair
from mpcagg.protocol.identity import Role
from mpcagg.protocol.spec import cohort_digest
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import peer_pb2
from tests.security.conftest import (
    full_upload,
    seed_upload,
    spec_msg,
)
from tests.security.fuzz_world import (
    DESERIALIZE,
    FUZZERS,
    HONEST,
    LENGTH,
    REFUSALS,
    ROUND,
    RPC_S,
    VICTIM,
    Code,
    World,
    assert_refused,
    call_outcome,
    fuzz_world,
    update,
)

pytestmark = pytest.mark.timeout(240)

_long = st.integers(1000, 7000).map(lambda n: "L" * n)
"""A string near the message size limit: error messages must not grow with it."""
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from fuzz_world(tmp_path_factory.mktemp("fuzz"))


# --- upload streams --------------------------------------------------------------------

_round_ids = st.sampled_from([ROUND, VICTIM, "no-such-round", ""]) | st.text(max_size=12) | _long
_client_ids = st.sampled_from(FUZZERS + HONEST) | st.text(max_size=12) | _long
_headers = st.builds(
    pb.UploadHeader,
    round_id=_round_ids,
    client_id=_client_ids,
    sharing_id=st.binary(min_size=16, max_size=16) | st.binary(max_size=20),
    party=st.sampled_from([1]) | st.integers(0, 2**32 - 1),
    kind=st.integers(0, 4),
    length=st.sampled_from([LENGTH]) | st.integers(0, 2**64 - 1),
    payload_digest=st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
    seed=st.binary(min_size=32, max_size=32) | st.binary(max_size=40),
)
_messages = st.one_of(
    _headers.map(lambda h: pb.UploadMessage(header=h)),
    st.binary(max_size=LENGTH * 8 + 16).map(lambda b: pb.UploadMessage(chunk=b)),
    st.just(pb.UploadMessage()),
)


@settings(FUZZ, max_examples=150)
@given(
    messages=st.lists(_messages, max_size=6),
    caller=st.sampled_from(FUZZERS + HONEST),
    party=st.sampled_from([0, 1]),
)
def test_random_upload_streams_are_refused(
    world: World, messages: list[pb.UploadMessage], caller: str, party: int
) -> None:
    stub = world.stub(party, caller)
    outcome = call_outcome(lambda: stub.Upload(iter(messages), timeout=RPC_S))
    # A concurrent retry of the same client is told to come back (UNAVAILABLE).
    assert_refused(outcome, REFUSALS | {Code.UNAVAILABLE})


def _valid(world: World, kind: str, client_id: str) -> list[pb.UploadMessage]:
    if kind == "seed":
        seed = hashlib.sha256(client_id.encode()).digest()
        return seed_upload(ROUND, client_id, 1, LENGTH, seed=seed)
    data = hashlib.shake_256(client_id.encode()).digest(LENGTH * 8)
    return full_upload(ROUND, client_id, 1, data, chunk=40)


def _header(msgs: list[pb.UploadMessage]) -> pb.UploadHeader:
    return msgs[0].header


def _set(**fields: Any) -> Callable[[list[pb.UploadMessage]], list[pb.UploadMessage]]:
    def mutate(msgs: list[pb.UploadMessage]) -> list[pb.UploadMessage]:
        for name, value in fields.items():
            setattr(_header(msgs), name, value)
        return msgs

    return mutate


CHUNK = pb.UploadMessage(chunk=b"\x01" * 8)

# name: (share kinds it applies to, mutation, expected code)
MUTATIONS: dict[str, tuple[tuple[str, ...], Any, Code]] = {
    "header after chunks": (("full",), lambda m: [*m, m[0]], Code.INVALID_ARGUMENT),
    "second header first": (("seed", "full"), lambda m: [m[0], *m], Code.INVALID_ARGUMENT),
    "chunks before the header": (("full",), lambda m: [*m[1:], m[0]], Code.INVALID_ARGUMENT),
    "only chunks": (("full",), lambda m: m[1:], Code.INVALID_ARGUMENT),
    "nothing at all": (("seed", "full"), lambda m: [], Code.INVALID_ARGUMENT),
    "empty message first": (("seed",), lambda m: [pb.UploadMessage(), *m], Code.INVALID_ARGUMENT),
    "empty message later": (("full",), lambda m: [*m, pb.UploadMessage()], Code.INVALID_ARGUMENT),
    "chunk past the declared length": (("full",), lambda m: [*m, CHUNK], Code.INVALID_ARGUMENT),
    "truncated": (("full",), lambda m: m[:-1], Code.INVALID_ARGUMENT),
    "truncated mid-element": (
        ("full",),
        lambda m: [*m[:-1], pb.UploadMessage(chunk=m[-1].chunk[:-3])],
        Code.INVALID_ARGUMENT,
    ),
    "header only": (("full",), lambda m: m[:1], Code.INVALID_ARGUMENT),
    "empty chunk": (
        ("full",),
        lambda m: [m[0], pb.UploadMessage(chunk=b""), *m[1:]],
        Code.INVALID_ARGUMENT,
    ),
    "chunk after a seed": (("seed",), lambda m: [*m, CHUNK], Code.INVALID_ARGUMENT),
    "wrong party": (("seed", "full"), _set(party=2), Code.INVALID_ARGUMENT),
    "huge party": (("seed", "full"), _set(party=2**32 - 1), Code.INVALID_ARGUMENT),
    "unknown round": (("seed", "full"), _set(round_id="nope"), Code.NOT_FOUND),
    "round id with a slash": (("seed", "full"), _set(round_id="../fuzz"), Code.NOT_FOUND),
    "seed of 31 bytes": (("seed",), _set(seed=b"\x02" * 31), Code.INVALID_ARGUMENT),
    "seed of 33 bytes": (("seed",), _set(seed=b"\x02" * 33), Code.INVALID_ARGUMENT),
    "no seed": (("seed",), _set(seed=b""), Code.INVALID_ARGUMENT),
    "seed on a full share": (("full",), _set(seed=b"\x02" * 32), Code.INVALID_ARGUMENT),
    "kind unspecified": (
        ("seed", "full"),
        _set(kind=pb.SHARE_KIND_UNSPECIFIED),
        Code.INVALID_ARGUMENT,
    ),
    "unknown kind": (("seed", "full"), _set(kind=7), Code.INVALID_ARGUMENT),
    "seed sent as full": (("seed",), _set(kind=pb.FULL), Code.INVALID_ARGUMENT),
    "full sent as seed": (("full",), _set(kind=pb.SEED), Code.INVALID_ARGUMENT),
    "empty digest": (("seed", "full"), _set(payload_digest=b""), Code.INVALID_ARGUMENT),
    "wrong digest": (("seed", "full"), _set(payload_digest=b"\x03" * 32), Code.INVALID_ARGUMENT),
    "short sharing id": (("seed", "full"), _set(sharing_id=b"\x04" * 15), Code.INVALID_ARGUMENT),
    "length zero": (("seed", "full"), _set(length=0), Code.INVALID_ARGUMENT),
    "length plus one": (("seed", "full"), _set(length=LENGTH + 1), Code.INVALID_ARGUMENT),
    "length 2^64-1": (("seed", "full"), _set(length=2**64 - 1), Code.INVALID_ARGUMENT),
    "another client's id": (("seed",), _set(client_id="a/b"), Code.PERMISSION_DENIED),
}


@settings(FUZZ, max_examples=120)
@given(
    mutation=st.sampled_from(sorted(MUTATIONS)),
    kind=st.sampled_from(["seed", "full"]),
)
def test_mutated_uploads_are_refused_with_the_right_code(
    world: World, mutation: str, kind: str
) -> None:
    kinds, mutate, expected = MUTATIONS[mutation]
    if kind not in kinds:
        kind = kinds[0]
    client_id = f"m{next(world.counter)}"
    msgs = mutate(_valid(world, kind, client_id))
    stub = world.stub(1, client_id)
    code, details = call_outcome(lambda: stub.Upload(iter(msgs), timeout=RPC_S))
    assert code is expected, f"{mutation} ({kind}): {code} {details}"
    # Nothing of the refused upload stays behind: the same client can now upload for real.
    code, details = call_outcome(
        lambda: stub.Upload(iter(_valid(world, kind, client_id)), timeout=RPC_S)
    )
    assert code is Code.OK, f"after {mutation} ({kind}): {code} {details}"


def test_oversized_chunks_and_headers_are_refused(world: World) -> None:
    stub = world.stub(1, "big")
    head = _valid(world, "full", "big")[0]
    too_big = pb.UploadMessage(chunk=bytes(9000))
    for msgs in ([head, too_big], [pb.UploadMessage(header=pb.UploadHeader(seed=bytes(9000)))]):
        code, details = call_outcome(lambda m=msgs: stub.Upload(iter(m), timeout=RPC_S))
        assert code is Code.RESOURCE_EXHAUSTED, details


# --- unary RPCs ------------------------------------------------------------------------

_shapes = st.lists(st.integers(-2, 2**40) | st.integers(0, 8), max_size=4) | st.lists(
    st.integers(-(2**63), 2**63 - 1), min_size=100, max_size=400
)
_specs = st.builds(
    pb.RoundSpec,
    round_id=st.text(max_size=10).filter(lambda r: r not in (ROUND, VICTIM)),
    tensors=st.lists(
        st.builds(pb.TensorSpec, name=st.text(max_size=8) | _long, shape=_shapes), max_size=4
    ),
    precision_bits=st.integers(0, 2**32 - 1) | st.integers(0, 60),
    bound=st.floats(allow_nan=True, allow_infinity=True),
    min_clients=st.integers(0, 2**32 - 1) | st.integers(0, 5),
    max_clients=st.integers(0, 2**32 - 1) | st.integers(0, 50),
    deadline_unix=st.floats(allow_nan=True, allow_infinity=True),
    n_parties=st.integers(0, 2**32 - 1) | st.just(3),
    trainers_may_fetch=st.booleans(),
)


@settings(FUZZ, max_examples=80)
@given(spec=_specs)
def test_random_round_specs(world: World, spec: pb.RoundSpec) -> None:
    """At party 1 only (a round created at one party never closes: harmless)."""
    stub = world.stub(1, "collector", "collector")
    req = pb.CreateRoundRequest(spec=spec)
    assert_refused(call_outcome(lambda: stub.CreateRound(req, timeout=RPC_S)), REFUSALS | {Code.OK})


_other_rounds = (st.text(max_size=300) | _long).filter(lambda r: r not in (ROUND, VICTIM))


@settings(FUZZ, max_examples=60)
@given(round_id=_other_rounds, role=st.sampled_from(["collector", "trainer"]))
def test_random_round_ids(world: World, round_id: str, role: Role) -> None:
    caller = "collector" if role == "collector" else "f0"
    for party in (0, 1):
        stub = world.stub(party, caller, role)
        calls = [
            lambda s=stub: s.GetRound(pb.GetRoundRequest(round_id=round_id), timeout=RPC_S),
            lambda s=stub: s.CloseRound(pb.CloseRoundRequest(round_id=round_id), timeout=RPC_S),
            lambda s=stub: s.GetAggregateShare(
                pb.GetAggregateShareRequest(round_id=round_id), timeout=RPC_S
            ),
        ]
        for call in calls:
            assert_refused(call_outcome(call))


_cohorts = st.lists(st.sampled_from(FUZZERS + HONEST) | st.text(max_size=8) | _long, max_size=5)


@settings(FUZZ, max_examples=80)
@given(
    round_id=st.sampled_from([VICTIM, "no-such-round"]) | _other_rounds,
    digest=st.binary(max_size=40),
    cohort=_cohorts,
    honest_digest=st.booleans(),
    method=st.sampled_from(["Manifest", "Commit", "Fail"]),
    reason=st.text(max_size=50),
)
def test_random_peer_calls(
    world: World,
    round_id: str,
    digest: bytes,
    cohort: list[str],
    honest_digest: bool,
    method: str,
    reason: str,
) -> None:
    """With the leader's certificate, so the calls reach the peer handlers."""
    stub = world.env.peer(1, peer=True, client=world.env.party_pair(0))
    sharing = digest[:16]  # 0-16 bytes: well-formed or not
    lines = sorted(f"{c}:{sharing.hex()}\n" for c in cohort)  # cohort_digest's form, unvalidated
    cohort_hash = hashlib.sha256("".join(lines).encode()).digest() if honest_digest else digest
    held = [pb.Holding(client_id=c, sharing_id=sharing) for c in cohort]
    requests = {
        "Manifest": peer_pb2.ManifestRequest(round_id=round_id, spec_digest=digest),
        "Commit": peer_pb2.CommitRequest(
            round_id=round_id, cohort=held, cohort_digest=cohort_hash, spec_digest=digest
        ),
        "Fail": peer_pb2.FailRequest(round_id=round_id, reason=reason),
    }
    call = getattr(stub, method)
    outcome = call_outcome(lambda: call(requests[method], timeout=RPC_S))
    assert_refused(outcome, REFUSALS | {Code.OK})
    assert outcome[0] is not Code.OK or method == "Fail", outcome


# --- raw bytes and type confusion -------------------------------------------------------

METHODS = {
    # path: (kind, needs the peer port)
    "/mpcagg.v1.Aggregation/CreateRound": ("unary", False),
    "/mpcagg.v1.Aggregation/GetRound": ("unary", False),
    "/mpcagg.v1.Aggregation/CloseRound": ("unary", False),
    "/mpcagg.v1.Aggregation/GetAggregateShare": ("server-stream", False),
    "/mpcagg.v1.Aggregation/Upload": ("client-stream", False),
    "/mpcagg.v1.Peer/Manifest": ("unary", True),
    "/mpcagg.v1.Peer/Commit": ("unary", True),
    "/mpcagg.v1.Peer/Fail": ("unary", True),
}

SAMPLES = [
    pb.UploadMessage(header=pb.UploadHeader(round_id=VICTIM, client_id="f0", length=LENGTH)),
    pb.UploadMessage(chunk=b"\x09" * 16),
    pb.CreateRoundRequest(spec=spec_msg("confused", 4)),
    pb.RoundSpec(round_id=VICTIM),
    peer_pb2.CommitRequest(
        round_id=VICTIM,
        cohort=[pb.Holding(client_id=c, sharing_id=b"\x00" * 16) for c in ("h0", "h1")],
    ),
    peer_pb2.ManifestRequest(round_id=VICTIM, spec_digest=b"\x01" * 32),
    peer_pb2.FailRequest(round_id="confused", reason="type confusion"),
    pb.GetAggregateShareRequest(round_id=VICTIM),
    pb.AggregateShareMessage(chunk=b"\x05" * 64),
]
_payloads = st.binary(max_size=300) | st.sampled_from([m.SerializeToString() for m in SAMPLES])


def _raw_call(world: World, path: str, payloads: list[bytes], caller: KeyPair) -> tuple[Code, str]:
    """``path`` with raw bytes: peer methods as the leader on the peer port, the others as
    ``caller`` on the client port."""
    kind, peer = METHODS[path]
    env = world.env
    channel = (
        env.channel(1, peer=True, client=env.party_pair(0))
        if peer
        else env.channel(1, client=caller)
    )
    if kind == "unary":
        rpc = channel.unary_unary(path)
        return call_outcome(lambda: rpc(payloads[0], timeout=RPC_S))
    if kind == "server-stream":
        stream = channel.unary_stream(path)
        return call_outcome(lambda: stream(payloads[0], timeout=RPC_S))
    upload = channel.stream_unary(path)
    return call_outcome(lambda: upload(iter(payloads), timeout=RPC_S))


@settings(FUZZ, max_examples=150)
@given(
    path=st.sampled_from(sorted(METHODS)),
    payloads=st.lists(_payloads, min_size=1, max_size=4),
    role=st.sampled_from(["collector", "trainer"]),
)
def test_garbage_and_type_confused_bytes(
    world: World, path: str, payloads: list[bytes], role: Role
) -> None:
    """Identity serializers: the bytes go on the wire as they are."""
    caller = world.env.client_pair("collector" if role == "collector" else "f1", role)
    code, details = _raw_call(world, path, payloads, caller)
    if code is Code.INTERNAL:
        assert details == DESERIALIZE  # gRPC's own answer to unparsable bytes
        return
    assert_refused((code, details), REFUSALS | {Code.OK, Code.UNAVAILABLE})


# --- afterwards ---------------------------------------------------------------------------


def test_after_the_fuzzing_every_server_serves_and_rounds_are_exact(world: World) -> None:
    env = world.env
    env.assert_all_serving()
    for party in range(env.n):
        log = env.cluster.log_text(party)
        assert "internal error in handler" not in log, log[-3000:]
        # The only errors logged are gRPC's own about bytes that do not parse.
        errors = [ln for ln in log.splitlines() if " ERROR " in ln or " CRITICAL " in ln]
        assert all(
            ln.endswith("ERROR grpc._common: Exception deserializing message!") for ln in errors
        )
        assert log.count("Traceback") == len(errors)
    config = env.cluster.config
    with Collector(config, **env.cluster.client_kwargs("collector", "collector")) as collector:
        closed = collector.close(ROUND, wait_s=20)
        assert closed.cohort_size == len(HONEST), closed
        # The honest round, fuzzed while open, reveals exactly the honest sum.
        result = collector.result(ROUND, world.spec)
        assert np.array_equal(result.sum["w"], world.expected)
        assert result.cohort_digest == cohort_digest(world.held)
        # And a following honest round is exact too.
        spec2 = collector.open_round("after", update(0), min_clients=2)
        expected = np.zeros(LENGTH)
        for k, cid in enumerate(HONEST):
            with SecureAggregator(config, cid, **env.cluster.client_kwargs(cid)) as trainer:
                assert trainer.submit(spec2, update(k + 3)).complete
            expected += update(k + 3)["w"]
        assert collector.close("after", wait_s=20).cohort_size == len(HONEST)
        assert np.array_equal(collector.result("after", spec2).sum["w"], expected)
    env.assert_all_serving()
