"""The CrypTen engine: accumulators are ``crypten.mpc.primitives.ArithmeticSharedTensor``.

Shares enter CrypTen with ``ArithmeticSharedTensor.from_shares`` (the int64 view of
the same ring bits) and are added by CrypTen's own arithmetic, so an aggregate held
here is a valid CrypTen share a server can keep computing on (mean, norms) or
reveal with ``get_plain_text()`` inside the parties' group (:meth:`CryptenEngine.reveal`:
CrypTen's communicator carried by :mod:`mpc.engines.crypten_communicator`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mpcagg.mpc import crypten_shim, ring
from mpcagg.mpc.fixed_point import DEFAULT_PRECISION_BITS
from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import RingVector
from mpcagg.mpc.sharing import Share


class CryptenEngine:
    """Share arithmetic done by CrypTen (initialised on construction)."""

    name = "crypten"

    def __init__(self, precision_bits: int = DEFAULT_PRECISION_BITS) -> None:
        self._crypten = crypten_shim.ensure_initialized()
        import torch  # torch is a hard dependency of crypten

        self._torch = torch
        from crypten.mpc.primitives import ArithmeticSharedTensor

        self._ast = ArithmeticSharedTensor
        self.precision_bits = precision_bits

    def _wrap(self, vector: RingVector) -> Any:
        signed = ring.as_int64(np.ascontiguousarray(vector, dtype=ring.DTYPE))
        tensor = self._torch.from_numpy(signed.copy() if not signed.flags.writeable else signed)
        return self._ast.from_shares(tensor, precision=self.precision_bits)

    def zeros(self, length: int) -> Any:
        return self._wrap(ring.zeros(length))

    def accumulate(self, acc: Any, share: Share) -> Any:
        ring.check_length(self.to_ring(acc), share.length)
        acc.add_(self._wrap(share.expand()))
        return acc

    def accumulate_many(self, acc: Any, shares: Iterable[Share]) -> Any:
        for share in shares:
            acc = self.accumulate(acc, share)
        return acc

    def subtract(self, acc: Any, share: Share) -> Any:
        ring.check_length(self.to_ring(acc), share.length)
        acc.sub_(self._wrap(share.expand()))
        return acc

    def to_ring(self, acc: Any) -> RingVector:
        return ring.from_int64(acc.share.numpy())

    def adopt(self, vector: RingVector) -> Any:
        return self.from_ring(vector)

    def from_ring(self, vector: RingVector) -> Any:
        return self._wrap(np.array(vector, dtype=ring.DTYPE, copy=True))

    def reconstruct(self, aggregate_shares: Sequence[Any]) -> RingVector:
        """Sum of the parties' aggregate shares held in this process.

        Across processes, :meth:`reveal` opens each party's accumulator inside the
        parties' group instead.
        """
        if not aggregate_shares:
            raise ValueError("cannot reconstruct from zero aggregate shares")
        total = aggregate_shares[0].share.clone()
        for s in aggregate_shares[1:]:
            total.add_(s.share)
        return ring.from_int64(total.numpy())

    def reveal(self, acc: Any, group: GroupChannel) -> RingVector:
        """CrypTen's own reveal of the ``ArithmeticSharedTensor`` ``acc`` with the group
        as its communicator: ``acc.reveal()`` is the ``all_reduce`` of every member's
        share that ``get_plain_text()`` decodes. The ring value is returned, not
        CrypTen's float32 decoding (off by one for some negative values, see
        ``tests/unit/mpc/test_crypten_compat.py``); decode it with :mod:`mpc.fixed_point`.
        """
        from mpcagg.mpc.engines.crypten_communicator import GroupCommunicator

        with crypten_shim.use_communicator(GroupCommunicator(group)):
            opened = acc.reveal()
        return ring.from_int64(opened.numpy().reshape(-1))
