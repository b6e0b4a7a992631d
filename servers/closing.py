"""Closing a round at one party: the manifest, the leader's decision, the commit over the
cohort, failing, and serving the committed aggregate share (design record §1, steps 6–9).

Every function here takes the party's :class:`servers.aggregator.Aggregator` (its
storage, engine, limits and observers) and one of its rounds, and changes the round
only under ``rnd.lock``. The order of durable steps is the record's §3: CLOSING, the
decided cohort, COMMITTED and FAILED are written before they are acted on, and a
refused commit leaves the round exactly as it was.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING

from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.errors import AlreadyExists, InvalidArgument, PermissionDenied, RoundNotOpen
from mpcagg.protocol.identity import Identity
from mpcagg.protocol.spec import Holding, RevealMode, cohort_digest
from mpcagg.protocol.state import Manifest, RoundState, RoundStatus
from mpcagg.servers.round import Round

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator

log = logging.getLogger("mpcagg.aggregator")


def manifest(agg: Aggregator, rnd: Round, spec_digest: bytes) -> Manifest:
    """Stop accepting uploads (OPEN → CLOSING, durably) and list what this party holds.

    Waits for uploads half-way through being recorded. A CLOSING round lists its
    holdings and folded full shares; a finished one its cohort (COMMITTED) or nothing
    (FAILED), with its state. Raises :class:`InvalidArgument` if ``spec_digest`` is not
    this party's, :class:`Unavailable` if uploads stay half-recorded past
    ``[limits] drain_timeout_s``.
    """
    round_id = rnd.spec.round_id
    with rnd.lock:
        if spec_digest != rnd.spec.digest:
            raise InvalidArgument(
                f"spec digest {spec_digest.hex()[:16]}… does not match this party's "
                f"{rnd.spec.digest.hex()[:16]}… for round {round_id!r}"
            )
        if rnd.state is RoundState.OPEN:
            stop_accepting(agg, rnd)
            log.info("round %s closing: %d uploads held", round_id, len(rnd.uploads))
        rnd.quiesce(agg.limits.drain_timeout_s)
        closing = rnd.state is RoundState.CLOSING
        return Manifest(
            round_id=round_id,
            party=agg.party,
            held=rnd.holdings() if closing else (rnd.cohort or ()),
            state=rnd.state,
            cohort_digest=rnd.cohort_digest,
            folded=rnd.folded() if closing else (),
        )


def commit(
    agg: Aggregator,
    rnd: Round,
    cohort: tuple[Holding, ...],
    digest: bytes,
    spec_digest: bytes | None = None,
) -> RoundStatus:
    """Fix the cohort and compute this party's aggregate share over exactly it.

    Every holding of ``cohort`` must be held here with that very sharing id, every full
    share folded here must be in it, ``digest`` must be its cohort digest and
    ``spec_digest`` (when given: the leader always sends it) this party's; anything else
    is refused (:class:`InvalidArgument`) before the round changes state. A cohort below
    ``min_clients`` raises :class:`RoundNotOpen`. Committing the same cohort again
    returns the status; another cohort of a COMMITTED round raises
    :class:`AlreadyExists` (never recomputed over a different subset).
    """
    round_id = rnd.spec.round_id
    if spec_digest is not None and not hmac.compare_digest(spec_digest, rnd.spec.digest):
        raise InvalidArgument("commit names a different round spec than this party holds")
    cohort = tuple(sorted(cohort))
    if cohort_digest(cohort) != digest:
        raise InvalidArgument("cohort digest does not match the cohort's holdings")
    # Checked before anything changes: a refused commit leaves the round as it was.
    if len({m.client_id for m in cohort}) != len(cohort):
        raise InvalidArgument("cohort names a client more than once")
    if len(cohort) < rnd.spec.min_clients:
        raise RoundNotOpen(
            f"cohort of {len(cohort)} clients is below min_clients "
            f"({rnd.spec.min_clients}); refusing to commit round {round_id!r}"
        )
    with rnd.lock:
        if rnd.state is RoundState.COMMITTED:
            if rnd.cohort_digest == digest:
                return rnd.status(agg.party)
            raise AlreadyExists(
                f"round {round_id!r} is already committed to another cohort; "
                "an aggregate is never recomputed over a different subset"
            )
        rnd.require(RoundState.OPEN, RoundState.CLOSING)
        rnd.quiesce(agg.limits.drain_timeout_s)
        _check_holds(agg.party, rnd, cohort)  # before the round stops accepting uploads
        if rnd.state is RoundState.OPEN:
            stop_accepting(agg, rnd)  # may release the lock: check again after it
            _check_holds(agg.party, rnd, cohort)
        rnd.require(RoundState.CLOSING)
        started = time.monotonic()
        assert rnd.ingest is not None  # a CLOSING round has one
        # Folded shares plus the cohort's seeds and kept-apart shares: nothing is
        # subtracted, and what is outside the cohort is never expanded.
        try:
            aggregate = rnd.ingest.aggregate(
                agg.engine, agg.party, cohort, agg.storage.uploads(round_id)
            )
            agg.storage.write_aggregate(round_id, aggregate)
            agg.storage.set_round_state(round_id, RoundState.COMMITTED.value, "", cohort, digest)
        except BaseException:
            rnd.ingest.restore()  # the sum was computed in place: undo it
            raise
        rnd.accumulator = None  # from now on served from its file (aggregate_share)
        rnd.ingest = None
        rnd.cohort, rnd.cohort_digest = cohort, digest
        rnd.move(RoundState.COMMITTED)
        agg.storage.keep_only_aggregate(round_id)
        log.info("round %s committed: cohort of %d", round_id, len(cohort))
        agg.events.committed(rnd, aggregate, time.monotonic() - started)
        return rnd.status(agg.party)


def _check_holds(party: int, rnd: Round, cohort: tuple[Holding, ...]) -> None:
    """Raise :class:`InvalidArgument` unless this party holds every sharing of ``cohort``
    and ``cohort`` includes every full share this party folded (which cannot be taken
    out of its accumulator)."""
    held, members = set(rnd.holdings()), set(cohort)
    missing = [m for m in cohort if m not in held]
    if missing:
        raise InvalidArgument(
            f"cohort names {len(missing)} sharings party {party} does not hold "
            f"(first: client {missing[0].client_id!r}, sharing "
            f"{missing[0].sharing_id.hex()[:8]}…)"
        )
    stranded = [h for h in rnd.folded() if h not in members]
    if stranded:
        raise InvalidArgument(
            f"cohort leaves out {len(stranded)} full shares party {party} has folded "
            f"into its accumulator (first: client {stranded[0].client_id!r}); they "
            "cannot be taken out"
        )


def stop_accepting(agg: Aggregator, rnd: Round) -> None:
    """OPEN → CLOSING (durably), then wait for uploads already being made durable.

    Called with ``rnd.lock`` held; the wait releases it. Uploads that had not reached
    that point are refused (FAILED_PRECONDITION) and leave nothing behind. Raises
    :class:`RoundNotOpen` unless the round is OPEN.
    """
    agg.storage.set_round_state(rnd.spec.round_id, RoundState.CLOSING.value)
    rnd.move(RoundState.CLOSING)
    agg.events.closing(rnd)
    rnd.quiesce(agg.limits.drain_timeout_s)


def decide(agg: Aggregator, rnd: Round, cohort: tuple[Holding, ...], digest: bytes) -> None:
    """Leader: durably record the chosen cohort before any party commits to it.

    Raises :class:`RoundNotOpen` unless the round is CLOSING; after a restart the
    recorded cohort (``Round.decided``) is what the leader resumes committing.
    """
    with rnd.lock:
        rnd.require(RoundState.CLOSING)
        agg.storage.set_round_state(
            rnd.spec.round_id, RoundState.CLOSING.value, "committing", cohort, digest
        )
        rnd.decided = cohort
        rnd.reason = "committing"


def fail(agg: Aggregator, rnd: Round, reason: str) -> RoundStatus:
    """Mark the round FAILED (durably; nothing will be revealed) and drop its shares.

    Idempotent for a FAILED round; raises :class:`RoundNotOpen` for a COMMITTED one.
    Its spool files are deleted and its seeds erased (:meth:`Storage.forget_seeds`).
    """
    round_id = rnd.spec.round_id
    with rnd.lock:
        rnd.quiesce(agg.limits.drain_timeout_s)
        if rnd.state is RoundState.FAILED:
            return rnd.status(agg.party)
        if rnd.state is RoundState.COMMITTED:
            raise RoundNotOpen(f"round {round_id!r} is already COMMITTED; it cannot fail")
        agg.storage.set_round_state(round_id, RoundState.FAILED.value, reason)
        rnd.move(RoundState.FAILED, reason)
        rnd.accumulator = None
        rnd.ingest = None
        agg.storage.sweep(round_id, keep=set())
        agg.storage.forget_seeds(round_id)
        log.warning("round %s failed: %s", round_id, reason)
        agg.events.failed(rnd)
        return rnd.status(agg.party)


def aggregate_share(
    agg: Aggregator, rnd: Round, caller: Identity | None = None
) -> tuple[RoundStatus, RingVector]:
    """This party's aggregate share over the committed cohort, mapped from its file.

    The collector may fetch it; a trainer only if the round's spec allows it and the
    trainer is in the cohort (:class:`PermissionDenied` otherwise, decided before the
    round's state is looked at, so a trainer learns nothing about a round it may not
    fetch). ``caller`` None: no identity checks (``--insecure``). A round in reveal mode
    ``servers`` serves its aggregate share to nobody (the parties open it among
    themselves, :mod:`servers.reveal`). Raises :class:`RoundNotOpen` unless COMMITTED
    to a cohort of at least ``min_clients``.
    """
    round_id = rnd.spec.round_id
    if rnd.spec.reveal is RevealMode.SERVERS:
        raise PermissionDenied(
            f"round {round_id!r} is revealed among the servers (reveal mode servers): "
            "no party serves its aggregate share"
        )
    if (
        caller is not None
        and caller.role != "collector"
        and not (rnd.spec.trainers_may_fetch and rnd.in_cohort(caller.client_id))
    ):
        raise PermissionDenied(
            "only the collector, or a cohort trainer when the round allows it, "
            "may fetch aggregate shares"
        )
    with rnd.lock:
        rnd.require(RoundState.COMMITTED)
        if rnd.cohort is None or len(rnd.cohort) < rnd.spec.min_clients:
            raise RoundNotOpen(f"round {round_id!r} has no cohort of at least min_clients")
        return rnd.status(agg.party), agg.storage.read_aggregate(round_id)
