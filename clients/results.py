"""What client calls return: round status, upload receipts, aggregate results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from mpcagg.clients.weighting import Mean


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of :meth:`clients.SecureAggregator.submit`: what the trainer knows
    of each party, never more.

    - ``acknowledged``: the party durably holds this sharing (``duplicates``: it already
      did before this call).
    - ``failed``: the party does not hold it: it refused the upload, or the trainer
      never finished sending it (unreachable before the last byte).
    - ``unknown``: the whole payload was sent but no answer came (a lost
      acknowledgement, a timeout): the party may hold it or not.

    Cohort membership, if the round commits: every party acknowledged
    (:attr:`complete`) → the client is in the cohort; any party ``failed`` → it is out
    unless the sharing is finished there later; any ``unknown`` → not known yet.
    :meth:`clients.SecureAggregator.resume` (or submitting the same update again)
    finishes the *same* sharing at the parties not acknowledged, and settles every
    unknown one: a duplicate acknowledgement means it was held.
    """

    round_id: str
    client_id: str
    acknowledged: tuple[int, ...]
    failed: Mapping[int, str]
    bytes_sent: Mapping[int, int]
    duration_s: float
    duplicates: tuple[int, ...] = ()
    sharing_id: str = ""
    """Hex of the 16-byte id shared by every party's upload (not secret)."""
    unknown: Mapping[int, str] = field(default_factory=dict)
    phases: Mapping[str, float] = field(default_factory=dict, compare=False)
    """Seconds the trainer spent in each step of the call that made this receipt:
    ``encode_s`` (fixed point, update digest; :meth:`submit` only), ``share_s`` (the
    full share's digest pass), ``seeds_s`` (seed uploads until acknowledged) and
    ``full_s`` (the full share's upload, once the seeds are in)."""

    @property
    def complete(self) -> bool:
        """Whether every party acknowledged its share (the client is then in the cohort
        of the round, if it commits)."""
        return not self.failed and not self.unknown

    @property
    def pending(self) -> tuple[int, ...]:
        """Parties not known to hold the sharing (failed or unknown), sorted."""
        return tuple(sorted({*self.failed, *self.unknown}))


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The revealed aggregate of a round: float64 tensors in their original shapes.

    ``sum`` is the exact decoded sum of the cohort's fixed-point inputs (in a weighted
    round, of ``w·x``); ``mean`` says which mean it is (``mean.kind``): ``sum /
    cohort_size``, or in a weighted round ``Σw·x / total_weight``. Arrays are read-only.
    """

    round_id: str
    sum: Mapping[str, npt.NDArray[np.float64]] = field(repr=False)
    mean: Mean = field(repr=False)
    cohort_size: int
    cohort_digest: bytes
    total_weight: float | None = None
    """``Σw`` over the cohort in a weighted round (exact for integer weights), else None."""

    def as_torch(self, which: Literal["mean", "sum"] = "mean", dtype: Any = None) -> dict[str, Any]:
        """The ``mean`` (or ``sum``) as torch tensors, e.g. for ``load_state_dict``.

        ``dtype`` defaults to ``torch.float64``; each tensor owns its memory.
        """
        import torch

        source = self.mean if which == "mean" else self.sum
        target = torch.float64 if dtype is None else dtype
        return {name: torch.tensor(arr, dtype=target) for name, arr in source.items()}

    def __repr__(self) -> str:
        return (
            f"AggregateResult(round_id={self.round_id!r}, tensors={list(self.sum)}, "
            f"cohort_size={self.cohort_size}, cohort_digest={self.cohort_digest.hex()[:16]}…"
            + (f", total_weight={self.total_weight:g})" if self.total_weight is not None else ")")
        )
