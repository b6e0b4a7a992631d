"""One party's end of the parties' computation group: n parties, rank = party index.

A :class:`GroupChannel` numbers every message per ordered pair of parties, so the
parties, running the same sequence of collectives, agree on what message ``k`` from
``i`` to ``j`` is without a coordinator. Collectives are built from point-to-point
messages (each party sends its vector to every other party directly), which is what
CrypTen's reveal needs: ``all_reduce`` of every party's share. Per party and
collective, ``(n − 1) · 8·d`` bytes go out and as many come in.

The transport is an argument (:class:`Links`): the servers carry messages over the
parties' mutual-TLS peer links (``servers/group.py``), tests over in-process queues.
CrypTen's ``Communicator`` interface is adapted to this channel in
:mod:`mpc.engines.crypten_communicator`.

Pure: no sockets, files, clock or globals here; waiting, deadlines and restarts are
the transport's, reported as :class:`mpc.errors.GroupChanged` (a member restarted:
form the group again) or :class:`mpc.errors.GroupUnavailable` (give up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mpcagg.mpc import ring
from mpcagg.mpc.errors import LengthError, ParameterError
from mpcagg.mpc.ring import DTYPE, RingVector


class Links(Protocol):
    """Point-to-point delivery between the members of one formed group."""

    rank: int
    world_size: int

    def post(self, dst: int, seq: int, vector: RingVector) -> None:
        """Start delivering ``vector`` as message ``seq`` from this party to ``dst``;
        returns at once. ``vector`` is not modified until :meth:`flush` returns."""
        ...

    def flush(self) -> None:
        """Wait until the recipient of every posted message holds it.

        Raises:
            GroupChanged: a member restarted.
            GroupUnavailable: a recipient stayed unreachable, refused, or the
                computation's deadline passed.
        """
        ...

    def recv(self, src: int, seq: int, length: int) -> RingVector:
        """Message ``seq`` from ``src``, exactly ``length`` ring elements (blocks).

        Raises as :meth:`flush`, and :class:`LengthError` for a message of another length.
        """
        ...


@dataclass
class Traffic:
    """Payload carried by one channel (ring elements × 8 bytes; transport overhead apart)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0


class GroupChannel:
    """Collectives over :class:`Links`, with per-pair message numbers.

    Every party must run the same collectives in the same order (as CrypTen's
    protocols do); a vector's length must be the same at every party.
    """

    def __init__(self, links: Links) -> None:
        if not 0 <= links.rank < links.world_size:
            raise ParameterError(f"rank {links.rank} is not in 0..{links.world_size - 1}")
        self._links = links
        self.rank = links.rank
        self.world_size = links.world_size
        self._to = [0] * links.world_size
        self._from = [0] * links.world_size
        self.traffic = Traffic()

    @property
    def others(self) -> list[int]:
        return [p for p in range(self.world_size) if p != self.rank]

    def _check_peer(self, party: int) -> None:
        if not 0 <= party < self.world_size or party == self.rank:
            raise ParameterError(
                f"party {party} is not another member of this group of {self.world_size} "
                f"(this is party {self.rank})"
            )

    def _post(self, dst: int, vector: RingVector) -> None:
        self._check_peer(dst)
        vec = np.ascontiguousarray(vector, dtype=DTYPE)
        self._links.post(dst, self._to[dst], vec)
        self._to[dst] += 1
        self.traffic.bytes_sent += vec.nbytes
        self.traffic.messages_sent += 1

    def _recv(self, src: int, length: int) -> RingVector:
        self._check_peer(src)
        got = self._links.recv(src, self._from[src], length)
        if len(got) != length:
            raise LengthError(
                f"message {self._from[src]} from party {src} has {len(got)} elements, "
                f"expected {length}"
            )
        self._from[src] += 1
        self.traffic.bytes_received += got.nbytes
        self.traffic.messages_received += 1
        return got

    # --- point to point -----------------------------------------------------------------

    def send(self, dst: int, vector: RingVector) -> None:
        """Deliver ``vector`` to ``dst`` (returns once ``dst`` holds it)."""
        self._post(dst, vector)
        self._links.flush()

    def recv(self, src: int, length: int) -> RingVector:
        """The next message from ``src`` (``length`` elements)."""
        return self._recv(src, length)

    # --- collectives --------------------------------------------------------------------

    def all_gather(self, vector: RingVector) -> list[RingVector]:
        """Every party's ``vector``, indexed by rank (this party's own at its rank)."""
        mine = np.ascontiguousarray(vector, dtype=DTYPE)
        for dst in self.others:
            self._post(dst, mine)
        out: list[RingVector] = [mine] * self.world_size
        for src in self.others:
            out[src] = self._recv(src, len(mine))
        self._links.flush()
        return out

    def all_reduce(self, vector: RingVector) -> RingVector:
        """Σ every party's ``vector`` in Z_2^64, at every party."""
        return ring.total(self.all_gather(vector), len(vector))

    def gather(self, vector: RingVector, dst: int) -> list[RingVector] | None:
        """Every party's ``vector`` at ``dst`` (indexed by rank); None elsewhere."""
        mine = np.ascontiguousarray(vector, dtype=DTYPE)
        if self.rank != dst:
            self.send(dst, mine)
            return None
        out: list[RingVector] = [mine] * self.world_size
        for src in self.others:
            out[src] = self._recv(src, len(mine))
        return out

    def reduce(self, vector: RingVector, dst: int) -> RingVector | None:
        """Σ every party's ``vector`` at ``dst``; None elsewhere."""
        gathered = self.gather(vector, dst)
        return None if gathered is None else ring.total(gathered, len(vector))

    def broadcast(self, vector: RingVector, src: int) -> RingVector:
        """``src``'s ``vector`` at every party (others pass a vector of the same length)."""
        if self.rank == src:
            mine = np.ascontiguousarray(vector, dtype=DTYPE)
            for dst in self.others:
                self._post(dst, mine)
            self._links.flush()
            return mine
        return self._recv(src, len(vector))

    def scatter(self, vectors: Sequence[RingVector] | None, src: int, length: int) -> RingVector:
        """Party ``k`` gets ``vectors[k]`` from ``src`` (``length`` elements each)."""
        if self.rank != src:
            return self._recv(src, length)
        if vectors is None or len(vectors) != self.world_size:
            raise ParameterError(f"scatter at its source needs {self.world_size} vectors")
        for dst in self.others:
            ring.check_length(vectors[dst], length)
            self._post(dst, vectors[dst])
        self._links.flush()
        return np.ascontiguousarray(vectors[self.rank], dtype=DTYPE)

    def barrier(self) -> None:
        """Return once every party has reached this point."""
        self.all_gather(ring.zeros(0))
