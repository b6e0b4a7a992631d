"""No RPC ever returns an individual trainer's share.

Checked statically by walking the service descriptors: the set of RPCs and their
message types is exactly the expected one, no response type can reach a message
that carries a client's share (``UploadMessage``, ``UploadHeader``), and the only
response field that carries ring data is ``AggregateShareMessage.chunk``. Checked
live: that field is served only for a COMMITTED round whose cohort has at least
min_clients members, and every bytes field beside it is a 32-byte digest.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mpcagg.servers.interceptor import POLICY
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import group_pb2, peer_pb2, reveal_pb2
from tests.security.conftest import (
    RPC_S,
    SecureEnv,
    code_of,
    create_round,
    seed_upload,
    spec_msg,
    start_env,
)

pytestmark = pytest.mark.timeout(120)

P = "mpcagg.v1."

EXPECTED_RPCS = {
    # (service, method): (request, response, client streaming, server streaming)
    ("Aggregation", "CreateRound"): ("CreateRoundRequest", "RoundStatus", False, False),
    ("Aggregation", "GetRound"): ("GetRoundRequest", "RoundStatus", False, False),
    ("Aggregation", "Upload"): ("UploadMessage", "UploadReceipt", True, False),
    ("Aggregation", "UploadWhole"): ("UploadRequest", "UploadReceipt", False, False),
    ("Aggregation", "CloseRound"): ("CloseRoundRequest", "RoundStatus", False, False),
    ("Aggregation", "GetAggregateShare"): (
        "GetAggregateShareRequest",
        "AggregateShareMessage",
        False,
        True,
    ),
    ("Peer", "Manifest"): ("ManifestRequest", "ManifestReply", False, False),
    ("Peer", "Commit"): ("CommitRequest", "RoundStatus", False, False),
    ("Peer", "Fail"): ("FailRequest", "RoundStatus", False, False),
    # Reveal mode "servers": group frames between parties (peer port), and each party's
    # reveal state and revealed sum (client port).
    ("Group", "Send"): ("GroupFrame", "GroupAck", True, False),
    ("Reveal", "GetRevealStatus"): ("GetRevealRequest", "RevealStatus", False, False),
    ("Reveal", "GetRevealedSum"): ("GetRevealRequest", "RevealedSumMessage", False, True),
}

DIGEST_FIELDS = {
    "RoundStatus.spec_digest",
    "RoundStatus.cohort_digest",
    "UploadReceipt.payload_digest",
    "UploadReceipt.sharing_id",
    "Holding.sharing_id",
    "AggregateShareHeader.cohort_digest",
    "AggregateShareHeader.spec_digest",
    "ManifestReply.cohort_digest",
    "RevealStatus.cohort_digest",
    "RevealStatus.spec_digest",
    "GroupAck.incarnation",  # 16 random bytes naming a party's server process
}
RING_FIELDS = {"AggregateShareMessage.chunk", "RevealedSumMessage.chunk"}
"""The response fields that carry ring elements: an aggregate share's chunks, and (reveal
mode servers) the sum a party revealed, which is served to cohort trainers only."""

SHARE_CARRIERS = {P + "UploadMessage", P + "UploadHeader", P + "UploadRequest"}
"""Request types that carry one client's share (seed or full-share chunks)."""

_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
}


def _services() -> Iterator[tuple[str, object]]:
    for module in (pb, peer_pb2, group_pb2, reveal_pb2):
        yield from module.DESCRIPTOR.services_by_name.items()


def _closure(message: Descriptor) -> list[Descriptor]:
    """``message`` and every message type reachable from its fields."""
    seen: dict[str, Descriptor] = {}
    todo = [message]
    while todo:
        m = todo.pop()
        if m.full_name in seen:
            continue
        seen[m.full_name] = m
        todo += [f.message_type for f in m.fields if f.message_type is not None]
    return list(seen.values())


def _responses() -> list[Descriptor]:
    out: dict[str, Descriptor] = {}
    for _, service in _services():
        for method in service.methods:  # type: ignore[attr-defined]
            for m in _closure(method.output_type):
                out[m.full_name] = m
    return list(out.values())


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.29
        return bool(field.is_repeated)
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def test_the_rpc_surface_is_exactly_the_expected_one() -> None:
    found = {}
    for name, service in _services():
        for m in service.methods:  # type: ignore[attr-defined]
            assert m.input_type.full_name.startswith(P) and m.output_type.full_name.startswith(P)
            found[(name, m.name)] = (
                m.input_type.full_name.removeprefix(P),
                m.output_type.full_name.removeprefix(P),
                m.client_streaming,
                m.server_streaming,
            )
    assert found == EXPECTED_RPCS


def test_every_rpc_has_an_access_policy() -> None:
    """The interceptor passes a method without a :data:`POLICY` entry through unchecked:
    every RPC of the surface must have one."""
    missing = [
        f"/{P}{service}/{method}"
        for service, method in EXPECTED_RPCS
        if f"/{P}{service}/{method}" not in POLICY
    ]
    assert not missing


