"""The engine interface: where aggregate shares live and how shares are added."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import RingVector
from mpcagg.mpc.sharing import Share


@runtime_checkable
class Engine(Protocol):
    """Share arithmetic for one party's accumulator.

    ``Acc`` is engine-specific (a numpy vector, a CrypTen ``ArithmeticSharedTensor``);
    callers treat it as opaque and convert with :meth:`to_ring` / :meth:`from_ring`.
    All operations are modulo 2^64 and bit-identical across engines.
    """

    name: str

    def zeros(self, length: int) -> Any:
        """A zero accumulator of ``length`` elements."""

    def accumulate(self, acc: Any, share: Share) -> Any:
        """``acc + share`` (in place where possible); returns the accumulator."""

    def accumulate_many(self, acc: Any, shares: Iterable[Share]) -> Any:
        """``acc + Σ shares``: the same as :meth:`accumulate` of each in turn (an engine may
        fuse the seed expansions); returns the accumulator."""

    def subtract(self, acc: Any, share: Share) -> Any:
        """``acc − share`` (in place where possible); returns the accumulator."""

    def to_ring(self, acc: Any) -> RingVector:
        """The accumulator as ring elements (uint64), e.g. to serve or persist it."""

    def adopt(self, vector: RingVector) -> Any:
        """An accumulator holding ``vector``: its very memory where the engine can work on
        it (numpy; then changing one changes the other), else a copy (:meth:`from_ring`)."""

    def from_ring(self, vector: RingVector) -> Any:
        """An accumulator holding ``vector``."""

    def reconstruct(self, aggregate_shares: Sequence[Any]) -> RingVector:
        """The sum of every party's aggregate share: the revealed aggregate."""

    def reveal(self, acc: Any, group: GroupChannel) -> RingVector:
        """Open ``acc``, this party's aggregate share, among the parties of ``group``:
        the sum of every member's share, at every member. Raises the group's
        :class:`mpc.errors.GroupError` (nothing is opened then)."""
