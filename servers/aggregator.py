"""One party's aggregation logic: rounds, uploads (see :mod:`servers.upload`), manifests, commits.

This is the domain layer: it knows :mod:`mpc` (engines, shares) and
:mod:`servers.storage`, and nothing of gRPC. The servicers in
:mod:`servers.service` convert messages and call it.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable

from mpcagg.mpc.engines import Engine
from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import (
    AlreadyExists,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    RoundNotOpen,
    Unavailable,
)
from mpcagg.protocol.identity import Identity
from mpcagg.protocol.spec import (
    SHARING_ID_BYTES,
    Holding,
    RevealMode,
    RoundSpec,
    check_id,
    cohort_digest,
    spec_from_canonical,
)
from mpcagg.protocol.state import Manifest, RoundState, RoundStatus, UploadAck, UploadHeader
from mpcagg.servers.accumulator import RoundAccumulator
from mpcagg.servers.events import Observers, RoundEvents
from mpcagg.servers.round import Round, UploadRecord
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import DIGEST_BYTES, StagingBudget, UploadSession

log = logging.getLogger("mpcagg.aggregator")

Clock = Callable[[], float]


class Aggregator:
    """All rounds of one party."""

    def __init__(
        self,
        party: int,
        n_parties: int,
        storage: Storage,
        engine: Engine,
        limits: Limits,
        clock: Clock = time.time,
        on_upload: Callable[[int], None] | None = None,
        events: RoundEvents | None = None,
    ) -> None:
        self.party = party
        self.n_parties = n_parties
        self.storage = storage
        self.engine = engine
        self.limits = limits
        self.clock = clock
        self._rounds: dict[str, Round] = {}
        self.staging = StagingBudget()
        self._lock = threading.Lock()
        self._on_upload = on_upload
        self.events: RoundEvents = events if events is not None else Observers()

    def metrics_upload(self, nbytes: int, kind: str = "unknown") -> None:
        """An upload of ``nbytes`` share bytes was durably acknowledged."""
        if self._on_upload is not None:
            self._on_upload(nbytes)
        self.events.upload("stored", kind, nbytes)

    # --- recovery -----------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild every round from disk; returns the number of acknowledged uploads replayed."""
        replayed = 0
        for row in self.storage.rounds():
            spec = spec_from_canonical(row.spec)
            state = RoundState(row.state)
            rnd = Round(spec=spec, state=state, accumulator=None, reason=row.reason)
            if state is RoundState.COMMITTED:
                assert row.cohort is not None and row.cohort_digest is not None
                rnd.cohort, rnd.cohort_digest = row.cohort, row.cohort_digest
                # Served from its file (aggregate_share), never held in memory.
                self.storage.keep_only_aggregate(spec.round_id)
            elif state is RoundState.FAILED:
                rnd.accumulator = None
                self.storage.sweep(spec.round_id, keep=set())
                self.storage.forget_seeds(spec.round_id)
            else:
                rnd.decided = row.cohort if state is RoundState.CLOSING else None
                # The last checkpoint holds exactly the folded shares the rows name.
                rnd.ingest, uploads = RoundAccumulator.recover(self.storage, spec)
                for up in uploads:
                    rnd.uploads[up.client_id] = UploadRecord(
                        up.client_id, up.sharing_id, up.kind, up.digest, up.nbytes, up.folded
                    )
                    rnd.bytes_received += up.nbytes
                    replayed += 1
                keep = {
                    f"{u.client_id}.{u.kind}" for u in uploads if u.kind == "full" and not u.folded
                }
                self.storage.sweep(spec.round_id, keep=keep | rnd.ingest.files())
            self._rounds[spec.round_id] = rnd
        return replayed

    # --- rounds -------------------------------------------------------------------------

    def create_round(self, spec: RoundSpec) -> RoundStatus:
        """Create a round; repeating it with the same spec is acknowledged again."""
        if spec.n_parties != self.n_parties:
            raise InvalidArgument(
                f"round spec names {spec.n_parties} parties; this cluster has {self.n_parties}"
            )
        if spec.length > self.limits.max_vector_length:
            raise LimitExceeded(
                f"round vector length {spec.length} exceeds this server's limit "
                f"({self.limits.max_vector_length})"
            )
        if spec.min_clients < self.limits.min_cohort:
            raise InvalidArgument(
                f"min_clients {spec.min_clients} is below this server's minimum cohort "
                f"({self.limits.min_cohort}); a smaller cohort could reveal one trainer's update"
            )
        if spec.max_clients > self.limits.max_clients_per_round:
            raise LimitExceeded(
                f"max_clients {spec.max_clients} exceeds this server's limit "
                f"({self.limits.max_clients_per_round})"
            )
        with self._lock:
            existing = self._rounds.get(spec.round_id)
            if existing is not None:
                if existing.spec.digest != spec.digest:
                    raise AlreadyExists(
                        f"round {spec.round_id!r} already exists with a different spec"
                    )
                return self._status(existing)
            self.storage.insert_round(spec.round_id, spec.canonical(), spec.digest, self.clock())
            rnd = Round(
                spec=spec,
                state=RoundState.OPEN,
                accumulator=None,
                ingest=RoundAccumulator(self.storage, spec),
            )
            self._rounds[spec.round_id] = rnd
        log.info(
            "round %s created: %d elements, min %d clients",
            spec.round_id,
            spec.length,
            spec.min_clients,
        )
        return self._status(rnd)

    def get(self, round_id: str) -> Round:
        with self._lock:
            rnd = self._rounds.get(round_id)
        if rnd is None:
            raise NotFound(f"unknown round {round_id!r}")
        return rnd

    def rounds(self) -> list[Round]:
        with self._lock:
            return list(self._rounds.values())

    def status(self, round_id: str) -> RoundStatus:
        rnd = self.get(round_id)
        with rnd.lock:
            return self._status(rnd)

    def _status(self, rnd: Round) -> RoundStatus:
        return RoundStatus(
            round_id=rnd.spec.round_id,
            party=self.party,
            state=rnd.state,
            spec_digest=rnd.spec.digest,
            received=len(rnd.uploads),
            cohort_size=len(rnd.cohort) if rnd.cohort is not None else 0,
            cohort_digest=rnd.cohort_digest,
            reason=rnd.reason,
        )

    # --- uploads ------------------------------------------------------------------------

    def begin_upload(self, h: UploadHeader) -> UploadAck | UploadSession:
        """Validate a header. Returns a receipt for an identical retry, else a session."""
        kind = h.kind if h.kind in ("seed", "full") else "unknown"
        try:
            started = self._begin_upload(h)
        except Exception:
            self.events.upload("refused", kind, 0)
            raise
        if isinstance(started, UploadAck):
            self.events.upload("duplicate", kind, 0)
        return started

    def _begin_upload(self, h: UploadHeader) -> UploadAck | UploadSession:
        check_id("client id", h.client_id)
        rnd = self.get(h.round_id)
        spec = rnd.spec
        if h.party != self.party:
            raise InvalidArgument(f"upload for party {h.party} was sent to party {self.party}")
        if h.kind not in ("seed", "full"):
            raise InvalidArgument(f"share kind must be SEED or FULL, got {h.kind!r}")
        # The digest protects the trainer (it shared under the spec it names), so it is
        # checked whenever it is sent; the trainer client always sends it.
        if h.spec_digest and not hmac.compare_digest(h.spec_digest, spec.digest):
            raise InvalidArgument(
                f"the upload was shared under spec digest {h.spec_digest.hex()[:16]}…, "
                f"but this party holds {spec.digest.hex()[:16]}… for round {h.round_id!r}"
            )
        if h.length != spec.length:
            raise InvalidArgument(
                f"vector length {h.length} does not match round spec ({spec.length})"
            )
        if len(h.sharing_id) != SHARING_ID_BYTES:
            raise InvalidArgument(
                f"sharing id must be {SHARING_ID_BYTES} bytes, got {len(h.sharing_id)}"
            )
        if len(h.payload_digest) != DIGEST_BYTES:
            raise InvalidArgument(
                f"payload digest must be {DIGEST_BYTES} bytes (SHA-256), "
                f"got {len(h.payload_digest)}"
            )
        if h.kind == "seed" and len(h.seed) != 32:
            raise InvalidArgument(
                f"a seed share carries exactly 32 bytes of seed, got {len(h.seed)}"
            )
        if h.kind == "full" and h.seed:
            raise InvalidArgument("a full share carries no seed; got seed bytes in the header")
        nbytes = spec.length * 8 if h.kind == "full" else 32
        with rnd.lock:
            held = rnd.uploads.get(h.client_id)
            if held is not None:
                if (
                    hmac.compare_digest(held.digest, h.payload_digest)
                    and held.sharing_id == h.sharing_id
                ):
                    return UploadAck(
                        h.round_id,
                        h.client_id,
                        self.party,
                        held.digest,
                        duplicate=True,
                        sharing_id=held.sharing_id,
                    )
                if held.sharing_id == h.sharing_id:
                    raise AlreadyExists(
                        f"party {self.party} holds a share of sharing {h.sharing_id.hex()[:8]}… "
                        f"of client {h.client_id!r} with another payload digest; a retry must "
                        "resend the same bytes"
                    )
                raise AlreadyExists(
                    f"party {self.party} already holds sharing {held.sharing_id.hex()[:8]}… of "
                    f"client {h.client_id!r} for round {h.round_id!r}, not "
                    f"{h.sharing_id.hex()[:8]}…: an update is shared once per round; resume "
                    "the held sharing (submit the same update again from the same trainer)"
                )
            rnd.require(RoundState.OPEN)
            if h.client_id in rnd.inflight:
                raise Unavailable(
                    f"an upload for client {h.client_id!r} in round {h.round_id!r} "
                    "is in progress; retry"
                )
            active = len(rnd.uploads) + len(rnd.inflight)
            if active >= spec.max_clients:
                raise LimitExceeded(
                    f"round {h.round_id!r} already holds its max_clients "
                    f"({spec.max_clients}) uploads"
                )
            if rnd.bytes_received + nbytes > self.limits.max_upload_bytes_per_round:
                raise LimitExceeded(
                    f"round {h.round_id!r} would exceed max_upload_bytes_per_round "
                    f"({self.limits.max_upload_bytes_per_round})"
                )
            rnd.inflight.add(h.client_id)
            rnd.bytes_received += nbytes
        try:
            return UploadSession(self, rnd, h)
        except BaseException:
            with rnd.lock:
                rnd.inflight.discard(h.client_id)
                rnd.bytes_received -= nbytes
            raise

    # --- closing ------------------------------------------------------------------------

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        """Stop accepting uploads and report which clients this party holds."""
        rnd = self.get(round_id)
        with rnd.lock:
            if spec_digest != rnd.spec.digest:
                raise InvalidArgument(
                    f"spec digest {spec_digest.hex()[:16]}… does not match this party's "
                    f"{rnd.spec.digest.hex()[:16]}… for round {round_id!r}"
                )
            if rnd.state is RoundState.OPEN:
                self._stop_accepting(rnd)
                log.info("round %s closing: %d uploads held", round_id, len(rnd.uploads))
            self._quiesce(rnd)
            closing = rnd.state is RoundState.CLOSING
            return Manifest(
                round_id=round_id,
                party=self.party,
                held=rnd.holdings() if closing else (rnd.cohort or ()),
                state=rnd.state,
                cohort_digest=rnd.cohort_digest,
                folded=rnd.folded() if closing else (),
            )

    def commit(
        self,
        round_id: str,
        cohort: tuple[Holding, ...],
        digest: bytes,
        spec_digest: bytes | None = None,
    ) -> RoundStatus:
        """Fix the cohort and compute this party's aggregate share over exactly it.

        Every holding of ``cohort`` must be held here with that very sharing id, and
        ``spec_digest`` (when given: the leader always sends it) must be this party's;
        anything else is refused (INVALID_ARGUMENT) before the round changes state.
        """
        rnd = self.get(round_id)
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
                    return self._status(rnd)
                raise AlreadyExists(
                    f"round {round_id!r} is already committed to another cohort; "
                    "an aggregate is never recomputed over a different subset"
                )
            rnd.require(RoundState.OPEN, RoundState.CLOSING)
            self._quiesce(rnd)
            self._check_holds(rnd, cohort)  # before the round stops accepting uploads
            if rnd.state is RoundState.OPEN:
                self._stop_accepting(rnd)  # may release the lock: check again after it
                self._check_holds(rnd, cohort)
            rnd.require(RoundState.CLOSING)
            started = time.monotonic()
            assert rnd.ingest is not None  # a CLOSING round has one
            # Folded shares plus the cohort's seeds and kept-apart shares: nothing is
            # subtracted, and what is outside the cohort is never expanded.
            try:
                aggregate = rnd.ingest.aggregate(
                    self.engine, self.party, cohort, self.storage.uploads(round_id)
                )
                self.storage.write_aggregate(round_id, aggregate)
                self.storage.set_round_state(
                    round_id, RoundState.COMMITTED.value, "", cohort, digest
                )
            except BaseException:
                rnd.ingest.restore()  # the sum was computed in place: undo it
                raise
            rnd.accumulator = None  # from now on served from its file (aggregate_share)
            rnd.ingest = None
            rnd.cohort, rnd.cohort_digest = cohort, digest
            rnd.move(RoundState.COMMITTED)
            self.storage.keep_only_aggregate(round_id)
            log.info("round %s committed: cohort of %d", round_id, len(cohort))
            self.events.committed(rnd, aggregate, time.monotonic() - started)
            return self._status(rnd)

    def _check_holds(self, rnd: Round, cohort: tuple[Holding, ...]) -> None:
        """Raise :class:`InvalidArgument` unless this party holds every sharing of ``cohort``
        and ``cohort`` includes every full share this party folded (which cannot be taken
        out of its accumulator)."""
        held, members = set(rnd.holdings()), set(cohort)
        missing = [m for m in cohort if m not in held]
        if missing:
            raise InvalidArgument(
                f"cohort names {len(missing)} sharings party {self.party} does not hold "
                f"(first: client {missing[0].client_id!r}, sharing "
                f"{missing[0].sharing_id.hex()[:8]}…)"
            )
        stranded = [h for h in rnd.folded() if h not in members]
        if stranded:
            raise InvalidArgument(
                f"cohort leaves out {len(stranded)} full shares party {self.party} has folded "
                f"into its accumulator (first: client {stranded[0].client_id!r}); they "
                "cannot be taken out"
            )

    def _stop_accepting(self, rnd: Round) -> None:
        """OPEN → CLOSING (durably), then wait for uploads already being made durable.

        Called with ``rnd.lock`` held; the wait releases it. Uploads that had not
        reached that point are refused (FAILED_PRECONDITION) and leave nothing behind.
        """
        self.storage.set_round_state(rnd.spec.round_id, RoundState.CLOSING.value)
        rnd.move(RoundState.CLOSING)
        self.events.closing(rnd)
        self._quiesce(rnd)

    def _quiesce(self, rnd: Round) -> None:
        """Wait (lock held, released while waiting) until no upload is half-recorded."""
        deadline = time.monotonic() + self.limits.drain_timeout_s
        while rnd.committing:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(
                    f"round {rnd.spec.round_id!r}: {len(rnd.committing)} uploads are still "
                    "being made durable; retry the close"
                )
            rnd.changed.wait(left)

    def note(self, round_id: str, reason: str) -> None:
        """Say what a CLOSING round waits for (shown in its status; not persisted)."""
        rnd = self.get(round_id)
        with rnd.lock:
            if rnd.state is RoundState.CLOSING:
                rnd.reason = reason

    def decide(self, round_id: str, cohort: tuple[Holding, ...], digest: bytes) -> None:
        """Leader: durably record the chosen cohort before any party commits to it."""
        rnd = self.get(round_id)
        with rnd.lock:
            rnd.require(RoundState.CLOSING)
            self.storage.set_round_state(
                round_id, RoundState.CLOSING.value, "committing", cohort, digest
            )
            rnd.decided = cohort
            rnd.reason = "committing"

    def fail(self, round_id: str, reason: str) -> RoundStatus:
        """Mark the round FAILED (nothing will be revealed) and drop its shares."""
        rnd = self.get(round_id)
        with rnd.lock:
            self._quiesce(rnd)
            if rnd.state is RoundState.FAILED:
                return self._status(rnd)
            if rnd.state is RoundState.COMMITTED:
                raise RoundNotOpen(f"round {round_id!r} is already COMMITTED; it cannot fail")
            self.storage.set_round_state(round_id, RoundState.FAILED.value, reason)
            rnd.move(RoundState.FAILED, reason)
            rnd.accumulator = None
            rnd.ingest = None
            self.storage.sweep(round_id, keep=set())
            self.storage.forget_seeds(round_id)
            log.warning("round %s failed: %s", round_id, reason)
            self.events.failed(rnd)
            return self._status(rnd)

    def forget(self, round_id: str) -> None:
        """Prune a finished round: its rows and files go, and this party no longer knows
        it (NOT_FOUND from then on). Raises :class:`RoundNotOpen` if it has not finished."""
        rnd = self.get(round_id)
        with rnd.lock:
            if not rnd.state.final:
                raise RoundNotOpen(
                    f"round {round_id!r} is {rnd.state.value}; only a finished round is pruned"
                )
            with self._lock:
                self._rounds.pop(round_id, None)
            self.storage.delete_round(round_id)
        self.events.forgotten(round_id)

    def aggregate_share(
        self, round_id: str, caller: Identity | None = None
    ) -> tuple[RoundStatus, RingVector]:
        """This party's aggregate share over the committed cohort.

        The collector may fetch it; a trainer only if the round's spec allows it and the
        trainer is in the cohort (PERMISSION_DENIED otherwise, decided before the round's
        state is looked at, so a trainer learns nothing about a round it may not fetch).
        ``caller`` None: no identity checks (``--insecure``). A round in reveal mode
        ``servers`` serves its aggregate share to nobody (the parties open it among
        themselves, servers/reveal.py).
        """
        rnd = self.get(round_id)
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
            return self._status(rnd), self.storage.read_aggregate(round_id)