def test_no_response_can_carry_a_clients_share() -> None:
    reachable = {m.full_name for m in _responses()}
    assert not reachable & SHARE_CARRIERS
    assert reachable == {
        P + n
        for n in (
            "RoundStatus",
            "UploadReceipt",
            "AggregateShareMessage",
            "AggregateShareHeader",
            "ManifestReply",
            "Holding",
            "RoundSpec",
            "TensorSpec",
            "GroupAck",
            "RevealStatus",
            "RevealedSumMessage",
            "RevealedSumHeader",
        )
    }


def test_only_aggregate_share_chunks_carry_ring_data() -> None:
    bytes_fields, bulk_fields = set(), set()
    for message in _responses():
        for field in message.fields:
            name = f"{message.name}.{field.name}"
            if field.type == FieldDescriptor.TYPE_BYTES:
                bytes_fields.add(name)
            if _is_repeated(field) and field.type != FieldDescriptor.TYPE_STRING:
                bulk_fields.add(name)  # a repeated number or bytes could hold a vector
            assert not (_is_repeated(field) and field.type == FieldDescriptor.TYPE_STRING)
    assert bytes_fields == DIGEST_FIELDS | RING_FIELDS
    # Repeated fields: the spec's tensors and their shapes (the spec is public), and a
    # manifest's holdings and the folded ones among them (client id and 16-byte sharing
    # id each, for peers only).
    assert bulk_fields == {
        "RoundSpec.tensors",
        "TensorSpec.shape",
        "ManifestReply.held",
        "ManifestReply.folded",
    }
    # Scalars are counts, indices and states, never ring elements (no 64-bit numbers
    # other than the aggregate's length).
    wide = {
        f"{m.name}.{f.name}"
        for m in _responses()
        for f in m.fields
        if f.type in _NUMERIC and f.type not in (FieldDescriptor.TYPE_UINT32,)
    }
    assert wide == {
        "AggregateShareHeader.length",
        "RevealedSumHeader.length",
        "TensorSpec.shape",  # dimensions
        "RoundSpec.bound",  # the public per-coordinate bound
        "RoundSpec.max_weight",  # the public largest weight of a weighted round
        "RoundSpec.deadline_unix",
    }


def test_ring_data_is_served_only_by_get_aggregate_share() -> None:
    carriers = {
        (name, m.name)
        for name, service in _services()
        for m in service.methods  # type: ignore[attr-defined]
        if any(
            f"{c.name}.{f.name}" in RING_FIELDS for c in _closure(m.output_type) for f in c.fields
        )
    }
    assert carriers == {("Aggregation", "GetAggregateShare"), ("Reveal", "GetRevealedSum")}


# --- live ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEnv]:
    yield from start_env(tmp_path_factory.mktemp("descriptors"))


def _fetch(env: SecureEnv, party: int, round_id: str) -> list[pb.AggregateShareMessage]:
    stub = env.as_collector(party)
    req = pb.GetAggregateShareRequest(round_id=round_id)
    return list(stub.GetAggregateShare(req, timeout=RPC_S))


def _digests(message: object) -> list[tuple[str, bytes]]:
    return [
        (field.name, value)
        for field, value in message.ListFields()  # type: ignore[attr-defined]
        if field.type == FieldDescriptor.TYPE_BYTES and field.name != "chunk"
    ]


def test_aggregate_shares_only_for_committed_cohorts_of_min_clients(env: SecureEnv) -> None:
    length, min_clients = 3, 2
    responses: list[object] = []
    create_round(env, spec_msg("live", length, min_clients=min_clients))
    for cid in ("a", "b"):
        for party in range(env.n):
            msgs = seed_upload("live", cid, party, length, seed=cid.encode() * 32)
            responses.append(env.as_trainer(party, cid).Upload(iter(msgs), timeout=RPC_S))
    # OPEN: nothing is served at any party.
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "live")) is (
            grpc.StatusCode.FAILED_PRECONDITION
        )
    closed = env.as_collector(0).CloseRound(pb.CloseRoundRequest(round_id="live"), timeout=15)
    assert closed.state == pb.COMMITTED and closed.cohort_size >= min_clients
    responses.append(closed)
    for party in range(env.n):
        msgs = _fetch(env, party, "live")
        header = msgs[0].header
        assert header.cohort_size == 2 and header.length == length
        assert sum(len(m.chunk) for m in msgs[1:]) == 8 * length
        responses += [msgs[0].header]
    for response in responses:  # 32-byte digests and 16-byte sharing ids, nothing longer
        for field, value in _digests(response):
            assert len(value) == (16 if field == "sharing_id" else 32), response
    # A round that failed for too few clients serves nothing either.
    create_round(env, spec_msg("lonely", length, min_clients=min_clients))
    for party in range(env.n):
        msgs = seed_upload("lonely", "a", party, length)
        env.as_trainer(party, "a").Upload(iter(msgs), timeout=RPC_S)
    failed = env.as_collector(0).CloseRound(pb.CloseRoundRequest(round_id="lonely"), timeout=15)
    assert failed.state == pb.FAILED
    for party in range(env.n):
        assert code_of(lambda p=party: _fetch(env, p, "lonely")) is (
            grpc.StatusCode.FAILED_PRECONDITION
        )
