"""Rounds in reveal mode ``servers``: the reveal's state, and the sum for cohort trainers.

The parties open the aggregate among themselves; each serves the sum it revealed
(``Reveal.GetRevealedSum``) only to cohort trainers of a round whose spec says
``trainers_may_fetch``. :func:`fetch_revealed_sum` asks **every** party and accepts the
sum only if all of them serve the same one (same round, digests, cohort size and
bits), so one party serving something else is caught. The collector (and anyone) may
read each party's reveal state (:func:`reveal_statuses`), which never carries the sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpcagg.clients.broadcast import broadcast
from mpcagg.clients.transport import Transport, _rpc  # the one gRPC → error translation
from mpcagg.protocol.errors import ProtocolError
from mpcagg.protocol.group import RevealedSum, RevealState, RevealStatus
from mpcagg.v1 import reveal_pb2_grpc
from mpcagg.wire import group as wire


def _stub(t: Transport, party: int) -> Any:
    return reveal_pb2_grpc.RevealStub(t.channel(party))


def reveal_status(t: Transport, party: int, round_id: str) -> RevealStatus:
    """One party's reveal state (one attempt)."""
    with _rpc(party, "GetRevealStatus"):
        msg = _stub(t, party).GetRevealStatus(wire.reveal_request(round_id), timeout=t.timeout)
    return wire.reveal_status_from_proto(msg)


def revealed_sum(t: Transport, party: int, round_id: str) -> RevealedSum:
    """The sum one party revealed (one attempt)."""
    with _rpc(party, "GetRevealedSum"):
        stream = _stub(t, party).GetRevealedSum(wire.reveal_request(round_id), timeout=t.timeout)
        try:
            return wire.read_revealed_sum(
                stream, party=party, max_length=t.cluster.limits.max_vector_length
            )
        finally:
            stream.cancel()


def reveal_statuses(t: Transport, round_id: str) -> list[RevealStatus]:
    """Every party's reveal state, by party; an unreachable party shows as UNKNOWN with
    the reason, any other server error is raised."""
    outcomes = broadcast(t, lambda p: reveal_status(t, p, round_id), what="GetRevealStatus")
    outcomes.raise_refusal()
    unknown = {
        p: RevealStatus(round_id, p, RevealState.UNKNOWN, reason=str(exc))
        for p, exc in outcomes.unreachable.items()
    }
    return [s for _, s in sorted({**outcomes.acknowledged, **unknown}.items())]


def fetch_revealed_sum(t: Transport, round_id: str) -> RevealedSum:
    """The revealed sum, served alike by every party.

    Raises the first server error (PermissionDenied: not a cohort trainer of a round that
    allows it; RoundNotOpen: not revealed there), or :class:`ProtocolError` if the
    parties serve different sums.
    """
    outcomes = broadcast(t, lambda p: revealed_sum(t, p, round_id), what="GetRevealedSum")
    outcomes.raise_refusal()
    if outcomes.unreachable:
        raise outcomes.unreachable[min(outcomes.unreachable)]
    sums = [outcomes.acknowledged[p] for p in sorted(outcomes.acknowledged)]
    first = sums[0]

    def key(s: RevealedSum) -> tuple[str, bytes, bytes, int]:
        return (s.round_id, s.spec_digest, s.cohort_digest, s.cohort_size)

    differ = [
        s.party for s in sums if key(s) != key(first) or not np.array_equal(s.vector, first.vector)
    ]
    if differ or first.round_id != round_id:
        raise ProtocolError(
            f"round {round_id!r}: parties {differ or [first.party]} serve another revealed sum "
            f"than party {first.party}; nothing is returned"
        )
    return first
