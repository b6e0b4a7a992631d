"""The retention policy (``[retention]`` in the cluster file) and the clean-up task that
applies it in every server.

Each pass (every ``interval_s``, and on ``mpcagg rounds prune``):

1. an OPEN round without a deadline that is older than ``open_max_age_days`` **fails**
   here (nothing is revealed for it). At the leader the failure then reaches every
   peer (the leader retries Fail until each has recorded it); a non-leader fails only
   rounds still OPEN, i.e. ones the leader has not begun to close (a later manifest
   then reports FAILED, and the leader fails the round everywhere);
2. a finished round (COMMITTED or FAILED) is **pruned** (its rows, spool directory and
   aggregate file deleted) once it is not among the ``keep_rounds`` most recently
   finished, or it finished more than ``keep_days`` ago. The leader keeps FAILED rounds
   some peer has not yet recorded as failed. Audit records are never pruned.

OPEN and CLOSING rounds are never pruned; a CLOSING round that cannot close is
aborted by the operator (``mpcagg rounds abort``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mpcagg.protocol.admin import Decision, RoundSummary
from mpcagg.protocol.cluster import Retention
from mpcagg.protocol.errors import MpcaggError
from mpcagg.protocol.state import RoundState
from mpcagg.servers.inventory import Inventory
from mpcagg.servers.metrics import PRUNED
from mpcagg.servers.periodic import Periodic

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator
    from mpcagg.servers.leader import Leader

log = logging.getLogger("mpcagg.retention")

DAY = 86400.0


def plan(
    rounds: Sequence[RoundSummary],
    policy: Retention,
    now: float,
    protected: frozenset[str] = frozenset(),
) -> list[Decision]:
    """The decisions of one pass over ``rounds`` at time ``now`` (pure)."""
    out: list[Decision] = []
    max_open = policy.open_max_age_days * DAY
    for r in rounds:
        if (
            r.state is RoundState.OPEN
            and r.deadline_unix == 0
            and max_open > 0
            and r.age(now) > max_open
        ):
            out.append(
                Decision(
                    r.round_id,
                    "fail",
                    f"OPEN without a deadline for more than {policy.open_max_age_days:g} days "
                    "(retention open_max_age_days); nothing is revealed",
                    "open_max_age_days",
                )
            )
    finished = sorted(
        (r for r in rounds if r.state.final and r.round_id not in protected),
        key=lambda r: (r.finished_at or r.created_at, r.round_id),
        reverse=True,
    )
    for rank, r in enumerate(finished):
        ended = r.finished_at or r.created_at
        if policy.keep_rounds and rank >= policy.keep_rounds:
            why = f"not among the {policy.keep_rounds} most recently finished rounds"
            out.append(Decision(r.round_id, "prune", why, "keep_rounds"))
        elif policy.keep_days and now - ended > policy.keep_days * DAY:
            why = f"finished more than {policy.keep_days:g} days ago"
            out.append(Decision(r.round_id, "prune", why, "keep_days"))
    return out


class Janitor:
    """Applies :func:`plan` to one party, periodically and on request."""

    def __init__(
        self,
        aggregator: Aggregator,
        policy: Retention,
        leader: Leader | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._agg = aggregator
        self._policy = policy
        self._leader = leader
        self._clock = clock or aggregator.clock
        # A first pass soon after start, then every interval_s.
        self._periodic = Periodic(
            "retention",
            policy.interval_s,
            self.run_once,
            first_wait=min(policy.interval_s, 30.0),
            join_s=10.0,
        )
        self._pass = threading.Lock()

    def run_once(self, *, dry_run: bool = False) -> list[Decision]:
        """One pass; returns what was (``dry_run``: would be) done."""
        with self._pass:
            with Inventory(self._agg.storage.data_dir, self._agg.party) as inventory:
                rounds = inventory.rounds()
            protected = frozenset(self._leader.pending_failures()) if self._leader else frozenset()
            decisions = plan(rounds, self._policy, self._clock(), protected)
            if dry_run:
                return decisions
            done = []
            for d in decisions:
                try:
                    self._apply(d)
                except MpcaggError as exc:  # e.g. the round moved on meanwhile
                    log.info("retention: round %s left as it is: %s", d.round_id, exc)
                    continue
                done.append(d)
            return done

    def _apply(self, d: Decision) -> None:
        if d.action == "fail":
            rnd = self._agg.get(d.round_id)
            with rnd.lock:
                if rnd.state is not RoundState.OPEN:
                    return
                self._agg.fail(d.round_id, d.why)
            if self._leader is not None:
                self._leader.close(d.round_id)  # tells every peer; retried until recorded
            log.warning("retention: round %s failed: %s", d.round_id, d.why)
        else:
            self._agg.forget(d.round_id)
            PRUNED.labels(why=d.rule).inc()
            log.info("retention: round %s pruned: %s", d.round_id, d.why)

    # --- the periodic task ------------------------------------------------------------------

    def start(self) -> None:
        """Start applying the policy in a background thread (every ``interval_s``)."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop the thread and wait up to 10 s for it."""
        self._periodic.stop()
