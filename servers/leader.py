"""The leader's part of closing a round: agree the cohort, then commit it everywhere.

1. Every party (the leader included) returns its manifest and stops accepting uploads.
2. The cohort is the intersection of the manifests over *sharings*: a client is in
   only if every party holds the same sharing (client id and sharing id) for it. A
   trainer that reached only some servers is simply left out (no recovery protocol
   for dropouts), and shares of two different sharings are never summed together.
3. Below ``min_clients``, or if a party *folded* a full share whose sharing is not in
   the cohort (a trainer that sent it before its seeds were all acknowledged, which
   the client never does): the round FAILS everywhere and nothing is revealed.
4. Otherwise the leader records the cohort durably, commits it on every peer, then
   on itself. A peer that is down leaves the round CLOSING; closing again resumes
   with the same recorded cohort (idempotent, restart-safe).
5. A FAILED round is failed on every peer: the leader retries Fail (from its
   periodic tick) until each peer has recorded it, so no party keeps a decided
   round's shares.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from mpcagg.protocol.errors import NotFound, ServiceError
from mpcagg.protocol.spec import Holding, cohort_digest
from mpcagg.protocol.state import Manifest, RoundState, RoundStatus
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.peers import LocalPeer, Peer
from mpcagg.servers.periodic import Periodic

log = logging.getLogger("mpcagg.leader")
_CLOSING = RoundState.CLOSING

RETRY_S = 1.0
"""After a close or a Fail that did not reach every party, the tick waits this long
before trying the round again."""


class Leader:
    """Runs on party 0: closes rounds on request and at their deadline.

    ``monotonic`` is the clock of the tick's back-off (:data:`RETRY_S`); tests pass a
    fake one. Deadlines are read on the aggregator's clock.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        peers: Sequence[Peer],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._agg = aggregator
        self._monotonic = monotonic
        self._peers = list(peers)
        self._local = LocalPeer(aggregator)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._ticker: Periodic | None = None
        self._retry_at: dict[str, float] = {}
        # FAILED rounds whose failure some peers have not recorded yet (Fail is
        # idempotent, so after a restart every FAILED round is told again once).
        self._unfailed: dict[str, set[int]] = {
            rnd.spec.round_id: {p.party for p in peers}
            for rnd in aggregator.rounds()
            if rnd.state is RoundState.FAILED
        }

    def _lock_for(self, round_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(round_id, threading.Lock())

    def close(self, round_id: str) -> RoundStatus:
        """Close ``round_id``; raises :class:`servers.errors.Unavailable` if a peer is down."""
        with self._lock_for(round_id):
            try:
                return self._close(round_id)
            except ServiceError as exc:
                self._agg.note(round_id, f"waiting: {exc}")
                raise

    def _close(self, round_id: str) -> RoundStatus:
        rnd = self._agg.get(round_id)
        status = self._agg.status(round_id)
        if status.state is RoundState.COMMITTED:
            return status
        if status.state is RoundState.FAILED:
            self._fail_peers(round_id, status.reason, strict=False)
            return status
        spec = rnd.spec
        cohort = rnd.decided
        if cohort is None:
            manifests = [p.manifest(round_id, spec.digest) for p in (self._local, *self._peers)]
            failed = [m for m in manifests if m.state not in (_CLOSING, RoundState.COMMITTED)]
            if failed:  # FAILED, or a state this party cannot read: nothing is revealed
                first = failed[0]
                return self._fail(
                    round_id, f"party {first.party} reports the round {first.state.value}"
                )
            cohort, split = _intersection(manifests)
            if split:
                log.warning(
                    "round %s: %d clients are held under different sharings by different "
                    "parties and are left out of the cohort",
                    round_id,
                    split,
                )
            stranded = _stranded(manifests, cohort)
            if stranded:  # a full share folded before its seeds were all held
                return self._fail(round_id, stranded)
            if len(cohort) < spec.min_clients:
                held = ", ".join(f"party {m.party}: {len(m.held)}" for m in manifests)
                return self._fail(
                    round_id,
                    f"cohort of {len(cohort)} clients is below min_clients "
                    f"({spec.min_clients}); uploads held: {held}",
                )
            self._agg.decide(round_id, cohort, cohort_digest(cohort))
        digest = cohort_digest(cohort)
        for peer in self._peers:
            peer.commit(round_id, cohort, digest, spec.digest)
        self._local.commit(round_id, cohort, digest, spec.digest)  # last: it answers CloseRound
        status = self._agg.status(round_id)
        log.info("round %s committed on all %d parties", round_id, len(self._peers) + 1)
        return status

    def _fail(self, round_id: str, reason: str) -> RoundStatus:
        status = self._agg.fail(round_id, reason)
        self._fail_peers(round_id, reason, strict=False)
        return status

    def _fail_peers(self, round_id: str, reason: str, *, strict: bool) -> None:
        """Tell every peer that has not recorded it yet that ``round_id`` FAILED.

        Peers that could not be told stay pending and :meth:`tick` tells them again.
        """
        with self._locks_guard:
            pending = self._unfailed.setdefault(round_id, {p.party for p in self._peers})
        for peer in self._peers:
            if peer.party not in pending:
                continue
            try:
                peer.fail(round_id, reason)
            except NotFound:
                pass  # the peer never had the round, or has pruned it: nothing to drop
            except ServiceError as exc:
                if strict:
                    raise
                log.warning(
                    "could not tell party %d that round %s failed (will retry): %s",
                    peer.party,
                    round_id,
                    exc,
                )
                continue
            with self._locks_guard:
                pending.discard(peer.party)
        with self._locks_guard:
            if not pending:
                self._unfailed.pop(round_id, None)

    def pending_failures(self) -> dict[str, set[int]]:
        """FAILED rounds and the peers that have not yet recorded the failure."""
        with self._locks_guard:
            return {rid: set(parties) for rid, parties in self._unfailed.items()}

    # --- deadlines and resumption --------------------------------------------------------

    def start(self, interval: float = 0.2) -> None:
        """Start the background :meth:`tick` (every ``interval`` s): rounds past their
        deadline, interrupted closes, FAILED rounds peers have not recorded.
        """
        self._ticker = Periodic("leader", interval, self.tick)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the tick and wait up to 5 s for its thread."""
        if self._ticker is not None:
            self._ticker.stop()

    def tick(self) -> None:
        """Close every round past its deadline, resume interrupted closes, and tell
        peers that missed it that a round FAILED."""
        now = self._agg.clock()
        unfailed = self.pending_failures()
        for rnd in self._agg.rounds():
            rid = rnd.spec.round_id
            due = (
                rnd.state is RoundState.CLOSING
                or (rnd.state is RoundState.OPEN and 0 < rnd.spec.deadline_unix <= now)
                or (rnd.state is RoundState.FAILED and rid in unfailed)
            )
            if not due or self._retry_at.get(rid, 0.0) > self._monotonic():
                continue
            try:
                self.close(rid)
                if rid in self.pending_failures():  # a peer missed the Fail: back off
                    self._retry_at[rid] = self._monotonic() + RETRY_S
                else:
                    self._retry_at.pop(rid, None)
            except ServiceError as exc:
                log.warning("closing round %s at its deadline failed, will retry: %s", rid, exc)
                self._retry_at[rid] = self._monotonic() + RETRY_S


def _intersection(manifests: list[Manifest]) -> tuple[tuple[Holding, ...], int]:
    """The holdings every manifest lists, and how many clients were held everywhere
    but under different sharings (left out)."""
    common = set(manifests[0].held)
    named = {m.client_id for m in manifests[0].held}
    for m in manifests[1:]:
        common &= set(m.held)
        named &= {h.client_id for h in m.held}
    return tuple(sorted(common)), len(named) - len(common)


def _stranded(manifests: list[Manifest], cohort: tuple[Holding, ...]) -> str:
    """Why no cohort can be committed, or "": a party folded a full share (sent as if
    every seed were acknowledged) whose sharing is not held everywhere. It cannot take
    it out, so its aggregate share would be wrong; a trainer using the client never
    causes this (it sends its full share only after every seed is acknowledged)."""
    members = set(cohort)
    for m in manifests:
        out = [h for h in m.folded if h not in members]
        if out:
            return (
                f"party {m.party} folded the full share of client {out[0].client_id!r} "
                f"(and {len(out) - 1} more) whose seeds not every party holds: it cannot "
                "be left out, so nothing is revealed"
            )
    return ""
