"""Reveal mode ``servers``: the parties open a committed aggregate among themselves.

For every COMMITTED round whose spec says ``reveal = servers``, the :class:`Revealer`
forms the parties' group (:mod:`servers.group`), opens its own aggregate share with
the engine over it (``Engine.reveal``: CrypTen's ``reveal`` with the group as its
communicator, or the numpy exchange), then checks with one more exchange that every
party opened the same sum (a party that sent different shares to different parties is
caught there). Only then is the sum written, to ``<data_dir>/reveal/<round>.sum``
beside a JSON record; until then nothing of it exists at this party.

The reveal waits until its **window** closes: ``[limits] reveal_timeout_s`` after the
commit, or after the round's deadline if that is later (the window's end is written
at the start, so a restart does not extend it). A group that cannot form or finish
by then (a party down, or one that refuses) fails the reveal cleanly with the reason.
A member that restarts mid-reveal forms a new group (new incarnation) and every party
starts over; a party that already revealed joins again while its window is open, so
a restarted party can finish. Opening the same aggregate again reveals nothing new.

Who gets what (:class:`servers.reveal_service.RevealService`, the client port): the
collector and trainers the reveal's state (never the sum); cohort trainers the sum if
``trainers_may_fetch``; the party's operator reads its data directory (``mpcagg result``).
No aggregate share is served in this mode (``Aggregator.aggregate_share`` refuses it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mpcagg.mpc.errors import GroupChanged, GroupUnavailable
from mpcagg.mpc.group import GroupChannel
from mpcagg.mpc.ring import DTYPE, RingVector, to_bytes
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import (
    InvalidArgument,
    PermissionDenied,
    RoundNotOpen,
    Unavailable,
)
from mpcagg.protocol.group import RevealState, RevealStatus, binding
from mpcagg.protocol.identity import Identity
from mpcagg.protocol.spec import RevealMode
from mpcagg.protocol.state import RoundState
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.group import GroupTransport
from mpcagg.servers.periodic import Periodic
from mpcagg.servers.results import ResultStore, RevealRecord

log = logging.getLogger("mpcagg.reveal")

Clock = Callable[[], float]


@dataclass(frozen=True)
class RevealStats:
    """How one reveal went at this party (logged; read by the benchmark)."""

    attempts: int
    formed_s: float
    opened_s: float
    payload_sent: int
    payload_received: int
    frame_bytes_sent: int


def _digest_words(total: RingVector) -> RingVector:
    return np.frombuffer(hashlib.sha256(to_bytes(total)).digest(), dtype=DTYPE).copy()


# --- the revealer ------------------------------------------------------------------------


class Revealer:
    """Opens every committed ``servers``-mode round of one party (background thread)."""

    def __init__(
        self,
        aggregator: Aggregator,
        transport: GroupTransport,
        store: ResultStore,
        limits: Limits,
        clock: Clock = time.time,
    ) -> None:
        self._agg = aggregator
        self._t = transport
        self._store = store
        self._timeout = limits.reveal_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._creating = threading.Lock()
        self._records: dict[str, RevealRecord] = {}
        self._notes: dict[str, str] = {}
        self._running: set[str] = set()
        self._last_view: dict[str, dict[int, bytes]] = {}
        self.stats: dict[str, RevealStats] = {}
        self._ticker: Periodic | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, interval: float = 0.1) -> None:
        """Start the background tick (every ``interval`` s) that starts and resumes reveals."""
        self._ticker = Periodic("revealer", interval, self.tick)
        self._ticker.start()

    def stop(self) -> None:
        """Stop the tick and wait up to 5 s for its thread (running reveals are daemons)."""
        if self._ticker is not None:
            self._ticker.stop()

    def tick(self) -> None:
        """Start (or resume, or rejoin) the reveal of every committed servers-mode round."""
        now = self._clock()
        for rnd in self._agg.rounds():
            spec = rnd.spec
            if spec.reveal is not RevealMode.SERVERS or rnd.state is not RoundState.COMMITTED:
                continue
            rid = spec.round_id
            with self._lock:
                if rid in self._running:
                    continue
            record = self._record(rid, now)
            if now >= record.deadline_unix:
                if record.state is RevealState.PENDING:
                    self._fail(record, "the reveal window closed before the group opened it")
                self._t.mailbox.drop(rid)
                continue
            if record.state is RevealState.PENDING:
                self._spawn(rid, rejoin=False)
            elif record.state is RevealState.REVEALED and self._asked_again(rid):
                self._spawn(rid, rejoin=True)

    def _record(self, rid: str, now: float) -> RevealRecord:
        with self._lock:
            record = self._records.get(rid)
        if record is not None:
            return record
        with self._creating:  # the revealer and the Group service may both ask first
            return self._load_or_begin(rid, now)

    def _load_or_begin(self, rid: str, now: float) -> RevealRecord:
        with self._lock:
            record = self._records.get(rid)
        if record is None:
            record = self._store.read(rid)
        if record is None:
            rnd = self._agg.get(rid)
            status = self._agg.status(rid)
            record = self._store.write(
                RevealRecord(
                    round_id=rid,
                    state=RevealState.PENDING,
                    deadline_unix=max(rnd.spec.deadline_unix, now) + self._timeout,
                    spec=rnd.spec.canonical(),
                    cohort_size=status.cohort_size,
                    cohort_digest=status.cohort_digest,
                )
            )
        with self._lock:
            self._records[rid] = record
        return record

    def _asked_again(self, rid: str) -> bool:
        """Whether a party sent a hello from an incarnation this party's last group for
        ``rid`` did not have (it restarted and needs this party's share again)."""
        me = self._agg.party
        with self._lock:
            last = self._last_view.get(rid, {})
        hellos = self._t.mailbox.hellos(rid)
        return any(src != me and last.get(src) != inc for src, inc in hellos.items())

    def _spawn(self, rid: str, *, rejoin: bool) -> None:
        with self._lock:
            self._running.add(rid)
        threading.Thread(
            target=self._work, args=(rid, rejoin), name=f"reveal-{rid}", daemon=True
        ).start()

    def _note(self, rid: str, what: str) -> None:
        with self._lock:
            self._notes[rid] = what

    def _fail(self, record: RevealRecord, reason: str) -> None:
        failed = self._store.write(replace(record, state=RevealState.FAILED, reason=reason))
        with self._lock:
            self._records[record.round_id] = failed
        log.warning("round %s: the reveal among the servers failed: %s", record.round_id, reason)

    def _work(self, rid: str, rejoin: bool) -> None:
        try:
            record = self._record(rid, self._clock())
            try:
                total, stats = self._open(rid, record)
            except GroupUnavailable as exc:
                if not rejoin:
                    self._fail(record, str(exc))
                else:
                    log.warning("round %s: joining the group again failed: %s", rid, exc)
                return
            self.stats[rid] = stats
            if rejoin:
                if not np.array_equal(total, self._store.revealed_sum(record)):
                    log.error("round %s: the group opened another sum than before", rid)
                return
            revealed = self._store.write(
                replace(record, state=RevealState.REVEALED, revealed_unix=self._clock()), total
            )
            with self._lock:
                self._records[rid] = revealed
            log.info(
                "round %s revealed among %d parties: formed in %.3fs, opened in %.3fs "
                "(%d attempts), payload sent %d B, received %d B, frames sent %d B",
                rid,
                self._agg.n_parties,
                stats.formed_s,
                stats.opened_s,
                stats.attempts,
                stats.payload_sent,
                stats.payload_received,
                stats.frame_bytes_sent,
            )
        except Exception:
            log.exception("round %s: the reveal failed with an internal error", rid)
            if not rejoin:
                current = self._store.read(rid)
                if current is not None and current.state is RevealState.PENDING:
                    self._fail(current, "internal error at this party (see its log)")
        finally:
            with self._lock:
                self._running.discard(rid)

    def _open(self, rid: str, record: RevealRecord) -> tuple[RingVector, RevealStats]:
        spec = self._agg.get(rid).spec
        status = self._agg.status(rid)
        engine = self._agg.engine
        acc = engine.from_ring(self._agg.storage.read_aggregate(rid))
        bound = binding(spec.digest, status.cohort_digest)
        deadline = time.monotonic() + max(0.0, record.deadline_unix - self._clock())
        sent_before = self._t.bytes_sent
        attempts = 0
        while True:
            attempts += 1
            self._note(rid, f"forming the group of {self._agg.n_parties} parties")
            started = time.monotonic()
            formed = self._t.form(rid, bound, deadline)
            formed_at = time.monotonic()
            self._note(rid, "opening the aggregate")
            try:
                channel = GroupChannel(formed)
                total = engine.reveal(acc, channel)
                check = channel.all_gather(_digest_words(total))
            except GroupChanged as exc:
                log.info("round %s: %s; forming the group again", rid, exc)
                continue
            finally:
                formed.close()
            opened_at = time.monotonic()
            me = self._agg.party
            differ = [p for p, words in enumerate(check) if not np.array_equal(words, check[me])]
            if differ:
                raise GroupUnavailable(
                    f"parties {differ} opened another sum than party {me}: some party sent "
                    "inconsistent shares; nothing is kept"
                )
            with self._lock:
                self._last_view[rid] = dict(formed.view)
            return total, RevealStats(
                attempts=attempts,
                formed_s=formed_at - started,
                opened_s=opened_at - formed_at,
                payload_sent=channel.traffic.bytes_sent,
                payload_received=channel.traffic.bytes_received,
                frame_bytes_sent=self._t.bytes_sent - sent_before,
            )

    # --- what the group and the client port ask --------------------------------------------

    def admit(self, session: str, bound: bytes) -> int:
        """Whether this party takes part in opening round ``session`` now (:data:`Admit`)."""
        rnd = self._agg.get(session)
        spec = rnd.spec
        party = self._agg.party
        if spec.reveal is not RevealMode.SERVERS:
            raise PermissionDenied(
                f"round {session!r} is revealed by the collector; the parties do not open it"
            )
        status = self._agg.status(session)
        if status.state in (RoundState.OPEN, RoundState.CLOSING):
            raise Unavailable(f"round {session!r} has not committed at party {party} yet")
        if status.state is not RoundState.COMMITTED:
            raise RoundNotOpen(f"round {session!r} is {status.state.value} at party {party}")
        if bound != binding(spec.digest, status.cohort_digest):
            raise InvalidArgument(
                f"the group's binding does not match round {session!r} as party {party} "
                "committed it (spec and cohort digests)"
            )
        record = self._record(session, self._clock())
        if record.state is RevealState.FAILED:
            raise RoundNotOpen(
                f"the reveal of round {session!r} failed at party {party}: {record.reason}"
            )
        if self._clock() >= record.deadline_unix:
            raise RoundNotOpen(f"party {party}'s reveal window for round {session!r} closed")
        return spec.length

    def status(self, round_id: str) -> RevealStatus:
        """This party's reveal of ``round_id`` (never the sum)."""
        rnd = self._agg.get(round_id)
        party = self._agg.party
        if rnd.spec.reveal is not RevealMode.SERVERS:
            raise RoundNotOpen(
                f"round {round_id!r} is revealed by the collector (reveal mode collector)"
            )
        status = self._agg.status(round_id)
        base = RevealStatus(
            round_id, party, RevealState.PENDING, spec_digest=rnd.spec.digest, reason=""
        )
        if status.state is RoundState.FAILED:
            return replace(
                base, state=RevealState.FAILED, reason=f"the round failed: {status.reason}"
            )
        if status.state is not RoundState.COMMITTED:
            return replace(base, reason=f"the round is {status.state.value} here")
        with self._lock:
            record = self._records.get(round_id)
            note = self._notes.get(round_id, "waiting for the revealer")
        record = record or self._store.read(round_id)
        if record is None:
            return replace(base, reason=note)
        return replace(
            base,
            state=record.state,
            reason=note if record.state is RevealState.PENDING else record.reason,
            cohort_size=record.cohort_size,
            cohort_digest=record.cohort_digest,
        )

    def revealed_sum(self, round_id: str, who: Identity | None) -> tuple[RevealStatus, RingVector]:
        """The revealed sum, for a cohort trainer of a round that allows it (``who`` None:
        no identity checks, ``--insecure``). Decided before the reveal's state is looked
        at: PERMISSION_DENIED for anyone else."""
        rnd = self._agg.get(round_id)
        spec = rnd.spec
        if who is not None and not (
            who.role == "trainer" and spec.trainers_may_fetch and rnd.in_cohort(who.client_id)
        ):
            raise PermissionDenied(
                "a party serves the sum it revealed only to cohort trainers of a round whose "
                "spec says trainers_may_fetch (and to its own operator, from its data directory)"
            )
        status = self.status(round_id)
        if status.state is not RevealState.REVEALED:
            raise RoundNotOpen(
                f"round {round_id!r} is not revealed at party {self._agg.party} "
                f"({status.state.value}: {status.reason})"
            )
        record = self._store.read(round_id)
        assert record is not None
        return status, self._store.revealed_sum(record)
