"""Weighted rounds: each trainer shares ``[w·x, w]``, the collector divides ``Σw·x`` by ``Σw``.

In a round whose spec says ``weighted``, a trainer's vector is its update ``x`` times its
own weight ``w`` (typically its number of training examples), followed by ``w`` itself as
one more element of the *same* sharing. Parties and the collector hold shares of ``w``
exactly as of any other element, so no single weight is revealed; the round reveals
``Σw·x`` and the total weight ``W = Σw`` over the cohort, and the weighted mean
``Σw·x / W`` is FedAvg's aggregate (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", Algorithm 1).

Error: each element is rounded to the nearest multiple of ``2^-p`` once, by the trainer
(``p = precision_bits``). An integer weight is exact, so ``W`` is exact, and each
coordinate of the weighted mean is within ``n · 2^-(p+1) / W`` of the exact
``Σw·x / W`` for a cohort of ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from mpcagg.clients.layout import FloatArray, TensorLayout
from mpcagg.mpc import EncodingError
from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.errors import InputError, ProtocolError
from mpcagg.protocol.spec import RoundSpec

MeanKind = Literal["weighted", "unweighted"]


class Mean(Mapping[str, npt.NDArray[np.float64]]):
    """The mean tensors of a round, saying which mean they are.

    ``kind`` is ``"unweighted"`` (``sum / cohort_size``) or ``"weighted"``
    (``Σw·x / Σw``); ``divisor`` is the cohort size or the total weight. A weighted
    round whose total weight is 0 has no mean: every element is NaN.
    """

    __slots__ = ("_tensors", "divisor", "kind")

    def __init__(
        self, tensors: Mapping[str, npt.NDArray[np.float64]], kind: MeanKind, divisor: float
    ) -> None:
        self._tensors = dict(tensors)
        self.kind: MeanKind = kind
        self.divisor = divisor

    def __getitem__(self, name: str) -> npt.NDArray[np.float64]:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        over = "total weight" if self.kind == "weighted" else "cohort size"
        return f"Mean({self.kind}, over {over} {self.divisor:g}, tensors={list(self._tensors)})"


def check_weight(spec: RoundSpec, weight: float | None) -> float | None:
    """The trainer's weight for ``spec``'s round: ``None`` for an unweighted round.

    Raises :class:`InputError` (nothing is sent) for a weight given to an unweighted
    round, a weighted round without one, or one outside ``0..max_weight``.
    """
    if not spec.weighted:
        if weight is not None:
            raise InputError(
                f"round {spec.round_id!r} is not weighted, but a weight ({weight!r}) was "
                "given; open it with weighted=True to share weights"
            )
        return None
    if weight is None:
        raise InputError(
            f"round {spec.round_id!r} is weighted: pass weight= (e.g. the number of "
            f"training examples, 0..{spec.max_weight:g})"
        )
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
        raise InputError(f"weight must be a number, got {type(weight).__name__}")
    value = float(weight)
    if not (math.isfinite(value) and 0.0 <= value <= spec.max_weight):
        raise InputError(
            f"weight {weight!r} is outside the round's range 0..{spec.max_weight:g} "
            f"(max_weight of round {spec.round_id!r})"
        )
    return value


def weigh(
    spec: RoundSpec, vector: FloatArray, encoded: RingVector, weight: float | None
) -> RingVector:
    """The ring vector a trainer shares: ``encoded`` (``x`` in fixed point, already
    checked within the bound) for an unweighted round, else ``[w·x, w]`` encoded.

    ``w·x`` is computed in float64 and rounded once. Raises :class:`InputError` as
    :func:`check_weight`.
    """
    w = check_weight(spec, weight)
    if w is None:
        return encoded
    weighted = np.empty(spec.length, dtype=np.float64)
    np.multiply(vector, w, out=weighted[:-1], dtype=np.float64)
    weighted[-1] = w
    try:
        return spec.fixed_point.encode(weighted, bound=spec.coordinate_bound)
    except EncodingError as exc:  # pragma: no cover - |w·x| <= max_weight·bound holds
        raise InputError(f"the weighted update cannot be encoded: {exc}") from None


def split_weighted(
    spec: RoundSpec, total: npt.NDArray[np.float64], cohort_size: int
) -> tuple[npt.NDArray[np.float64], float]:
    """``(Σw·x, W)`` from the decoded sum of a weighted round.

    Refuses (:class:`ProtocolError`) a sum that honest inputs cannot produce: each
    honest trainer gives ``0 <= w <= max_weight`` and ``|w·x| <= w·bound`` before
    rounding, so ``0 <= W <= n·(max_weight + 2^-p)`` and every coordinate is within
    ``W·bound + n·2^-p`` (with ``W`` itself rounded, slack for both roundings).
    """
    if not spec.weighted or len(total) != spec.length:
        raise ProtocolError(
            f"round {spec.round_id!r}: not a weighted sum of length {spec.length}"
        )  # pragma: no cover - the collector checks the length first
    ulp = 2.0**-spec.precision_bits
    weight = float(total[-1])
    if not 0.0 <= weight <= cohort_size * (spec.max_weight + ulp):
        raise ProtocolError(
            f"round {spec.round_id!r}: the revealed total weight {weight:.6g} is not one "
            f"honest inputs can produce (0..{cohort_size} × max_weight {spec.max_weight:g}); "
            "nothing is returned"
        )
    weighted_sum = total[:-1]
    limit = (weight + cohort_size * ulp) * spec.bound * (1 + 1e-12) + cohort_size * ulp
    bad = np.flatnonzero(~(np.abs(weighted_sum) <= limit))
    if bad.size:
        name, where = TensorLayout.from_spec(spec).locate(int(bad[0]))
        raise ProtocolError(
            f"round {spec.round_id!r}: the revealed weighted sum is not one honest inputs "
            f"can produce: tensor {name!r} at {where} is {float(weighted_sum[bad[0]]):.6g}, "
            f"beyond total weight {weight:.6g} × bound {spec.bound} ({bad.size} coordinates "
            "out of range); nothing is returned"
        )
    return weighted_sum, weight


def weighted_mean(
    spec: RoundSpec, weighted_sum: npt.NDArray[np.float64], weight: float
) -> npt.NDArray[np.float64]:
    """``Σw·x / W`` (NaN everywhere when ``W`` is 0: no trainer gave any weight)."""
    if weight == 0.0:
        return np.full(spec.tensor_length, np.nan)
    out: npt.NDArray[np.float64] = weighted_sum / weight
    return out
