"""A ``torch.distributed``-shaped helper for rounds whose spec says ``trainers_may_fetch``:
every trainer shares its tensors and gets the cohort's mean back, like
``all_reduce(op=AVG)`` (but secret-shared: no party sees one trainer's tensors).

::

    from mpcagg import SecureAggregator
    from mpcagg.clients.allreduce import all_reduce_mean

    with SecureAggregator("cluster.toml", cert=..., key=...) as me:
        averaged = all_reduce_mean(me, "round-7", model.named_parameters(), use_grad=True)
        for name, p in model.named_parameters():
            p.grad.copy_(averaged[name])

The round is closed by the collector (or its deadline), not by the trainers; the helper
waits for COMMITTED. :func:`poll` asks once: a round that is not committed yet answers
:class:`Pending` (never the PERMISSION_DENIED a premature fetch would get: before the
cohort is agreed nobody is in it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcagg.clients.layout import named_arrays
from mpcagg.clients.results import AggregateResult
from mpcagg.clients.trainer import SecureAggregator
from mpcagg.protocol.errors import CloseTimeout, InputError, RoundStateError
from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import RoundState


@dataclass(frozen=True, slots=True)
class Pending:
    """The round is not committed yet: ``states`` by party (OPEN, CLOSING, UNKNOWN)."""

    round_id: str
    states: dict[int, RoundState]

    def __str__(self) -> str:
        views = ", ".join(f"party {p}: {s.name}" for p, s in sorted(self.states.items()))
        return f"round {self.round_id!r} is not committed yet ({views})"


def poll(trainer: SecureAggregator, spec: RoundSpec) -> AggregateResult | Pending:
    """The round's result if every party has committed it, else :class:`Pending`.

    Raises :class:`RoundStateError` if a party reports it FAILED, and the server's
    error (e.g. :class:`PermissionDenied`) if this trainer is not in the cohort.
    """
    statuses = trainer.status(spec.round_id)
    failed = [s for s in statuses if s.state is RoundState.FAILED]
    if failed:
        raise RoundStateError(
            f"round {spec.round_id!r} failed at party {failed[0].party}: {failed[0].reason}"
        )
    if all(s.state is RoundState.COMMITTED for s in statuses):
        return trainer.result(spec)
    return Pending(spec.round_id, {s.party: s.state for s in statuses})


def all_reduce_mean(
    trainer: SecureAggregator,
    round_: RoundSpec | str,
    tensors: Any,
    *,
    use_grad: bool = False,
    weight: float | None = None,
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Share ``tensors``, wait until the round commits, return the cohort's mean.

    ``tensors`` as :meth:`SecureAggregator.submit` takes them (``weight`` for a weighted
    round). Each returned tensor has the dtype and, for torch tensors, the device of
    the one given (numpy in, numpy out). An upload a party did not acknowledge is
    resumed once. Raises :class:`InputError` for a round that does not let trainers
    fetch, :class:`CloseTimeout` if it is not committed within ``timeout_s``,
    :class:`RoundStateError` if it failed, and what ``submit`` raises.
    """
    spec = trainer.join(round_) if isinstance(round_, str) else round_
    if not spec.trainers_may_fetch:
        raise InputError(
            f"round {spec.round_id!r} does not let trainers fetch its result; open it with "
            "trainers_may_fetch=True"
        )
    if not hasattr(tensors, "items") and not hasattr(tensors, "state_dict"):
        tensors = list(tensors)  # e.g. model.named_parameters(): read twice below
    originals = dict(named_arrays_like(tensors, use_grad=use_grad))
    receipt = trainer.submit(spec, tensors, use_grad=use_grad, weight=weight)
    if not receipt.complete:
        receipt = trainer.resume(receipt)
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = poll(trainer, spec)
        if isinstance(outcome, AggregateResult):
            return {name: like(originals[name], mean) for name, mean in outcome.mean.items()}
        if time.monotonic() + interval_s > deadline:
            raise CloseTimeout(f"{outcome}; gave up after {timeout_s}s")
        sleep(interval_s)


def named_arrays_like(tensors: Any, *, use_grad: bool) -> list[tuple[str, Any]]:
    """``(name, original tensor)`` pairs: what each mean is converted back to."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensors, torch.nn.Module):
        if use_grad:
            return [(n, p.grad) for n, p in tensors.named_parameters() if p.requires_grad]
        return list(tensors.state_dict().items())
    pairs = list(tensors.items()) if hasattr(tensors, "items") else list(tensors)
    if use_grad:
        return [(n, t.grad) for n, t in pairs]
    named_arrays(pairs)  # validates names and values as submit does
    return pairs


def like(original: Any, mean: np.ndarray) -> Any:
    """``mean`` in ``original``'s type, dtype and device."""
    if isinstance(original, np.ndarray):
        return mean.astype(original.dtype)
    if hasattr(original, "device") and hasattr(original, "dtype"):  # a torch tensor
        import torch

        return torch.from_numpy(np.array(mean)).to(dtype=original.dtype, device=original.device)
    return mean
