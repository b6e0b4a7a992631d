"""Bound an update before it is shared: a round's spec refuses any coordinate beyond
``±bound`` (nothing is sent), so trainers clip first.

- :func:`clip_linf` clamps each coordinate to ``[-bound, bound]`` (what the round's
  bound requires; it changes the direction of large updates).
- :func:`clip_l2` scales the whole update down to L2 norm ``max_norm`` if it is longer
  (keeps the direction; the per-example/update clipping of DP-FedAvg, McMahan et al.
  2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1). An
  L2 norm of at most ``max_norm`` bounds every coordinate by ``max_norm`` as well, so
  ``max_norm <= bound`` suffices.

Both take a mapping of name to array (numpy, float) and return a new ``dict`` of
float64 arrays; the inputs are not changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from mpcagg.protocol.errors import InputError

Tensors = dict[str, npt.NDArray[np.float64]]


def clip_linf(tensors: Mapping[str, Any], bound: float) -> Tensors:
    """Every coordinate clamped to ``[-bound, bound]``. Raises :class:`InputError` for a
    bound that is not a finite number > 0 or a non-finite coordinate."""
    _check_limit("bound", bound)
    out = {name: _finite(name, a) for name, a in tensors.items()}
    for a in out.values():
        np.clip(a, -bound, bound, out=a)
    return out


def clip_l2(tensors: Mapping[str, Any], max_norm: float) -> Tensors:
    """The update scaled by ``min(1, max_norm / ‖update‖₂)`` (the norm over all tensors
    together). Raises :class:`InputError` as :func:`clip_linf`."""
    _check_limit("max_norm", max_norm)
    out = {name: _finite(name, a) for name, a in tensors.items()}
    norm = math.sqrt(sum(float(np.dot(a.ravel(), a.ravel())) for a in out.values()))
    if norm > max_norm:
        scale = max_norm / norm
        for a in out.values():
            a *= scale
            np.clip(a, -max_norm, max_norm, out=a)  # rounding of the scale never overshoots
    return out


def l2_norm(tensors: Mapping[str, Any]) -> float:
    """The L2 norm of all tensors together."""
    return math.sqrt(
        sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in tensors.values())
    )


def _check_limit(what: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    ):
        raise InputError(f"{what} must be a finite number > 0, got {value!r}")


def _finite(name: str, value: Any) -> npt.NDArray[np.float64]:
    arr = np.array(value, dtype=np.float64)  # a copy: the input is not changed
    if not np.all(np.isfinite(arr)):
        raise InputError(f"tensor {name!r} has a non-finite value; it cannot be clipped")
    return arr
