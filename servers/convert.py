"""Conversion between wire messages and domain types: the only module besides the
transport that imports ``*_pb2``."""

from __future__ import annotations

from protos.mpcagg.v1 import aggregation_pb2 as pb
from servers.spec import RoundSpec, TensorSpec


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
    )


def spec_to_proto(spec: RoundSpec) -> pb.RoundSpec:
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
    )
