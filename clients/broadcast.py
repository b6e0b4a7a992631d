"""One call to every party: concurrent, each retried on transient errors, each outcome
classified. The trainer and the collector both use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mpcagg.clients.transport import Transport
from mpcagg.protocol.errors import MpcaggError
from mpcagg.protocol.state import RoundStatus

T = TypeVar("T")


@dataclass(frozen=True)
class Outcomes(Generic[T]):
    """What each party answered: a result, no answer after retries, or a refusal."""

    acknowledged: dict[int, T] = field(default_factory=dict)
    unreachable: dict[int, MpcaggError] = field(default_factory=dict)
    """Transient errors that outlasted the retries (UNAVAILABLE, DEADLINE_EXCEEDED, Busy)."""
    refused: dict[int, MpcaggError] = field(default_factory=dict)
    """Anything else, e.g. INVALID_ARGUMENT or PERMISSION_DENIED."""

    def raise_refusal(self, note: str = "") -> None:
        """Raise the first refusal (lowest party), with ``note`` added, if there is one."""
        if self.refused:
            first = self.refused[min(self.refused)]
            if note:
                first.add_note(note)
            raise first

    def reasons(self, which: dict[int, MpcaggError] | None = None) -> dict[int, str]:
        """Party → message, for ``unreachable`` (default) or another slot."""
        chosen = self.unreachable if which is None else which
        return {p: str(e) for p, e in sorted(chosen.items())}


def broadcast(
    transport: Transport,
    op: Callable[[int], T],
    *,
    what: str,
    parties: Sequence[int] | None = None,
) -> Outcomes[T]:
    """``op(party)`` for every party (or ``parties``) concurrently, each retried under
    the transport's policy; an :class:`MpcaggError` lands in its party's slot."""
    answers = transport.each_party(
        lambda p: transport.retrying(lambda: op(p), what=f"{what} at party {p}"), parties
    )
    out: Outcomes[T] = Outcomes()
    for party, answer in sorted(answers.items()):
        if not isinstance(answer, MpcaggError):
            out.acknowledged[party] = answer
        elif getattr(answer, "transient", False):
            out.unreachable[party] = answer
        else:
            out.refused[party] = answer
    return out


def round_statuses(transport: Transport, round_id: str) -> Outcomes[RoundStatus]:
    """Every party's status of ``round_id`` (GetRound)."""
    return broadcast(transport, lambda p: transport.get_round(p, round_id), what="GetRound")
