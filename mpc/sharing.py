"""Additive secret sharing over Z_2^64 with seed-compressed shares.

For ``n`` parties a client sends one party (the *full party*) the vector
``x − Σ_{i≠full} PRG(seed_i, ctx_i) mod 2^64`` and every other party ``i`` only its
32-byte ``seed_i``; party ``i`` expands the seed itself (:mod:`mpc.prg`). The sum of
all shares is ``x``. Any ``n − 1`` shares are (pseudo)uniform and independent of
``x``: the full party's vector is masked by at least one PRG stream it does not
know, and the seeds are independent of ``x`` by construction. This is the
helper-seed compression of Prio3: draft-irtf-cfrg-vdaf-12 §7.2.1 "Sharding" (§7.2.1.1:
the helpers' shares "are represented instead by an XOF seed") and §7.2.7.2 "Input
share".
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mpcagg.mpc import prg
from mpcagg.mpc.errors import LengthError, ParameterError
from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.mpc.seed import Seed

MAX_PARTIES = 64


@dataclass(frozen=True, slots=True)
class SharingContext:
    """What a sharing is bound to: round and client (the PRG adds the party)."""

    round_id: str
    client_id: str
    version: int = prg.PROTOCOL_VERSION

    def prg_context(self, party: int) -> prg.PrgContext:
        """The PRG context for ``party``'s share."""
        return prg.PrgContext(
            round_id=self.round_id, client_id=self.client_id, party=party, version=self.version
        )


@dataclass(frozen=True, slots=True)
class FullShare:
    """A party's share sent in full: ``length`` ring elements."""

    party: int
    vector: RingVector = field(repr=False)

    @property
    def length(self) -> int:
        return len(self.vector)

    def expand(self) -> RingVector:
        return self.vector

    def __repr__(self) -> str:
        return f"FullShare(party={self.party}, length={self.length})"


@dataclass(frozen=True, slots=True)
class SeedShare:
    """A party's share sent as a seed; it expands to ``length`` ring elements."""

    party: int
    length: int
    seed: Seed = field(repr=False)
    context: SharingContext

    def __post_init__(self) -> None:
        if self.length < 0:
            raise LengthError(f"share length must be >= 0, got {self.length}")

    def prg_context(self) -> prg.PrgContext:
        return self.context.prg_context(self.party)

    def expand(self) -> RingVector:
        return prg.expand(self.seed, self.prg_context(), self.length)

    def __repr__(self) -> str:
        return f"SeedShare(party={self.party}, length={self.length}, seed=Seed(..))"


Share = FullShare | SeedShare


def check_parties(n_parties: int, full_party: int) -> None:
    """Raise :class:`ParameterError` unless ``2 <= n_parties <= 64`` and ``full_party`` is one."""
    if not isinstance(n_parties, int) or not 2 <= n_parties <= MAX_PARTIES:
        raise ParameterError(f"n_parties must be in 2..{MAX_PARTIES}, got {n_parties!r}")
    if not isinstance(full_party, int) or not 0 <= full_party < n_parties:
        raise ParameterError(f"full_party must be in 0..{n_parties - 1}, got {full_party!r}")


