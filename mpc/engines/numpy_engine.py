"""The fast path: in-place uint64 arithmetic with numpy, seeds expanded chunk by chunk.

Heavy calls are ``np.add``/``np.subtract`` on contiguous uint64 (numpy releases the
GIL inside them) and AES-CTR ``update_into`` on 256 KiB chunks, so a seeded share is
expanded and added while the chunk stays in cache and is never materialised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mpcagg.mpc import prg, ring
from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import DTYPE, RingVector
from mpcagg.mpc.sharing import FullShare, SeedShare, Share

# Full shares are added in large chunks (8 MiB): a plain add streams through memory
# once whatever the chunk, and each extra call costs time (bench/test_micro.py: at
# d = 10^6, 1 MiB chunks ran at ~43 GB/s, 8 MiB at ~52 GB/s; at 10^7 all sizes >= 512 KiB
# are memory-bound alike), so chunks only bound the work done per call.
_ADD_CHUNK = 1 << 20


class NumpyEngine:
    """Accumulators are contiguous ``uint64`` numpy vectors."""

    name = "numpy"

    def zeros(self, length: int) -> RingVector:
        return ring.zeros(length)

    def accumulate(self, acc: RingVector, share: Share) -> RingVector:
        return self._apply(acc, share, negate=False)

    def accumulate_many(self, acc: RingVector, shares: Iterable[Share]) -> RingVector:
        """Full shares are added as they come; seed shares are expanded together at the
        end, fused chunk by chunk (:func:`mpc.prg.add_streams_into`), so each chunk of
        the accumulator stays in cache while every seed's keystream is added to it."""
        seeded: list[SeedShare] = []
        for share in shares:
            if isinstance(share, SeedShare):
                ring.check_length(acc, share.length)
                seeded.append(share)
            else:
                self._apply(acc, share, negate=False)
        prg.add_streams_into(acc, [(s.seed, s.prg_context()) for s in seeded])
        return acc

    def subtract(self, acc: RingVector, share: Share) -> RingVector:
        return self._apply(acc, share, negate=True)

    def to_ring(self, acc: RingVector) -> RingVector:
        return acc

    def adopt(self, vector: RingVector) -> RingVector:
        ring.check_length(vector, len(vector))
        return vector

    def from_ring(self, vector: RingVector) -> RingVector:
        return np.array(vector, dtype=DTYPE, copy=True)

    def reconstruct(self, aggregate_shares: Sequence[RingVector]) -> RingVector:
        if not aggregate_shares:
            raise ValueError("cannot reconstruct from zero aggregate shares")
        return ring.total(aggregate_shares, len(aggregate_shares[0]))

    def reveal(self, acc: RingVector, group: GroupChannel) -> RingVector:
        """Every member's share, exchanged over the group, summed by :meth:`reconstruct`."""
        return self.reconstruct(group.all_gather(acc))

    def _apply(self, acc: RingVector, share: Share, *, negate: bool) -> RingVector:
        ring.check_length(acc, share.length)
        if isinstance(share, SeedShare):
            prg.add_stream_into(acc, share.seed, share.prg_context(), negate=negate)
        elif isinstance(share, FullShare):
            op = np.subtract if negate else np.add
            vec = share.vector
            for start, stop in prg.chunks(len(acc), _ADD_CHUNK):
                target = acc[start:stop]
                op(target, vec[start:stop], out=target)
        else:  # pragma: no cover - the Share union is closed
            raise TypeError(f"expected FullShare or SeedShare, got {type(share).__name__}")
        return acc
