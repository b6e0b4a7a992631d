"""The leader's part of closing a round: agree the cohort, then commit it everywhere.

1. Every party (the leader included) returns its manifest and stops accepting uploads.
2. The cohort is the intersection of the manifests: a trainer that reached only
   some servers is simply left out (no recovery protocol for dropouts).
3. Below ``min_clients``: the round FAILS everywhere and nothing is revealed.
4. Otherwise the leader records the cohort durably, commits it on every peer, then
   on itself. A peer that is down leaves the round CLOSING; closing again resumes
   with the same recorded cohort (idempotent, restart-safe).
"""

from __future__ import annotations

import logging
import threading
import time

from servers.aggregator import Aggregator, Manifest, Status
from servers.errors import ServiceError
from servers.peers import PeerClient
from servers.round import RoundState
from servers.spec import cohort_digest

log = logging.getLogger("mpcagg.leader")


class Leader:
    """Runs on party 0: closes rounds on request and at their deadline."""

    def __init__(self, aggregator: Aggregator, peers: list[PeerClient]) -> None:
        self._agg = aggregator
        self._peers = peers
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[str, float] = {}

    def _lock_for(self, round_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(round_id, threading.Lock())

    def close(self, round_id: str) -> Status:
        """Close ``round_id``; raises :class:`servers.errors.Unavailable` if a peer is down."""
        with self._lock_for(round_id):
            try:
                return self._close(round_id)
            except ServiceError as exc:
                self._agg.note(round_id, f"waiting: {exc}")
                raise

    def _close(self, round_id: str) -> Status:
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
            manifests = [self._agg.manifest(round_id, spec.digest)]
            manifests += [p.manifest(round_id, spec.digest) for p in self._peers]
            failed = [m for m in manifests if m.state is RoundState.FAILED]
            if failed:
                return self._fail(round_id, f"party {failed[0].party} reports the round FAILED")
            cohort = _intersection(manifests)
            if len(cohort) < spec.min_clients:
                held = ", ".join(f"party {m.party}: {len(m.client_ids)}" for m in manifests)
                return self._fail(
                    round_id,
                    f"cohort of {len(cohort)} clients is below min_clients "
                    f"({spec.min_clients}); uploads held: {held}",
                )
            self._agg.decide(round_id, cohort, cohort_digest(cohort))
        digest = cohort_digest(cohort)
        for peer in self._peers:
            peer.commit(round_id, cohort, digest, spec.digest)
        status = self._agg.commit(round_id, cohort, digest)
        log.info("round %s committed on all %d parties", round_id, len(self._peers) + 1)
        return status

    def _fail(self, round_id: str, reason: str) -> Status:
        status = self._agg.fail(round_id, reason)
        self._fail_peers(round_id, reason, strict=False)
        return status

    def _fail_peers(self, round_id: str, reason: str, *, strict: bool) -> None:
        for peer in self._peers:
            try:
                peer.fail(round_id, reason)
            except ServiceError as exc:
                if strict:
                    raise
                log.warning(
                    "could not tell party %d that round %s failed: %s", peer.party, round_id, exc
                )

    # --- deadlines and resumption --------------------------------------------------------

    def start(self, interval: float = 0.2) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="leader", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """Close every round past its deadline, and resume interrupted closes."""
        now = self._agg.clock()
        for rnd in self._agg.rounds():
            rid = rnd.spec.round_id
            due = rnd.state is RoundState.CLOSING or (
                rnd.state is RoundState.OPEN and 0 < rnd.spec.deadline_unix <= now
            )
            if not due or self._retry_at.get(rid, 0.0) > time.monotonic():
                continue
            try:
                self.close(rid)
                self._retry_at.pop(rid, None)
            except ServiceError as exc:
                log.warning("closing round %s at its deadline failed, will retry: %s", rid, exc)
                self._retry_at[rid] = time.monotonic() + 1.0


def _intersection(manifests: list[Manifest]) -> tuple[str, ...]:
    common = set(manifests[0].client_ids)
    for m in manifests[1:]:
        common &= set(m.client_ids)
    return tuple(sorted(common))
