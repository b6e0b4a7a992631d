"""One party's aggregation logic: the round registry, recovery, round creation and upload
admission; uploads are ingested by :mod:`servers.upload`, rounds closed by
:mod:`servers.closing` (manifests, commits, fails, the aggregate share).

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
    RoundNotOpen,
    Unavailable,
)
from mpcagg.protocol.identity import Identity
from mpcagg.protocol.spec import (
    SHARING_ID_BYTES,
    Holding,
    RoundSpec,
    check_id,
    spec_from_canonical,
)
from mpcagg.protocol.state import (
    Manifest,
    RoundState,
    RoundStatus,
    ShareKind,
    UploadAck,
    UploadHeader,
)
from mpcagg.servers import closing
from mpcagg.servers.accumulator import RoundAccumulator
from mpcagg.servers.events import Observers, RoundEvents
from mpcagg.servers.round import Round
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import DIGEST_BYTES, StagingBudget, UploadSession

log = logging.getLogger("mpcagg.aggregator")

Clock = Callable[[], float]


class Aggregator:
    """All rounds of one party: the one entry point of the domain for servicers, the
    leader, the revealer and operations. Thread-safe; each round changes only under its
    own lock."""

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
                    rnd.uploads[up.client_id] = up.metadata()
                    rnd.bytes_received += up.nbytes
                    replayed += 1
                keep = {
                    f"{u.client_id}.{u.kind}"
                    for u in uploads
                    if u.kind is ShareKind.FULL and not u.folded
                }
                self.storage.sweep(spec.round_id, keep=keep | rnd.ingest.files())
            self._rounds[spec.round_id] = rnd
        return replayed

    # --- rounds -------------------------------------------------------------------------

    def create_round(self, spec: RoundSpec) -> RoundStatus:
        """Create a round (durably, OPEN); the same spec again is acknowledged again.

        Raises :class:`InvalidArgument` if the spec names another number of parties or a
        ``min_clients`` below ``[limits] min_cohort``, :class:`LimitExceeded` past this
        server's vector length or client limits, :class:`AlreadyExists` if the round
        exists with another spec.
        """
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
                return existing.status(self.party)
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
        return rnd.status(self.party)

    def get(self, round_id: str) -> Round:
        """The round ``round_id``; raises :class:`NotFound` if this party does not know it."""
        with self._lock:
            rnd = self._rounds.get(round_id)
        if rnd is None:
            raise NotFound(f"unknown round {round_id!r}")
        return rnd

    def rounds(self) -> list[Round]:
        """Every round this party knows, in no particular order (a snapshot)."""
        with self._lock:
            return list(self._rounds.values())

    def status(self, round_id: str) -> RoundStatus:
        """This party's :class:`RoundStatus` of ``round_id``; :class:`NotFound` if unknown."""
        rnd = self.get(round_id)
        with rnd.lock:
            return rnd.status(self.party)

    # --- uploads ------------------------------------------------------------------------

    def begin_upload(self, h: UploadHeader) -> UploadAck | UploadSession:
        """Validate an upload header against the round; returns a duplicate receipt for
        an identical retry (same sharing, same digest), else an :class:`UploadSession`
        that has reserved the upload's place and bytes.

        Raises :class:`NotFound` (unknown round), :class:`InvalidArgument` (wrong party,
        kind, spec digest, length, sharing id, digest or seed size),
        :class:`AlreadyExists` (another sharing or payload of this client is held),
        :class:`RoundNotOpen`, :class:`Unavailable` (an upload of this client is in
        progress) or :class:`LimitExceeded` (``max_clients``, upload bytes). Every
        outcome is reported to the observers.
        """
        kind = h.kind if h.kind in ShareKind else "unknown"
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
        if h.kind not in ShareKind:
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
        if h.kind == ShareKind.SEED and len(h.seed) != 32:
            raise InvalidArgument(
                f"a seed share carries exactly 32 bytes of seed, got {len(h.seed)}"
            )
        if h.kind == ShareKind.FULL and h.seed:
            raise InvalidArgument("a full share carries no seed; got seed bytes in the header")
        nbytes = spec.length * 8 if h.kind == ShareKind.FULL else 32
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

    # --- closing (servers.closing) -------------------------------------------------------

    def manifest(self, round_id: str, spec_digest: bytes) -> Manifest:
        """Stop accepting uploads and report what this party holds
        (:func:`servers.closing.manifest`); raises :class:`NotFound` for an unknown round."""
        return closing.manifest(self, self.get(round_id), spec_digest)

    def commit(
        self,
        round_id: str,
        cohort: tuple[Holding, ...],
        digest: bytes,
        spec_digest: bytes | None = None,
    ) -> RoundStatus:
        """Fix the cohort and compute this party's aggregate share over exactly it
        (:func:`servers.closing.commit`: what is refused, and that a refusal changes
        nothing); raises :class:`NotFound` for an unknown round."""
        return closing.commit(self, self.get(round_id), cohort, digest, spec_digest)

    def note(self, round_id: str, reason: str) -> None:
        """Say what a CLOSING round waits for (shown in its status; not persisted).
        No effect on a round in another state; :class:`NotFound` for an unknown one."""
        rnd = self.get(round_id)
        with rnd.lock:
            if rnd.state is RoundState.CLOSING:
                rnd.reason = reason

    def decide(self, round_id: str, cohort: tuple[Holding, ...], digest: bytes) -> None:
        """Leader: durably record the chosen cohort before any party commits to it
        (:func:`servers.closing.decide`)."""
        closing.decide(self, self.get(round_id), cohort, digest)

    def fail(self, round_id: str, reason: str) -> RoundStatus:
        """Mark the round FAILED and drop its shares (:func:`servers.closing.fail`);
        idempotent, :class:`RoundNotOpen` for a COMMITTED round."""
        return closing.fail(self, self.get(round_id), reason)

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
        """This party's aggregate share over the committed cohort, for ``caller``
        (:func:`servers.closing.aggregate_share`: who may fetch it, and when)."""
        return closing.aggregate_share(self, self.get(round_id), caller)
