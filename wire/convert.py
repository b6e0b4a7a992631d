"""Conversion between wire messages and domain types: the only module besides the
transport that imports ``*_pb2``."""

from __future__ import annotations

from mpcagg.protocol.errors import InvalidArgument, ProtocolError
from mpcagg.protocol.spec import Holding, RevealMode, RoundSpec, TensorSpec
from mpcagg.protocol.state import (
    Manifest,
    RoundState,
    RoundStatus,
    ShareKind,
    UploadAck,
    UploadHeader,
)
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import peer_pb2


def spec_from_proto(msg: pb.RoundSpec) -> RoundSpec:
    """A validated :class:`RoundSpec`; raises :class:`servers.errors.InvalidArgument`."""
    return RoundSpec(
        round_id=msg.round_id,
        tensors=tuple(TensorSpec(t.name, tuple(int(d) for d in t.shape)) for t in msg.tensors),
        n_parties=msg.n_parties,
        precision_bits=msg.precision_bits,
        bound=msg.bound,
        min_clients=msg.min_clients,
        max_clients=msg.max_clients,
        deadline_unix=msg.deadline_unix,
        trainers_may_fetch=msg.trainers_may_fetch,
        weighted=msg.weighted,
        max_weight=msg.max_weight,
        reveal=_reveal_from_proto(msg.reveal),
    )


def spec_to_proto(spec: RoundSpec) -> pb.RoundSpec:
    """The spec as ``aggregation.proto``'s ``RoundSpec``, every field kept, so
    :func:`spec_from_proto` gives back an equal spec (and the same digest)."""
    return pb.RoundSpec(
        round_id=spec.round_id,
        tensors=[pb.TensorSpec(name=t.name, shape=list(t.shape)) for t in spec.tensors],
        n_parties=spec.n_parties,
        precision_bits=spec.precision_bits,
        bound=spec.bound,
        min_clients=spec.min_clients,
        max_clients=spec.max_clients,
        deadline_unix=spec.deadline_unix,
        trainers_may_fetch=spec.trainers_may_fetch,
        weighted=spec.weighted,
        max_weight=spec.max_weight,
        reveal=_REVEAL_MODES[spec.reveal],
    )


_REVEAL_MODES = {
    RevealMode.COLLECTOR: pb.REVEAL_MODE_COLLECTOR,
    RevealMode.SERVERS: pb.REVEAL_MODE_SERVERS,
}


def _reveal_from_proto(value: int) -> RevealMode:
    for mode, wire in _REVEAL_MODES.items():
        if wire == value:
            return mode
    raise InvalidArgument(f"reveal mode {value} is not one of COLLECTOR (0), SERVERS (1)")


_KINDS = {pb.SEED: ShareKind.SEED, pb.FULL: ShareKind.FULL}
_STATES = {
    RoundState.OPEN: pb.OPEN,
    RoundState.CLOSING: pb.CLOSING,
    RoundState.COMMITTED: pb.COMMITTED,
    RoundState.FAILED: pb.FAILED,
}


def holdings_to_proto(held: tuple[Holding, ...]) -> list[pb.Holding]:
    """The holdings as ``Holding`` messages, in the order given."""
    return [pb.Holding(client_id=h.client_id, sharing_id=h.sharing_id) for h in held]


def holdings_from_proto(held: object) -> tuple[Holding, ...]:
    """Validated holdings, sorted; raises :class:`InvalidArgument`."""
    out = tuple(sorted(Holding(h.client_id, bytes(h.sharing_id)) for h in held))  # type: ignore[attr-defined]
    return out


def status_to_proto(s: RoundStatus, spec: RoundSpec | None = None) -> pb.RoundStatus:
    """``RoundStatus`` of one party, with ``spec`` attached when given (a party attaches it
    to its CreateRound and GetRound replies)."""
    return pb.RoundStatus(
        spec=spec_to_proto(spec) if spec is not None else None,
        round_id=s.round_id,
        state=state_to_proto(s.state),
        spec_digest=s.spec_digest,
        received=s.received,
        cohort_size=s.cohort_size,
        cohort_digest=s.cohort_digest,
        reason=s.reason,
        party=s.party,
    )


def header_from_proto(h: pb.UploadHeader) -> UploadHeader:
    """The upload header as received. Raises :class:`InvalidArgument` for a share kind
    other than SEED or FULL; ids, length and digests are checked by the party, not here."""
    kind = _KINDS.get(h.kind)
    if kind is None:
        raise InvalidArgument(f"share kind must be SEED or FULL, got {h.kind}")
    return UploadHeader(
        round_id=h.round_id,
        client_id=h.client_id,
        sharing_id=h.sharing_id,
        party=h.party,
        kind=kind,
        length=h.length,
        payload_digest=h.payload_digest,
        seed=h.seed,
        spec_digest=h.spec_digest,
        seeds_acknowledged=h.seeds_acknowledged,
    )


def ack_to_proto(r: UploadAck) -> pb.UploadReceipt:
    """The acknowledgement as an ``UploadReceipt``, every field kept."""
    return pb.UploadReceipt(
        round_id=r.round_id,
        client_id=r.client_id,
        party=r.party,
        payload_digest=r.payload_digest,
        duplicate=r.duplicate,
        sharing_id=r.sharing_id,
    )


