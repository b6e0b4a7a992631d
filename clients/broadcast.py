"""One call to every party: concurrent, each retried on transient errors, each outcome
classified. Every client-side call to all parties goes through :func:`broadcast`: the
trainer's uploads, the collector's CreateRound and share fetches, GetRound, and the
reveal status and sum."""

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
    """What each party answered: a result, no answer after retries, or a refusal.

    Every party called lands in exactly one slot.
    """

    acknowledged: dict[int, T] = field(default_factory=dict)
    unreachable: dict[int, MpcaggError] = field(default_factory=dict)
    """Transient errors that outlasted the retries (UNAVAILABLE, DEADLINE_EXCEEDED, Busy);
    when :func:`broadcast` is given ``delivered``, only those where no attempt handed
    over the whole request, so the party did not get it."""
    refused: dict[int, MpcaggError] = field(default_factory=dict)
    """Anything else, e.g. INVALID_ARGUMENT or PERMISSION_DENIED."""
    unanswered: dict[int, MpcaggError] = field(default_factory=dict)
    """Transient errors that outlasted the retries after some attempt had handed over the
    whole request (only when :func:`broadcast` is given ``delivered``): the party may
    have acted on it, e.g. a lost acknowledgement."""

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

    def merged(self, other: Outcomes[T]) -> Outcomes[T]:
        """These outcomes and ``other``'s (of other parties; ``other`` wins a clash)."""
        return Outcomes(
            acknowledged={**self.acknowledged, **other.acknowledged},
            unreachable={**self.unreachable, **other.unreachable},
            refused={**self.refused, **other.refused},
            unanswered={**self.unanswered, **other.unanswered},
        )


def broadcast(
    transport: Transport,
    op: Callable[[int], T],
    *,
    what: str,
    parties: Sequence[int] | None = None,
    delivered: Callable[[int], bool] | None = None,
) -> Outcomes[T]:
    """``op(party)`` for every party (or ``parties``) concurrently, each retried under
    the transport's policy; an :class:`MpcaggError` lands in its party's slot, other
    exceptions propagate.

    ``delivered(party)``, asked once the retries are over, says whether some attempt
    handed the whole request to ``party``: a transient error there is then
    ``unanswered`` rather than ``unreachable``. Without it, no party is ``unanswered``.
    """
    answers = transport.each_party(
        lambda p: transport.retrying(lambda: op(p), what=f"{what} at party {p}"), parties
    )
    out: Outcomes[T] = Outcomes()
    for party, answer in sorted(answers.items()):
        if not isinstance(answer, MpcaggError):
            out.acknowledged[party] = answer
        elif not getattr(answer, "transient", False):
            out.refused[party] = answer
        elif delivered is not None and delivered(party):
            out.unanswered[party] = answer
        else:
            out.unreachable[party] = answer
    return out


def round_statuses(transport: Transport, round_id: str) -> Outcomes[RoundStatus]:
    """Every party's status of ``round_id`` (GetRound), classified as :func:`broadcast`."""
    return broadcast(transport, lambda p: transport.get_round(p, round_id), what="GetRound")
