"""One round's state machine on one party.

::

    OPEN ──manifest──▶ CLOSING ──commit(cohort)──▶ COMMITTED
      │                   │
      └──────fail─────────┴──────▶ FAILED

Uploads are accepted only while OPEN. COMMITTED fixes the cohort for good: the
aggregate share is computed over exactly that cohort and never over another one
(recomputing over a different subset would reveal one trainer by differencing).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mpcagg.protocol.errors import RoundNotOpen, Unavailable
from mpcagg.protocol.spec import Holding, RoundSpec
from mpcagg.protocol.state import RoundState, RoundStatus

if TYPE_CHECKING:
    from mpcagg.servers.accumulator import RoundAccumulator
    from mpcagg.servers.records import UploadRecord

_ALLOWED = {
    RoundState.OPEN: {RoundState.CLOSING, RoundState.FAILED},
    RoundState.CLOSING: {RoundState.COMMITTED, RoundState.FAILED},
    RoundState.COMMITTED: set(),
    RoundState.FAILED: set(),
}


@dataclass
class Round:
    """Mutable state of one round; every mutation happens under :attr:`lock`."""

    spec: RoundSpec
    state: RoundState
    accumulator: Any
    reason: str = ""
    ingest: RoundAccumulator | None = None
    """OPEN and CLOSING: the folded full shares and the group commit of uploads."""
    uploads: dict[str, UploadRecord] = field(default_factory=dict)
    inflight: set[str] = field(default_factory=set)
    committing: set[str] = field(default_factory=set)  # being made durable; manifests wait
    cohort: tuple[Holding, ...] | None = None
    decided: tuple[Holding, ...] | None = None  # leader only: cohort chosen, commits under way
    cohort_digest: bytes = b""
    bytes_received: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def in_cohort(self, client_id: str) -> bool:
        """Whether ``client_id`` is in the committed cohort."""
        return any(m.client_id == client_id for m in self.cohort or ())

    def holdings(self) -> tuple[Holding, ...]:
        """What this party durably holds, sorted by client id."""
        return tuple(sorted(u.holding for u in self.uploads.values()))

    def folded(self) -> tuple[Holding, ...]:
        """The held full shares folded into the accumulator, sorted by client id."""
        return tuple(sorted(u.holding for u in self.uploads.values() if u.folded))

    def move(self, new: RoundState, reason: str = "") -> None:
        """Transition to ``new``; raises :class:`RoundNotOpen` for an illegal transition."""
        if new not in _ALLOWED[self.state]:
            raise RoundNotOpen(
                f"round {self.spec.round_id!r} is {self.state.value}; cannot become {new.value}"
            )
        self.state = new
        self.reason = reason
        self.changed.notify_all()

    def status(self, party: int) -> RoundStatus:
        """This round as party ``party`` reports it (call with :attr:`lock` held)."""
        return RoundStatus(
            round_id=self.spec.round_id,
            party=party,
            state=self.state,
            spec_digest=self.spec.digest,
            received=len(self.uploads),
            cohort_size=len(self.cohort) if self.cohort is not None else 0,
            cohort_digest=self.cohort_digest,
            reason=self.reason,
        )

    def quiesce(self, timeout_s: float) -> None:
        """Wait until no upload is half-recorded (:attr:`committing` empty).

        Call with :attr:`lock` held; it is released while waiting. Raises
        :class:`Unavailable` if uploads are still being made durable after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self.committing:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"round {self.spec.round_id!r}: {len(self.committing)} uploads are still "
                    "being made durable; retry the close"
                )
            self.changed.wait(left)

    def require(self, *states: RoundState) -> None:
        """Raise :class:`RoundNotOpen` (naming the state and its reason) unless the round
        is in one of ``states``."""
        if self.state not in states:
            wanted = " or ".join(s.value for s in states)
            detail = f" ({self.reason})" if self.reason else ""
            raise RoundNotOpen(
                f"round {self.spec.round_id!r} is {self.state.value}{detail}; expected {wanted}"
            )