def state_to_proto(state: RoundState) -> pb.RoundState.ValueType:
    """The wire value of a party's state. Raises ``KeyError`` for ``RoundState.UNKNOWN``,
    which is never a party's own state and is never sent."""
    return _STATES[state]


def state_from_proto(value: int) -> RoundState:
    """The state a wire value names; an unknown value reads as UNKNOWN (never revealable)."""
    for state, wire in _STATES.items():
        if wire == value:
            return state
    return RoundState.UNKNOWN


def create_round_request(spec: RoundSpec) -> pb.CreateRoundRequest:
    """``CreateRoundRequest`` carrying ``spec``."""
    return pb.CreateRoundRequest(spec=spec_to_proto(spec))


def status_from_proto(msg: pb.RoundStatus) -> RoundStatus:
    """A party's status as received; raises :class:`ProtocolError` for an invalid spec."""
    state = state_from_proto(msg.state)
    spec = None
    if msg.HasField("spec"):
        try:
            spec = spec_from_proto(msg.spec)
        except InvalidArgument as exc:
            raise ProtocolError(f"party {msg.party} sent an invalid round spec: {exc}") from None
    return RoundStatus(
        round_id=msg.round_id,
        party=msg.party,
        state=state,
        spec_digest=bytes(msg.spec_digest),
        received=msg.received,
        cohort_size=msg.cohort_size,
        cohort_digest=bytes(msg.cohort_digest),
        reason=msg.reason,
        spec=spec,
    )


def ack_from_proto(msg: pb.UploadReceipt) -> UploadAck:
    """The acknowledgement in an ``UploadReceipt``, as received: nothing is checked here
    (the caller compares it with what it sent)."""
    return UploadAck(
        round_id=msg.round_id,
        client_id=msg.client_id,
        party=msg.party,
        payload_digest=bytes(msg.payload_digest),
        duplicate=msg.duplicate,
        sharing_id=bytes(msg.sharing_id),
    )


def manifest_to_proto(m: Manifest) -> peer_pb2.ManifestReply:
    """The manifest as ``peer.proto``'s ``ManifestReply``: the holdings the party holds and
    those it folded, its state and cohort digest."""
    return peer_pb2.ManifestReply(
        round_id=m.round_id,
        party=m.party,
        held=holdings_to_proto(m.held),
        state=state_to_proto(m.state),
        cohort_digest=m.cohort_digest,
        folded=holdings_to_proto(m.folded),
    )


def manifest_from_proto(reply: peer_pb2.ManifestReply) -> Manifest:
    """A peer's manifest; raises :class:`InvalidArgument` for malformed holdings."""
    return Manifest(
        round_id=reply.round_id,
        party=reply.party,
        held=holdings_from_proto(reply.held),
        state=state_from_proto(reply.state),
        cohort_digest=bytes(reply.cohort_digest),
        folded=holdings_from_proto(reply.folded),
    )


def commit_request(
    round_id: str, cohort: tuple[Holding, ...], digest: bytes, spec_digest: bytes
) -> peer_pb2.CommitRequest:
    """``CommitRequest``: the leader's cohort for ``round_id``, with its digest
    (:func:`protocol.spec.cohort_digest`) and the spec digest it was agreed under."""
    return peer_pb2.CommitRequest(
        round_id=round_id,
        cohort=holdings_to_proto(cohort),
        cohort_digest=digest,
        spec_digest=spec_digest,
    )


def commit_from_proto(
    request: peer_pb2.CommitRequest,
) -> tuple[str, tuple[Holding, ...], bytes, bytes]:
    """``(round_id, cohort, cohort_digest, spec_digest)`` of a Commit."""
    return (
        request.round_id,
        holdings_from_proto(request.cohort),
        bytes(request.cohort_digest),
        bytes(request.spec_digest),
    )


def manifest_request(round_id: str, spec_digest: bytes) -> peer_pb2.ManifestRequest:
    """``ManifestRequest`` for ``round_id`` under the spec digest the caller holds."""
    return peer_pb2.ManifestRequest(round_id=round_id, spec_digest=spec_digest)


def fail_request(round_id: str, reason: str) -> peer_pb2.FailRequest:
    """``FailRequest``: fail ``round_id`` at a peer, recording ``reason``."""
    return peer_pb2.FailRequest(round_id=round_id, reason=reason)


def get_round_request(round_id: str) -> pb.GetRoundRequest:
    """``GetRoundRequest`` for ``round_id``."""
    return pb.GetRoundRequest(round_id=round_id)


def close_round_request(round_id: str) -> pb.CloseRoundRequest:
    """``CloseRoundRequest`` for ``round_id``: stop accepting uploads."""
    return pb.CloseRoundRequest(round_id=round_id)


def aggregate_share_request(round_id: str) -> pb.GetAggregateShareRequest:
    """``GetAggregateShareRequest`` for ``round_id``'s aggregate share."""
    return pb.GetAggregateShareRequest(round_id=round_id)
