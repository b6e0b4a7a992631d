"""A round's tensor layout: ordered names and shapes, and the flat vector they make.

The flat vector is the row-major concatenation of the tensors in layout order; it
is what gets fixed-point encoded and shared. A layout comes from a round spec
(:meth:`TensorLayout.from_spec`) or is derived from a model's tensors
(:meth:`TensorLayout.from_tensors`), which may be given as

- a ``torch.nn.Module`` (its ``state_dict()``; with ``use_grad`` its trainable
  parameters' gradients),
- a mapping of name to numpy array or torch tensor (e.g. a ``state_dict``),
- an iterable of ``(name, tensor)`` pairs (e.g. ``model.named_parameters()``).

Only floating tensors take part: integer and boolean entries (such as batch norm's
``num_batches_tracked``) are skipped when a layout is derived and ignored by
:meth:`TensorLayout.flatten` unless the layout names them. torch is never imported
here: a value is a torch tensor only if torch is already loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from mpcagg.protocol.errors import InputError, InvalidArgument, LayoutError
from mpcagg.protocol.spec import RoundSpec, TensorSpec

FloatArray = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True, slots=True)
class TensorLayout:
    """Ordered, uniquely named tensor shapes. Raises :class:`LayoutError` if invalid."""

    tensors: tuple[TensorSpec, ...]
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise LayoutError(f"tensor names must be unique; repeated: {dup}")
        offsets = [0]
        for t in self.tensors:
            offsets.append(offsets[-1] + t.size)
        object.__setattr__(self, "_offsets", tuple(offsets))

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str, Iterable[int]]]) -> TensorLayout:
        """A layout from ``(name, shape)`` pairs."""
        try:
            return cls(
                tuple(TensorSpec(name, tuple(int(d) for d in shape)) for name, shape in shapes)
            )
        except InvalidArgument as exc:
            raise LayoutError(str(exc)) from None

    @classmethod
    def from_spec(cls, spec: RoundSpec) -> TensorLayout:
        """The layout a round spec fixes."""
        return cls(tuple(spec.tensors))

    @classmethod
    def from_tensors(cls, tensors: Any, *, use_grad: bool = False) -> TensorLayout:
        """The layout of a model's floating tensors, in their given order (see module doc)."""
        arrays = [(n, a) for n, a in named_arrays(tensors, use_grad=use_grad) if a is not None]
        return cls.from_shapes((name, arr.shape) for name, arr in arrays)

    @classmethod
    def of(cls, source: Any, *, use_grad: bool = False) -> TensorLayout:
        """``source`` itself if a layout, a spec's layout, or the layout of tensors."""
        if isinstance(source, TensorLayout):
            return source
        if isinstance(source, RoundSpec):
            return cls.from_spec(source)
        return cls.from_tensors(source, use_grad=use_grad)

    @property
    def names(self) -> tuple[str, ...]:
        """Tensor names, in flattening order."""
        return tuple(t.name for t in self.tensors)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Tensor shapes, in the order of :attr:`names`."""
        return tuple(t.shape for t in self.tensors)

    @property
    def length(self) -> int:
        """Elements of the flat vector."""
        return self._offsets[-1]

    def to_tensor_specs(self) -> tuple[TensorSpec, ...]:
        """The layout as the round spec's tensor list."""
        return self.tensors

    def locate(self, flat_index: int) -> tuple[str, tuple[int, ...]]:
        """The tensor name and multi-index of a flat vector index."""
        if not 0 <= flat_index < self.length:
            raise IndexError(f"flat index {flat_index} is outside 0..{self.length - 1}")
        for t, start, stop in zip(self.tensors, self._offsets, self._offsets[1:], strict=False):
            if start <= flat_index < stop:
                idx = np.unravel_index(flat_index - start, t.shape) if t.shape else ()
                return t.name, tuple(int(i) for i in idx)
        raise AssertionError("unreachable: offsets cover the whole vector")  # pragma: no cover

    def flatten(self, tensors: Any, *, use_grad: bool = False) -> FloatArray:
        """The flat vector of ``tensors`` in layout order.

        ``tensors`` takes any form :meth:`from_tensors` accepts. The result is float32
        if every tensor is float32 (CrypTen's float32 encoding path), else float64.
        Raises :class:`LayoutError` as :meth:`arrays`.
        """
        arrays = [a for _, a in self.arrays(tensors, use_grad=use_grad)]
        all32 = all(a.dtype == np.float32 for a in arrays)
        out: FloatArray = np.empty(self.length, dtype=np.float32 if all32 else np.float64)
        for arr, start, stop in zip(arrays, self._offsets, self._offsets[1:], strict=False):
            out[start:stop] = arr.reshape(-1)
        return out

    def arrays(self, tensors: Any, *, use_grad: bool = False) -> list[tuple[str, FloatArray]]:
        """``tensors`` as ``(name, array)`` in layout order, each checked against its
        shape; the arrays are the caller's (views where the input allows, no copy).

        Raises :class:`LayoutError` listing missing and unexpected names, then every
        shape or dtype that does not match.
        """
        given = dict(named_arrays(tensors, use_grad=use_grad))
        expected = set(self.names)
        missing = [n for n in self.names if n not in given]
        unexpected = [n for n, a in given.items() if n not in expected and a is not None]
        if missing or unexpected:
            parts = [f"missing {missing}"] if missing else []
            parts += [f"unexpected {unexpected}"] if unexpected else []
            raise LayoutError(f"tensors do not match the layout: {'; '.join(parts)}")
        problems = []
        arrays: list[tuple[str, FloatArray]] = []
        for t in self.tensors:
            arr = given[t.name]
            if arr is None:
                problems.append(f"tensor {t.name!r} is not floating point")
            elif arr.shape != t.shape:
                problems.append(
                    f"tensor {t.name!r} has shape {list(arr.shape)}, expected {list(t.shape)}"
                )
            else:
                arrays.append((t.name, arr))
        if problems:
            raise LayoutError("; ".join(problems))
        return arrays

    def unflatten(self, vector: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """Views of ``vector`` in each tensor's shape. Raises :class:`LayoutError` on length."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or len(vec) != self.length:
            raise LayoutError(
                f"vector of shape {list(vec.shape)} does not match the layout "
                f"(length {self.length})"
            )
        return {
            t.name: vec[start:stop].reshape(t.shape)
            for t, start, stop in zip(self.tensors, self._offsets, self._offsets[1:], strict=False)
        }


def named_arrays(tensors: Any, *, use_grad: bool = False) -> list[tuple[str, FloatArray | None]]:
    """``(name, array)`` pairs of ``tensors``; ``None`` stands for a non-floating tensor.

    Raises :class:`InputError` for an unsupported container, a non-string or repeated
    name, a value that is not an array or tensor, or a missing gradient.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensors, torch.nn.Module):
        if use_grad:
            pairs = [(n, p) for n, p in tensors.named_parameters() if p.requires_grad]
        else:
            pairs = list(tensors.state_dict().items())
    elif isinstance(tensors, Mapping):
        pairs = list(tensors.items())
    elif isinstance(tensors, (str, bytes, np.ndarray)) or _is_tensor(tensors):
        raise InputError(
            f"expected a model, a mapping or (name, tensor) pairs, got {type(tensors).__name__}"
        )
    elif isinstance(tensors, Iterable):
        pairs = []
        for item in tensors:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise InputError(
                    f"expected (name, tensor) pairs, got an item {type(item).__name__}"
                )
            pairs.append(item)
    else:
        raise InputError(
            f"expected a model, a mapping or (name, tensor) pairs, got {type(tensors).__name__}"
        )
    out: list[tuple[str, FloatArray | None]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if not isinstance(name, str):
            raise InputError(f"tensor names must be strings, got {type(name).__name__}")
        if name in seen:
            raise InputError(f"tensor {name!r} is given twice")
        seen.add(name)
        if use_grad:
            value = _grad_of(name, value)
        out.append((name, _as_float_array(name, value)))
    return out


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _grad_of(name: str, value: Any) -> Any:
    if not hasattr(value, "grad"):
        raise InputError(f"tensor {name!r} is a {type(value).__name__}, which has no .grad")
    if value.grad is None:
        raise InputError(
            f"tensor {name!r} has no gradient (.grad is None); run backward() first or leave it out"
        )
    return value.grad


def _as_float_array(name: str, value: Any) -> FloatArray | None:
    """``value`` as a numpy array (zero-copy where possible); ``None`` if not floating."""
    if _is_tensor(value):
        if not value.is_floating_point():
            return None
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.double()
        arr: FloatArray = t.numpy()
        return arr
    if isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            return None
        return value
    raise InputError(
        f"tensor {name!r} is a {type(value).__name__}; expected a numpy array or torch tensor"
    )
