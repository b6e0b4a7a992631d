"""The trainer client: a model update in, one share per server out.

:meth:`SecureAggregator.submit` follows DESIGN.md "Sharing, with seeds instead of
full shares": it checks that every server runs the round with exactly the spec
the trainer was handed (spec digest) and that the round is open, encodes the
update in fixed point within the round's bound, draws n−1 fresh seeds, computes
the full share for ``full_party_for(client_id, n)`` and uploads the n shares
concurrently. A retry resends byte-identical data under the same sharing id;
nothing is ever re-shared. Seeds and shares are never logged or shown.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mpcagg.clients.broadcast import round_statuses
from mpcagg.clients.credentials import ClientCredentials
from mpcagg.clients.layout import FloatArray, TensorLayout
from mpcagg.clients.progress import UploadProgress, wants_progress
from mpcagg.clients.results import AggregateResult, Receipt
from mpcagg.clients.rounds import fetch_spec
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.clients.weighting import weigh
from mpcagg.mpc import EncodingError, Seed, SharingContext, full_party_for, seed_parties
from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.ring import RingVector, to_bytes
from mpcagg.mpc.sharing import full_share_chunks
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import (
    InputError,
    MpcaggError,
    ProtocolError,
    RoundStateError,
    UpdateConflict,
    UploadFailed,
)
from mpcagg.protocol.spec import SHARING_ID_BYTES, RoundSpec
from mpcagg.protocol.state import RoundState, RoundStatus, UploadAck
from mpcagg.wire import framing as wire

log = logging.getLogger("mpcagg.clients")


class SecureAggregator:
    """A trainer's connection to the cluster.

    ``cluster`` is a :class:`ClusterConfig` or the path of the cluster file;
    ``cert`` and ``key`` the trainer's client certificate and private key (PEM file
    paths, or a :class:`clients.ClientCredentials` as ``cert``), required on a TLS
    cluster: every party authenticates the trainer by it (mutual TLS), and the key is
    never sent or shown. ``client_id`` defaults to the id the certificate names; if
    both are given they must agree (:class:`InputError`). ``progress`` shows a byte
    progress bar on stderr (default: when stderr is a terminal). On TLS clusters the
    server is verified against the cluster CA. Use as a context manager, or call
    :meth:`disconnect`.
    """

    def __init__(
        self,
        cluster: ClusterConfig | str | Path,
        client_id: str | None = None,
        *,
        cert: ClientCredentials | str | Path | None = None,
        key: str | Path | None = None,
        progress: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._transport = Transport(cluster, cert=cert, key=key, retry=retry)
        self.client_id = self._transport.client_id(client_id)
        self.progress = progress
        self._sharings: OrderedDict[str, _Sharing] = OrderedDict()

    @property
    def cluster(self) -> ClusterConfig:
        return self._transport.cluster

    def __repr__(self) -> str:
        return f"SecureAggregator(client_id={self.client_id!r}, {self._transport!r})"

    def __enter__(self) -> SecureAggregator:
        return self

    def __exit__(self, *_: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Close the channels to the servers (a later call dials again)."""
        self._transport.close()

    def join(self, round_id: str) -> RoundSpec:
        """The spec of ``round_id`` as the servers hold it: all a trainer in another
        process needs to :meth:`submit` (``submit(round_id, …)`` calls this).

        Every reachable server is asked (GetRound returns the whole spec); each spec
        must hash to the digest that server reports, and all of them must agree.
        Raises :class:`ProtocolError` if they disagree, :class:`UploadFailed` if no
        server answers, and a server's non-transient error as it comes.
        """
        return fetch_spec(self._transport, round_id)

    def submit(
        self,
        round_: RoundSpec | str,
        tensors: Any,
        *,
        use_grad: bool = False,
        verify: bool = False,
        weight: float | None = None,
    ) -> Receipt:
        """Secret-share ``tensors`` and upload one share to every server.

        ``round_`` is a round id (the spec is then fetched with :meth:`join`) or the
        :class:`RoundSpec` that :meth:`clients.Collector.open_round` or :meth:`join`
        returned; ``tensors`` is a model, a ``state_dict``, a mapping of arrays or
        ``(name, tensor)`` pairs such as ``model.named_parameters()`` (with
        ``use_grad``, their gradients), matching the spec's layout.

        An update is shared **once per round**: submitting the same update again for a
        round (after an outage, say) reuses the sharing this trainer made for it (same
        seeds, same sharing id, byte-identical shares), so parties that already hold it
        answer with a duplicate acknowledgement and the others complete the same
        sharing. A *different* update for a round already shared is refused with
        :class:`UpdateConflict` before anything is sent.

        In a round opened with ``weighted=True``, ``weight`` (e.g. the number of training
        examples, ``0..spec.max_weight``) is required: the trainer shares ``w·x`` and ``w``
        as one vector, so no party or collector learns ``w`` alone and the round reveals
        the weighted mean (see :mod:`mpcagg.clients.weighting`). An unweighted round
        refuses a weight.

        Every upload names ``spec.digest`` and each server refuses a share made under
        another spec (INVALID_ARGUMENT). With ``verify`` the trainer also asks every
        server for the round's state first, so a spec mismatch or a round that is not
        open is caught before anything is sent.

        Returns a :class:`Receipt` (what each receipt state means for the cohort is
        documented there). Raises :class:`InputError`/:class:`LayoutError` for unusable
        input (nothing sent); with ``verify``, :class:`ProtocolError` if a server holds
        another spec and :class:`RoundStateError` if the round is not open; the
        server's :class:`ServiceError` for a non-transient refusal (e.g.
        :class:`RoundNotOpen` for a closed round); :class:`UploadFailed` if no party
        acknowledged.
        """
        spec = self.join(round_) if isinstance(round_, str) else round_
        t = time.perf_counter()
        encoded = self._encode(spec, tensors, use_grad=use_grad, weight=weight)
        sharing = self._sharing_for(spec, encoded)
        encode_s = time.perf_counter() - t
        failed = self._verify_round(spec) if verify else {}
        return self._upload(
            spec, sharing, encoded, range(spec.n_parties), failed, {"encode_s": encode_s}
        )

    def resume(
        self,
        receipt: Receipt,
        tensors: Any = None,
        *,
        use_grad: bool = False,
        weight: float | None = None,
    ) -> Receipt:
        """Finish the sharing behind ``receipt`` at the parties that did not acknowledge it.

        Sends the very same shares (same sharing id, same bytes) to every party in
        ``receipt.pending``; a party that already held it answers with a duplicate
        acknowledgement, which settles an ``unknown`` state. The update is kept by the
        trainer while its upload is incomplete; otherwise pass the same ``tensors``
        again (and, in a weighted round, the same ``weight``). Returns a new
        :class:`Receipt` covering every party. Raises
        :class:`InputError` if this trainer holds no sharing for the receipt's round
        (sharings live in the process that made them) or ``tensors`` differ from the
        shared update.
        """
        sharing = self._sharings.get(receipt.round_id)
        if sharing is None or sharing.sharing_id.hex() != receipt.sharing_id:
            raise InputError(
                f"this trainer holds no sharing {receipt.sharing_id[:8]}… for round "
                f"{receipt.round_id!r}: a sharing lives only in the trainer that made it"
            )
        spec = sharing.spec
        if tensors is not None:
            encoded = self._encode(spec, tensors, use_grad=use_grad, weight=weight)
            self._sharing_for(spec, encoded)  # refuses a different update
        elif sharing.encoded is not None:
            encoded = sharing.encoded
        else:
            raise InputError(
                f"round {receipt.round_id!r}: the update is no longer held (its upload was "
                "complete); pass the same tensors to resume"
            )
        done = {p: "acknowledged" for p in receipt.acknowledged}
        pending = [p for p in range(spec.n_parties) if p not in done]
        merged = self._upload(spec, sharing, encoded, pending, {})
        return replace(
            merged,
            acknowledged=tuple(sorted({*receipt.acknowledged, *merged.acknowledged})),
            duplicates=tuple(sorted({*receipt.duplicates, *merged.duplicates})),
            bytes_sent={
                p: receipt.bytes_sent.get(p, 0) + merged.bytes_sent.get(p, 0)
                for p in range(spec.n_parties)
            },
        )

    def _sharing_for(self, spec: RoundSpec, encoded: RingVector) -> _Sharing:
        """The sharing of ``encoded`` for ``spec``'s round: the one made before, or new.

        Raises :class:`UpdateConflict` if this trainer shared a different update (or
        under another spec) for that round.
        """
        digest = payload_digest(to_bytes(encoded))
        held = self._sharings.get(spec.round_id)
        if held is not None:
            if held.spec.digest != spec.digest or not hmac.compare_digest(
                held.update_digest, digest
            ):
                raise UpdateConflict(
                    f"round {spec.round_id!r}: this trainer already shared a different update "
                    f"(sharing {held.sharing_id.hex()[:8]}…); an update is shared once per "
                    "round and nothing was sent"
                )
            self._sharings.move_to_end(spec.round_id)
            return held
        sharing = _Sharing(
            spec=spec,
            sharing_id=secrets.token_bytes(SHARING_ID_BYTES),
            seeds=tuple(Seed.generate() for _ in range(spec.n_parties - 1)),
            update_digest=digest,
        )
        self._sharings[spec.round_id] = sharing
        while len(self._sharings) > KEPT_SHARINGS:
            self._sharings.popitem(last=False)
        return sharing

    def _upload(
        self,
        spec: RoundSpec,
        sharing: _Sharing,
        encoded: RingVector,
        parties: Iterable[int],
        failed: dict[int, str],
        phases: dict[str, float] | None = None,
    ) -> Receipt:
        """Upload ``sharing`` to ``parties`` (those not in ``failed``): **seeds first, the
        full share last**. The full share is sent only once every seed party has
        acknowledged its seed (in this call, or before it: parties not in ``parties``),
        marked ``seeds_acknowledged``: the full party can then fold it into its
        accumulator for good, since every party holds the sharing and it will be in the
        cohort. Until then the full party is reported failed ("not sent"), and
        :meth:`resume` finishes the seeds and then sends it."""
        started = time.monotonic()
        phases = dict(phases or {})
        targets = [p for p in parties if p not in failed]
        if not targets:
            raise UploadFailed(self._failure_message(spec, failed), failed)
        n = spec.n_parties
        full = full_party_for(self.client_id, n)
        t = time.perf_counter()
        uploads = self._share(spec, sharing, encoded)
        phases["share_s"] = time.perf_counter() - t
        sent = dict.fromkeys(range(n), 0)
        delivered: set[int] = set()  # parties that were handed the whole payload
        outcomes: dict[int, UploadAck | MpcaggError] = {}
        total = sum(uploads[p].payload_bytes for p in targets)
        enabled = wants_progress(self.progress)
        with UploadProgress(total, enabled=enabled, desc=f"upload {spec.round_id}") as bar:

            def send(party: int) -> UploadAck:
                upload = uploads[party]

                def attempt() -> UploadAck:
                    messages = wire.upload_messages(
                        upload,
                        round_id=spec.round_id,
                        client_id=self.client_id,
                        sharing_id=sharing.sharing_id,
                        chunk_bytes=self.cluster.limits.chunk_bytes,
                        spec_digest=spec.digest,
                        seeds_acknowledged=party == full,
                        on_progress=lambda k: bar.advance(party, k),
                        on_sent=lambda k: _add(sent, party, k),
                    )
                    return self._transport.upload(party, _counted(messages, party, delivered))

                ack = self._transport.retrying(attempt, what=f"upload to party {party}")
                if ack.payload_digest != upload.digest or (
                    ack.sharing_id and ack.sharing_id != sharing.sharing_id
                ):
                    raise ProtocolError(
                        f"party {party} acknowledged another payload or sharing than the one sent"
                    )
                return ack

            t = time.perf_counter()
            seeds = [p for p in targets if p != full]
            outcomes.update(self._transport.each_party(send, seeds) if seeds else {})
            phases["seeds_s"] = time.perf_counter() - t
            waiting = [
                p
                for p in range(n)
                if p != full and p in targets and not isinstance(outcomes.get(p), UploadAck)
            ]
            if full in targets and not waiting:
                t = time.perf_counter()
                outcomes.update(self._transport.each_party(send, [full]))
                phases["full_s"] = time.perf_counter() - t
            elif full in targets:
                failed[full] = f"not sent: the seeds at parties {waiting} are not acknowledged"

        acked: list[int] = []
        duplicates: list[int] = []
        unknown: dict[int, str] = {}
        fatal: list[MpcaggError] = []
        for party, outcome in sorted(outcomes.items()):
            if isinstance(outcome, UploadAck):
                acked.append(party)
                if outcome.duplicate:
                    duplicates.append(party)
            elif getattr(outcome, "transient", False):
                # Whole payload handed over, then no answer: the party may hold it.
                (unknown if party in delivered else failed)[party] = str(outcome)
            else:
                fatal.append(outcome)
                failed[party] = str(outcome)
        summary = (
            f"acknowledged by parties {sorted(acked)}; failed at {sorted(failed)}; "
            f"unknown at {sorted(unknown)}"
        )
        if fatal:
            fatal[0].add_note(f"round {spec.round_id!r}, client {self.client_id!r}: {summary}")
            raise fatal[0]
        if not acked and not unknown:
            raise UploadFailed(self._failure_message(spec, failed), failed)
        receipt = Receipt(
            round_id=spec.round_id,
            client_id=self.client_id,
            acknowledged=tuple(sorted(acked)),
            failed=dict(sorted(failed.items())),
            bytes_sent={p: sent[p] for p in range(n)},
            duration_s=time.monotonic() - started,
            duplicates=tuple(sorted(duplicates)),
            sharing_id=sharing.sharing_id.hex(),
            unknown=dict(sorted(unknown.items())),
            phases=phases,
        )
        # The update is kept only while some party may still need its share.
        sharing.encoded = None if not receipt.pending else encoded
        log.info(
            "client %s round %s: %s in %.2fs",
            self.client_id,
            spec.round_id,
            summary,
            receipt.duration_s,
        )
        return receipt

    def status(self, round_id: str) -> list[RoundStatus]:
        """Every server's view of the round (trainers may ask), as
        :meth:`clients.Collector.status`; e.g. to wait for COMMITTED before :meth:`result`."""
        from mpcagg.clients.collector import Collector

        return Collector._over(self._transport, self.client_id).status(round_id)

    def result(self, spec: RoundSpec) -> AggregateResult:
        """The round's decoded sum and mean, fetched by this trainer.

        Servers serve it only if the round's spec says ``trainers_may_fetch``, the round
        is committed, and this trainer is in its cohort; otherwise the server's
        :class:`PermissionDenied` or :class:`RoundNotOpen` is raised.
        """
        from mpcagg.clients.collector import Collector

        return Collector._over(self._transport, self.client_id).result(spec.round_id, spec)

    # -- steps -------------------------------------------------------------------------

    def _encode(
        self, spec: RoundSpec, tensors: Any, *, use_grad: bool, weight: float | None = None
    ) -> RingVector:
        if spec.n_parties != self.cluster.n_parties:
            raise InputError(
                f"round {spec.round_id!r} is for {spec.n_parties} parties, "
                f"but the cluster has {self.cluster.n_parties}"
            )
        layout = TensorLayout.from_spec(spec)
        vector = layout.flatten(tensors, use_grad=use_grad)
        try:
            encoded = spec.fixed_point.encode(vector, bound=spec.bound)
        except EncodingError:
            raise _locate_encoding_error(spec, layout, vector) from None
        return weigh(spec, vector, encoded, weight)

    def _verify_round(self, spec: RoundSpec) -> dict[int, str]:
        """Check every reachable server holds ``spec`` and is open; return unreachable ones.

        Raises a non-transient server error as is; :class:`ProtocolError` on a spec
        digest mismatch and :class:`RoundStateError` if the round is not open.
        """
        outcomes = round_statuses(self._transport, spec.round_id)
        outcomes.raise_refusal()
        mismatched: list[str] = []
        not_open: list[str] = []
        for party, status in outcomes.acknowledged.items():
            if status.spec_digest != spec.digest:
                mismatched.append(f"party {party} has {status.spec_digest.hex()[:16]}…")
            elif status.state is not RoundState.OPEN:
                not_open.append(f"party {party}: {status.state.name}")
        if mismatched:
            raise ProtocolError(
                f"round {spec.round_id!r}: the servers' spec differs from the one given "
                f"(digest {spec.digest.hex()[:16]}…): {'; '.join(mismatched)}; nothing was uploaded"
            )
        if not_open:
            raise RoundStateError(
                f"round {spec.round_id!r} is not open ({', '.join(not_open)}); nothing was uploaded"
            )
        return outcomes.reasons()

    def _share(
        self, spec: RoundSpec, sharing: _Sharing, encoded: RingVector
    ) -> list[wire.PartyUpload]:
        """The n uploads of ``encoded`` under ``sharing``'s seeds, byte-identical every time:
        the seeds, and the full share computed chunk by chunk as it is sent
        (:func:`mpc.sharing.full_share_chunks`), so it never exists whole unless it is
        small enough to keep (:data:`wire.framing.KEEP_BYTES`)."""
        n = spec.n_parties
        full = full_party_for(self.client_id, n)
        context = SharingContext(spec.round_id, self.client_id)
        seeds = list(sharing.seeds)

        def pieces(chunk_elements: int) -> Iterator[RingVector]:
            return full_share_chunks(encoded, n, full, seeds, context, chunk_elements)

        seeded = dict(zip(seed_parties(n, full), seeds, strict=True))
        return [
            wire.PartyUpload.streamed(
                p, len(encoded), pieces, chunk_bytes=self.cluster.limits.chunk_bytes
            )
            if p == full
            else wire.PartyUpload.of_seed(p, len(encoded), seeded[p])
            for p in range(n)
        ]

    def _failure_message(self, spec: RoundSpec, failed: dict[int, str]) -> str:
        reasons = "; ".join(f"party {p}: {r}" for p, r in sorted(failed.items()))
        return (
            f"round {spec.round_id!r}: no party acknowledged client {self.client_id!r}'s "
            f"upload ({reasons})"
        )


KEPT_SHARINGS = 16
"""Rounds whose sharing (seeds and sharing id, a few hundred bytes) a trainer keeps."""


@dataclass(eq=False)
class _Sharing:
    """How this trainer shared its update for one round: reused by every retry."""

    spec: RoundSpec
    sharing_id: bytes
    seeds: tuple[Seed, ...] = field(repr=False)
    update_digest: bytes = field(repr=False)
    encoded: RingVector | None = field(default=None, repr=False)  # kept while incomplete


def _counted(messages: Any, party: int, delivered: set[int]) -> Any:
    """Yield ``messages``; once the last one has been taken, add ``party`` to ``delivered``."""
    yield from messages
    delivered.add(party)


def _add(sent: dict[int, int], party: int, nbytes: int) -> None:
    sent[party] += nbytes


def _locate_encoding_error(spec: RoundSpec, layout: TensorLayout, vector: FloatArray) -> InputError:
    """The encoding error of the first offending tensor, named."""
    for name, part in layout.unflatten(vector).items():
        try:
            spec.fixed_point.encode(part, bound=spec.bound)
        except EncodingError as exc:
            return InputError(f"tensor {name!r}: {exc}")
    return InputError("the update cannot be encoded")  # pragma: no cover
