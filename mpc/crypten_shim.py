"""The one place that imports CrypTen.

CrypTen 0.4.1 imports ``torch.onnx._internal.registration``, which torch ≥ 2.6 moved
to ``torch.onnx._internal.torchscript_exporter.registration``. :func:`load` installs
that alias (only if the old name is missing) and imports crypten. Nothing else in
the project imports ``crypten`` directly, so the numpy engine works without it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from mpcagg.mpc.errors import EngineUnavailable

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"


def _alias_registration() -> None:
    try:
        importlib.import_module(_OLD)
        return
    except ImportError:
        pass
    moved = importlib.import_module(_NEW)
    sys.modules[_OLD] = moved
    parent = importlib.import_module("torch.onnx._internal")
    parent.registration = moved  # type: ignore[attr-defined]


def load() -> ModuleType:
    """Import and return ``crypten`` (not initialised). Raises :class:`EngineUnavailable`."""
    if "crypten" in sys.modules:
        return sys.modules["crypten"]
    try:
        _alias_registration()
        return importlib.import_module("crypten")
    except ImportError as exc:
        raise EngineUnavailable(
            "the crypten engine needs crypten==0.4.1 and torch; "
            f"importing it failed: {exc}. Install with `pip install --no-deps crypten==0.4.1`."
        ) from exc


def ensure_initialized() -> ModuleType:
    """Import crypten and ``crypten.init()`` it once (single party unless the environment
    sets ``WORLD_SIZE``/``RANK``/``RENDEZVOUS`` for a multi-process run)."""
    crypten = load()
    if not crypten.is_initialized():
        crypten.init()
    return crypten
