"""The trainer client: a model update in, one share per server out.

:meth:`SecureAggregator.submit` follows architecture.md §1 "A round" (steps 2–5): it
encodes the update in fixed point within the round's bound, takes this trainer's
sharing for the round (:mod:`.sharings`: n−1 fresh seeds and a sharing id, made once
per round) and uploads it seeds first (:mod:`.upload`). With ``verify`` it first checks
that every server runs the round with exactly the spec the trainer was handed (spec
digest) and that the round is open. A retry resends byte-identical data under the same
sharing id; nothing is ever re-shared. Seeds and shares are never logged or shown.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mpcagg.clients.broadcast import round_statuses
from mpcagg.clients.credentials import ClientCredentials
from mpcagg.clients.layout import FloatArray, TensorLayout
from mpcagg.clients.results import AggregateResult, Receipt
from mpcagg.clients.rounds import fetch_spec
from mpcagg.clients.sharings import Sharing, Sharings
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.clients.update import STREAM_BYTES, Update
from mpcagg.clients.upload import upload_sharing
from mpcagg.clients.weighting import check_weight, weigh
from mpcagg.mpc import EncodingError
from mpcagg.mpc.ring import ELEMENT_BYTES
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import InputError, ProtocolError, RoundStateError
from mpcagg.protocol.spec import RoundSpec
from mpcagg.protocol.state import RoundState, RoundStatus


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

    An update longer than :attr:`stream_bytes` encoded (unweighted rounds) is never held
    whole: it is encoded piece by piece as it is sent (:mod:`.update`), and resuming it
    takes the same tensors again.
    """

    stream_bytes: int = STREAM_BYTES
    """Encoded updates longer than this are streamed from the caller's tensors."""

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
        self._sharings = Sharings()

    @property
    def cluster(self) -> ClusterConfig:
        """The cluster this trainer uploads to (as loaded, never re-read)."""
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
        update = self._encode(spec, tensors, use_grad=use_grad, weight=weight)
        sharing = self._sharings.for_update(spec, update)
        encode_s = time.perf_counter() - t
        failed = self._verify_round(spec) if verify else {}
        return self._upload(sharing, update, range(spec.n_parties), failed, encode_s=encode_s)

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
        sharing = self._sharings.made(receipt.round_id, receipt.sharing_id)
        spec = sharing.spec
        if tensors is not None:
            update = self._encode(spec, tensors, use_grad=use_grad, weight=weight)
            self._sharings.for_update(spec, update)  # refuses a different update
        elif sharing.update is not None:
            update = sharing.update
        else:
            raise InputError(
                f"round {receipt.round_id!r}: the update is not held (its upload was "
                "complete, or it was too large to keep); pass the same tensors to resume"
            )
        pending = [p for p in range(spec.n_parties) if p not in receipt.acknowledged]
        merged = self._upload(sharing, update, pending, {})
        return replace(
            merged,
            acknowledged=tuple(sorted({*receipt.acknowledged, *merged.acknowledged})),
            duplicates=tuple(sorted({*receipt.duplicates, *merged.duplicates})),
            bytes_sent={
                p: receipt.bytes_sent.get(p, 0) + merged.bytes_sent.get(p, 0)
                for p in range(spec.n_parties)
            },
        )

    def _upload(
        self,
        sharing: Sharing,
        update: Update,
        parties: Iterable[int],
        failed: dict[int, str],
        *,
        encode_s: float | None = None,
    ) -> Receipt:
        """:func:`clients.upload.upload_sharing` as this trainer (seeds first)."""
        return upload_sharing(
            self._transport,
            self.client_id,
            sharing,
            update,
            parties,
            failed,
            progress=self.progress,
            phases=None if encode_s is None else {"encode_s": encode_s},
        )

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
    ) -> Update:
        """The encoded update: held whole, or (unweighted, longer than
        :attr:`stream_bytes` encoded) encoded piece by piece as it is sent."""
        if spec.n_parties != self.cluster.n_parties:
            raise InputError(
                f"round {spec.round_id!r} is for {spec.n_parties} parties, "
                f"but the cluster has {self.cluster.n_parties}"
            )
        layout = TensorLayout.from_spec(spec)
        if check_weight(spec, weight) is None and spec.length * ELEMENT_BYTES > self.stream_bytes:
            arrays = layout.arrays(tensors, use_grad=use_grad)
            return Update.streamed(arrays, spec.fixed_point, spec.bound)
        vector = layout.flatten(tensors, use_grad=use_grad)
        try:
            encoded = spec.fixed_point.encode(vector, bound=spec.bound)
        except EncodingError:
            raise _locate_encoding_error(spec, layout, vector) from None
        return Update.whole(weigh(spec, vector, encoded, weight))

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


def _locate_encoding_error(spec: RoundSpec, layout: TensorLayout, vector: FloatArray) -> InputError:
    """The encoding error of the first offending tensor, named."""
    for name, part in layout.unflatten(vector).items():
        try:
            spec.fixed_point.encode(part, bound=spec.bound)
        except EncodingError as exc:
            return InputError(f"tensor {name!r}: {exc}")
    return InputError("the update cannot be encoded")  # pragma: no cover
