"""The upload of one sharing to the parties and the receipt it earns (architecture.md
§1 "Upload" and "Receipts").

**Seeds first, the full share last**: the full share goes out only once every seed
party has acknowledged its seed, marked ``seeds_acknowledged``, so a held full share
implies every seed is held. Each phase is one :func:`clients.broadcast.broadcast`; a
party the whole payload reached without an answer is ``unknown`` in the receipt, never
``failed``. A retry resends byte-identical data under the same sharing id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from mpcagg.clients.broadcast import Outcomes, broadcast
from mpcagg.clients.progress import UploadProgress, wants_progress
from mpcagg.clients.results import Receipt
from mpcagg.clients.sharings import Sharing
from mpcagg.clients.transport import Transport
from mpcagg.clients.update import Update
from mpcagg.mpc import SharingContext, full_party_for, seed_parties
from mpcagg.mpc.ring import RingVector
from mpcagg.mpc.sharing import full_share_chunks_from
from mpcagg.protocol.errors import ProtocolError, ServiceError, UploadFailed
from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import UploadAck
from mpcagg.wire import framing as wire

log = logging.getLogger("mpcagg.clients")


def upload_sharing(
    transport: Transport,
    client_id: str,
    sharing: Sharing,
    update: Update,
    parties: Iterable[int],
    failed: dict[int, str],
    *,
    progress: bool | None = None,
    phases: dict[str, float] | None = None,
) -> Receipt:
    """Upload ``sharing`` of ``update`` to ``parties`` (those not in ``failed``, which
    maps parties already known not to hold it to the reason), seeds first.

    The full share is sent only once every seed party has acknowledged its seed (in
    this call, or before it: seed parties not in ``parties``); until then the full party
    is reported failed ("not sent"). ``progress`` shows a byte bar (default: on a
    terminal); ``phases`` are earlier step timings to carry into the receipt.

    Returns a :class:`Receipt` covering every party, and keeps ``update`` in ``sharing``
    while it is not complete, if it is held whole. Raises the first non-transient refusal (lowest
    party, noted with the outcome so far), :class:`ProtocolError` inside it if a party
    acknowledges another payload or sharing, and :class:`UploadFailed` if no party
    acknowledged and none may hold it.
    """
    spec = sharing.spec
    started = time.monotonic()
    phases = dict(phases or {})
    failed = dict(failed)
    targets = [p for p in parties if p not in failed]
    if not targets:
        raise UploadFailed(failure_message(spec, client_id, failed), failed)
    full = full_party_for(client_id, spec.n_parties)
    chunk_bytes = transport.cluster.limits.chunk_bytes
    t = time.perf_counter()
    uploads = party_uploads(spec, client_id, sharing, update, chunk_bytes)
    phases["share_s"] = time.perf_counter() - t
    sent = dict.fromkeys(range(spec.n_parties), 0)
    delivered: set[int] = set()  # parties some attempt handed the whole payload
    total = sum(uploads[p].payload_bytes for p in targets)
    enabled = wants_progress(progress)
    with UploadProgress(total, enabled=enabled, desc=f"upload {spec.round_id}") as bar:

        def send(party: int) -> UploadAck:
            """One attempt at ``party`` (:func:`broadcast` retries it): one message if the
            upload fits in one (a seed, or a full share of one chunk), else a stream."""
            upload = uploads[party]
            framing: dict[str, Any] = {
                "round_id": spec.round_id,
                "client_id": client_id,
                "sharing_id": sharing.sharing_id,
                "chunk_bytes": chunk_bytes,
                "spec_digest": spec.digest,
                "seeds_acknowledged": party == full,
            }
            request = wire.upload_request(upload, **framing)
            ack = None if request is None else send_whole(party, request)
            if ack is None:
                messages = wire.upload_messages(
                    upload,
                    **framing,
                    on_progress=lambda k: bar.advance(party, k),
                    on_sent=lambda k: _add(sent, party, k),
                )
                ack = transport.upload(party, _counted(messages, party, delivered))
            if ack.payload_digest != upload.digest or (
                ack.sharing_id and ack.sharing_id != sharing.sharing_id
            ):
                raise ProtocolError(
                    f"party {party} acknowledged another payload or sharing than the one sent"
                )
            return ack

        def send_whole(party: int, request: Any) -> UploadAck | None:
            """One attempt as a single message; None if the party predates ``UploadWhole``."""
            _add(sent, party, request.ByteSize())
            try:
                ack = transport.upload_whole(party, request)
            except ServiceError as exc:
                if exc.code == "UNIMPLEMENTED":
                    return None
                if _maybe_delivered(exc):
                    delivered.add(party)
                raise
            bar.advance(party, uploads[party].payload_bytes)
            return ack

        def phase(which: list[int]) -> Outcomes[UploadAck]:
            return broadcast(
                transport, send, what="Upload", parties=which, delivered=delivered.__contains__
            )

        t = time.perf_counter()
        outcomes = phase([p for p in targets if p != full])
        phases["seeds_s"] = time.perf_counter() - t
        waiting = [p for p in targets if p != full and p not in outcomes.acknowledged]
        if full in targets and not waiting:
            t = time.perf_counter()
            outcomes = outcomes.merged(phase([full]))
            phases["full_s"] = time.perf_counter() - t
        elif full in targets:
            failed[full] = f"not sent: the seeds at parties {waiting} are not acknowledged"
    return _receipt(spec, client_id, sharing, update, outcomes, failed, sent, started, phases)


def _receipt(
    spec: RoundSpec,
    client_id: str,
    sharing: Sharing,
    update: Update,
    outcomes: Outcomes[UploadAck],
    failed: dict[int, str],
    sent: dict[int, int],
    started: float,
    phases: dict[str, float],
) -> Receipt:
    """The receipt of one upload call, or its error (see :func:`upload_sharing`)."""
    failed = {**failed, **outcomes.reasons(), **outcomes.reasons(outcomes.refused)}
    unknown = outcomes.reasons(outcomes.unanswered)
    acked = sorted(outcomes.acknowledged)
    summary = (
        f"acknowledged by parties {acked}; failed at {sorted(failed)}; unknown at {sorted(unknown)}"
    )
    outcomes.raise_refusal(f"round {spec.round_id!r}, client {client_id!r}: {summary}")
    if not acked and not unknown:
        raise UploadFailed(failure_message(spec, client_id, failed), failed)
    receipt = Receipt(
        round_id=spec.round_id,
        client_id=client_id,
        acknowledged=tuple(acked),
        failed=dict(sorted(failed.items())),
        bytes_sent={p: sent[p] for p in range(spec.n_parties)},
        duration_s=time.monotonic() - started,
        duplicates=tuple(p for p in acked if outcomes.acknowledged[p].duplicate),
        sharing_id=sharing.sharing_id.hex(),
        unknown=unknown,
        phases=phases,
    )
    # The update is kept only while some party may still need its share, and only if it
    # is held whole (a streamed one is the caller's tensors: resume takes them again).
    sharing.update = update if receipt.pending and update.vector is not None else None
    log.info(
        "client %s round %s: %s in %.2fs", client_id, spec.round_id, summary, receipt.duration_s
    )
    return receipt


def party_uploads(
    spec: RoundSpec, client_id: str, sharing: Sharing, update: Update, chunk_bytes: int
) -> list[wire.PartyUpload]:
    """The n uploads of ``update`` under ``sharing``'s seeds, byte-identical every time,
    by party: a seed for each seed party, and for ``full_party_for(client_id, n)`` the
    full share computed chunk by chunk as it is sent (:func:`mpc.sharing.full_share_chunks_from`,
    from the update's pieces), so it never exists whole unless it is small enough to keep
    (:data:`wire.framing.KEEP_BYTES`)."""
    n = spec.n_parties
    full = full_party_for(client_id, n)
    context = SharingContext(spec.round_id, client_id)
    seeds = list(sharing.seeds)

    def pieces(chunk_elements: int) -> Iterator[RingVector]:
        return full_share_chunks_from(
            update.fill, update.length, n, full, seeds, context, chunk_elements
        )

    seeded = dict(zip(seed_parties(n, full), seeds, strict=True))
    return [
        wire.PartyUpload.streamed(p, update.length, pieces, chunk_bytes=chunk_bytes)
        if p == full
        else wire.PartyUpload.of_seed(p, update.length, seeded[p])
        for p in range(n)
    ]


def failure_message(spec: RoundSpec, client_id: str, failed: dict[int, str]) -> str:
    """The :class:`UploadFailed` message: no party acknowledged, each party's reason."""
    reasons = "; ".join(f"party {p}: {r}" for p, r in sorted(failed.items()))
    return (
        f"round {spec.round_id!r}: no party acknowledged client {client_id!r}'s upload ({reasons})"
    )


def _counted(messages: Iterator[Any], party: int, delivered: set[int]) -> Iterator[Any]:
    """Yield ``messages``; once the last one has been taken, add ``party`` to ``delivered``."""
    yield from messages
    delivered.add(party)


def _maybe_delivered(exc: ServiceError) -> bool:
    """Whether a one-message upload that failed with ``exc`` may have reached its party:
    gRPC does not say when a unary request has gone out, so any transient failure but a
    failure to connect counts (the receipt then says "unknown", never a wrong "failed")."""
    return exc.transient and "failed to connect" not in str(exc).lower()


def _add(sent: dict[int, int], party: int, nbytes: int) -> None:
    sent[party] += nbytes
