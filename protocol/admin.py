"""What the operator commands (``mpcagg rounds``) see of a party's rounds: summaries of
the store and the retention policy's decisions. No share material, no client ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import RoundState


@dataclass(frozen=True, slots=True)
class RoundSummary:
    """One round at one party, as its store records it."""

    round_id: str
    party: int
    state: RoundState
    reason: str
    spec_digest: bytes
    cohort_size: int
    cohort_digest: bytes
    uploads: int
    full_shares: int
    seed_shares: int
    share_bytes: int
    created_at: float
    closed_at: float | None
    """When the party stopped accepting uploads (None: it never was CLOSING)."""
    finished_at: float | None
    """When it became COMMITTED or FAILED (None: not yet)."""
    deadline_unix: float
    spec: RoundSpec | None = None

    def age(self, now: float) -> float:
        """Seconds since the round was created, at ``now`` (Unix seconds); never negative,
        so a clock stepped back reads 0, not a negative age."""
        return max(now - self.created_at, 0.0)


Action = Literal["fail", "prune"]
Rule = Literal["open_max_age_days", "keep_rounds", "keep_days"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What one retention pass does (or would do) to one round, and why."""

    round_id: str
    action: Action
    why: str
    rule: Rule
