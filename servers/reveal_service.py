"""Reveal mode ``servers`` wired into a party: the Reveal servicer on the client port,
the Group servicer on the peer port, and the deletion of a pruned round's reveal files.

:func:`attach_reveal` is the one place that builds a party's :class:`Revealer`, its
:class:`GroupTransport` and :class:`ResultStore`, and registers both servicers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.cluster import Limits
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.auth import PeerAuthenticator
from mpcagg.servers.events import Observers, UploadOutcome
from mpcagg.servers.group import GroupService, GroupTransport
from mpcagg.servers.interceptor import caller
from mpcagg.servers.peers import PeerClient
from mpcagg.servers.results import ResultStore
from mpcagg.servers.reveal import Revealer
from mpcagg.servers.round import Round
from mpcagg.v1 import group_pb2_grpc, reveal_pb2_grpc
from mpcagg.wire import group as wire


class RevealService(reveal_pb2_grpc.RevealServicer):
    """Thin: the reveal's state for the collector and trainers, the sum for cohort trainers."""

    def __init__(self, revealer: Revealer, chunk_bytes: int) -> None:
        self._rev = revealer
        self._chunk = chunk_bytes

    def GetRevealStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The reveal's state at this party (:meth:`Revealer.status`), never the sum."""
        return wire.reveal_status_to_proto(self._rev.status(request.round_id))

    def GetRevealedSum(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Stream the revealed sum to a cohort trainer allowed to fetch it
        (:meth:`Revealer.revealed_sum`: PERMISSION_DENIED for anyone else).
        """
        status, total = self._rev.revealed_sum(request.round_id, caller())
        yield from wire.revealed_sum_messages(status, total, self._chunk)


class Pruned:
    """A round observer (:class:`servers.events.RoundEvents`) that deletes a round's
    reveal files when the round is pruned (``[retention]``)."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def upload(self, outcome: UploadOutcome, kind: str, nbytes: int) -> None:
        """Ignored (:class:`RoundEvents`)."""

    def closing(self, rnd: Round) -> None:
        """Ignored (:class:`RoundEvents`)."""

    def committed(self, rnd: Round, aggregate: RingVector, seconds: float) -> None:
        """Ignored: the revealer finds committed rounds itself."""

    def failed(self, rnd: Round) -> None:
        """Ignored (:class:`RoundEvents`)."""

    def forgotten(self, round_id: str) -> None:
        """Delete the pruned round's reveal files."""
        self._store.delete(round_id)


def attach_reveal(
    aggregator: Aggregator,
    peers: list[PeerClient],
    limits: Limits,
    data_dir: Path,
    *,
    enforcing: bool,
    client_server: grpc.Server,
    peer_server: grpc.Server,
    events: Observers | None = None,
) -> Revealer:
    """Wire reveal mode ``servers`` into a party: the Group service on its peer port, the
    Reveal service on its client port, and (``events``) the deletion of a pruned round's
    reveal files; returns the (not yet started) revealer."""
    transport = GroupTransport(aggregator.party, aggregator.n_parties, peers, limits)
    store = ResultStore(data_dir)
    revealer = Revealer(aggregator, transport, store, limits)
    if events is not None:
        events.add(Pruned(store))
    peer_auth = PeerAuthenticator(aggregator.n_parties, enforcing=enforcing)
    group_pb2_grpc.add_GroupServicer_to_server(
        GroupService(transport, revealer.admit, peer_auth), peer_server
    )
    reveal_pb2_grpc.add_RevealServicer_to_server(
        RevealService(revealer, limits.chunk_bytes), client_server
    )
    return revealer