def full_party_for(client_id: str, n_parties: int) -> int:
    """Which party gets ``client_id``'s full share: SHA-256 of the id, mod n (spreads load)."""
    check_parties(n_parties, 0)
    digest = hashlib.sha256(client_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n_parties


def seed_parties(n_parties: int, full_party: int) -> list[int]:
    """The parties that receive seeds, in increasing order."""
    return [p for p in range(n_parties) if p != full_party]


def _check_sharing(n_parties: int, full_party: int, seeds: Sequence[Seed]) -> None:
    """:class:`ParameterError` for a bad party count or full party, or other than n−1 seeds."""
    check_parties(n_parties, full_party)
    if len(seeds) != n_parties - 1:
        raise ParameterError(
            f"expected {n_parties - 1} seeds for {n_parties} parties, got {len(seeds)}"
        )


def share(
    encoded: RingVector,
    n_parties: int,
    full_party: int,
    seeds: Sequence[Seed],
    context: SharingContext,
) -> list[Share]:
    """Split ``encoded`` into ``n_parties`` shares, ordered by party index.

    ``seeds[k]`` goes to the k-th party of :func:`seed_parties`. Raises
    :class:`ParameterError` for a bad party count, full party or number of seeds.
    """
    _check_sharing(n_parties, full_party, seeds)
    x = np.ascontiguousarray(encoded, dtype=DTYPE)
    full = x.copy()
    shares: list[Share] = []
    for party, seed in zip(seed_parties(n_parties, full_party), seeds, strict=True):
        seeded = SeedShare(party=party, length=len(x), seed=seed, context=context)
        prg.add_stream_into(full, seed, seeded.prg_context(), negate=True)
        shares.append(seeded)
    shares.insert(full_party, FullShare(party=full_party, vector=full))
    return shares


def full_share_chunks(
    encoded: RingVector,
    n_parties: int,
    full_party: int,
    seeds: Sequence[Seed],
    context: SharingContext,
    chunk_elements: int,
) -> Iterator[RingVector]:
    """The full share of :func:`share` (same arguments), computed ``chunk_elements`` at a
    time: the pieces concatenate to ``share(...)[full_party].vector``.

    Each piece is a view of one scratch buffer, valid until the next one is taken, so
    the full share never exists whole (memory: one chunk, whatever the length). Every
    call restarts the keystreams, so it yields the same bytes each time. Raises
    :class:`ParameterError` as :func:`share` does, or for ``chunk_elements < 1``.
    """
    x = np.ascontiguousarray(encoded, dtype=DTYPE)
    return full_share_chunks_from(
        copying_fill(x), len(x), n_parties, full_party, seeds, context, chunk_elements
    )


Fill = Callable[[int, int, RingVector], None]
"""``fill(start, stop, out)`` writes elements ``[start, stop)`` of the shared vector into
``out`` (``stop − start`` elements), the same every call."""


def copying_fill(vector: RingVector) -> Fill:
    """The :data:`Fill` of a vector held whole (contiguous ``uint64``): it copies."""

    def fill(start: int, stop: int, out: RingVector) -> None:
        np.copyto(out, vector[start:stop])

    return fill


def full_share_chunks_from(
    fill: Fill,
    length: int,
    n_parties: int,
    full_party: int,
    seeds: Sequence[Seed],
    context: SharingContext,
    chunk_elements: int,
) -> Iterator[RingVector]:
    """:func:`full_share_chunks` of a vector of ``length`` elements that is itself
    produced piece by piece (``fill``), e.g. encoded from a model as it is sent, so that
    neither the vector nor its full share ever exists whole."""
    _check_sharing(n_parties, full_party, seeds)
    if chunk_elements < 1:
        raise ParameterError(f"chunk_elements must be >= 1, got {chunk_elements}")
    keys = [
        prg.Keystream(seed, context.prg_context(party))
        for party, seed in zip(seed_parties(n_parties, full_party), seeds, strict=True)
    ]

    def pieces() -> Iterator[RingVector]:
        out = np.empty(min(length, chunk_elements), dtype=DTYPE)
        scratch = prg.Keystream.scratch_for(len(out))
        for start, stop in prg.chunks(length, chunk_elements):
            piece = out[: stop - start]
            fill(start, stop, piece)
            for key in keys:
                key.add_into(piece, negate=True, scratch=scratch)
            yield piece

    return pieces()


def reconstruct(shares: Sequence[Share]) -> RingVector:
    """The sum of one share per party ``0..n-1`` (any order), i.e. the shared vector."""
    if not shares:
        raise ParameterError("cannot reconstruct from zero shares")
    parties = sorted(s.party for s in shares)
    if parties != list(range(len(shares))):
        raise ParameterError(
            f"expected one share for each party 0..{len(shares) - 1}, got parties {parties}"
        )
    length = shares[0].length
    for s in shares:
        if s.length != length:
            raise LengthError(f"share of party {s.party} has length {s.length}, expected {length}")
    out = np.zeros(length, dtype=DTYPE)
    for s in shares:
        if isinstance(s, SeedShare):
            prg.add_stream_into(out, s.seed, s.prg_context())
        else:
            np.add(out, s.vector, out=out)
    return out
