"""Share-arithmetic engines: ``numpy`` (default, fast path) and ``crypten``."""

from __future__ import annotations

from mpcagg.mpc.engines.base import Engine
from mpcagg.mpc.engines.numpy_engine import NumpyEngine
from mpcagg.mpc.errors import ParameterError
from mpcagg.mpc.fixed_point import DEFAULT_PRECISION_BITS

ENGINE_NAMES = ("numpy", "crypten")


def get_engine(name: str = "numpy", precision_bits: int = DEFAULT_PRECISION_BITS) -> Engine:
    """The engine called ``name``. ``crypten`` raises :class:`mpc.errors.EngineUnavailable`
    if CrypTen cannot be imported."""
    if name == "numpy":
        return NumpyEngine()
    if name == "crypten":
        from mpcagg.mpc.engines.crypten_engine import CryptenEngine

        return CryptenEngine(precision_bits)
    raise ParameterError(f"engine must be one of {', '.join(ENGINE_NAMES)}; got {name!r}")


__all__ = ["ENGINE_NAMES", "Engine", "NumpyEngine", "get_engine"]
