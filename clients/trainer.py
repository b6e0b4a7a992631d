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

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from clients import wire
from clients.errors import (
    ClientError,
    InputError,
    ProtocolError,
    RoundStateError,
    UploadFailed,
)
from clients.layout import FloatArray, TensorLayout
from clients.progress import UploadProgress, wants_progress
from clients.results import AggregateResult, Receipt, RoundInfo, RoundState, UploadAck
from clients.transport import RetryPolicy, Transport
from mpc import EncodingError, Seed, SharingContext, full_party_for, share
from mpc.ring import RingVector
from servers.config import ClusterConfig
from servers.errors import InvalidArgument
from servers.spec import RoundSpec, check_id

log = logging.getLogger("mpcagg.clients")


class SecureAggregator:
    """A trainer's connection to the cluster.

    ``cluster`` is a :class:`ClusterConfig` or the path of the cluster file;
    ``token`` the trainer's bearer token (sent on every call, never shown);
    ``progress`` shows a byte progress bar on stderr (default: when stderr is a
    terminal). On TLS clusters the server is verified against the cluster CA.
    Use as a context manager, or call :meth:`disconnect`.
    """

    def __init__(
        self,
        cluster: ClusterConfig | str | Path,
        client_id: str,
        token: str | None = None,
        *,
        progress: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        try:
            self.client_id = check_id("client id", client_id)
        except InvalidArgument as exc:
            raise InputError(str(exc)) from None
        self.progress = progress
        self._transport = Transport(cluster, token=token, retry=retry)

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

    def submit(
        self, spec: RoundSpec, tensors: Any, *, use_grad: bool = False, verify: bool = False
    ) -> Receipt:
        """Secret-share ``tensors`` and upload one share to every server.

        ``spec`` is what :meth:`clients.Collector.open_round` returned; ``tensors``
        is a model, a ``state_dict``, a mapping of arrays or ``(name, tensor)``
        pairs such as ``model.named_parameters()`` (with ``use_grad``, their
        gradients), matching the spec's layout.

        Every upload names ``spec.digest`` and each server refuses a share made under
        another spec (INVALID_ARGUMENT), so a server cannot make the trainer encode
        under a different layout, bound or precision. With ``verify`` the trainer also
        asks every server for the round's state first (n more round trips), so a spec
        mismatch or a round that is not open is caught before anything is sent.

        Returns a :class:`Receipt`; parties that stayed unreachable after retries
        are listed in ``receipt.failed`` (the client is then outside the cohort).
        Raises :class:`InputError`/:class:`LayoutError` for unusable input (nothing
        sent); with ``verify``, :class:`ProtocolError` if a server holds another spec
        and :class:`RoundStateError` if the round is not open (nothing uploaded in either
        case); the server's :class:`RpcFailed` for a non-transient refusal (e.g.
        :class:`RoundRejected` for a closed round); :class:`UploadFailed` if no party
        acknowledged.
        """
        started = time.monotonic()
        encoded = self._encode(spec, tensors, use_grad=use_grad)
        # Every upload header carries spec.digest and each server refuses another one, so
        # the up-front GetRound check is optional (it saves n round trips per trainer).
        failed = self._verify_round(spec) if verify else {}
        targets = [p for p in range(spec.n_parties) if p not in failed]
        if not targets:
            raise UploadFailed(self._failure_message(spec, failed), failed)

        uploads = self._share(spec, encoded)
        del encoded
        sharing_id = secrets.token_bytes(wire.SHARING_ID_BYTES)
        sent = dict.fromkeys(range(spec.n_parties), 0)
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
                        sharing_id=sharing_id,
                        chunk_bytes=self.cluster.limits.chunk_bytes,
                        spec_digest=spec.digest,
                        on_progress=lambda n: bar.advance(party, n),
                    )
                    return self._transport.upload(party, _counted(messages, sent, party))

                ack = self._transport.retrying(attempt, what=f"upload to party {party}")
                if ack.payload_digest != upload.digest:
                    raise ProtocolError(
                        f"party {party} acknowledged another payload digest than the one sent"
                    )
                return ack

            outcomes = self._transport.each_party(send, targets)

        acked: list[int] = []
        duplicates: list[int] = []
        fatal: list[ClientError] = []
        for party, outcome in outcomes.items():
            if isinstance(outcome, UploadAck):
                acked.append(party)
                if outcome.duplicate:
                    duplicates.append(party)
            elif getattr(outcome, "transient", False):
                failed[party] = str(outcome)
            else:
                fatal.append(outcome)
                failed[party] = str(outcome)
        summary = f"acknowledged by parties {acked}; failed at {sorted(failed)}"
        if fatal:
            fatal[0].add_note(f"round {spec.round_id!r}, client {self.client_id!r}: {summary}")
            raise fatal[0]
        if not acked:
            raise UploadFailed(self._failure_message(spec, failed), failed)
        receipt = Receipt(
            round_id=spec.round_id,
            client_id=self.client_id,
            acknowledged=tuple(acked),
            failed=dict(sorted(failed.items())),
            bytes_sent={p: sent[p] for p in range(spec.n_parties)},
            duration_s=time.monotonic() - started,
            duplicates=tuple(duplicates),
            sharing_id=sharing_id.hex(),
        )
        log.info(
            "client %s round %s: %s in %.2fs",
            self.client_id,
            spec.round_id,
            summary,
            receipt.duration_s,
        )
        return receipt

    def result(self, spec: RoundSpec) -> AggregateResult:
        """The round's decoded sum and mean, fetched by this trainer.

        Servers serve it only if the round's spec says ``trainers_may_fetch``, the round
        is committed, and this trainer is in its cohort; otherwise the server's
        :class:`PermissionDenied` or :class:`RoundRejected` is raised.
        """
        from clients.collector import Collector

        return Collector._over(self._transport, self.client_id).result(spec.round_id, spec)

    # -- steps -------------------------------------------------------------------------

    def _encode(self, spec: RoundSpec, tensors: Any, *, use_grad: bool) -> RingVector:
        if spec.n_parties != self.cluster.n_parties:
            raise InputError(
                f"round {spec.round_id!r} is for {spec.n_parties} parties, "
                f"but the cluster has {self.cluster.n_parties}"
            )
        layout = TensorLayout.from_spec(spec)
        vector = layout.flatten(tensors, use_grad=use_grad)
        try:
            return spec.fixed_point.encode(vector, bound=spec.bound)
        except EncodingError:
            raise _locate_encoding_error(spec, layout, vector) from None

    def _verify_round(self, spec: RoundSpec) -> dict[int, str]:
        """Check every reachable server holds ``spec`` and is open; return unreachable ones.

        Raises a non-transient server error as is; :class:`ProtocolError` on a spec
        digest mismatch and :class:`RoundStateError` if the round is not open.
        """
        t = self._transport
        statuses = t.each_party(
            lambda p: t.retrying(lambda: t.get_round(p, spec.round_id), what=f"GetRound at {p}")
        )
        unreachable: dict[int, str] = {}
        mismatched: list[str] = []
        not_open: list[str] = []
        for party, status in statuses.items():
            if isinstance(status, RoundInfo):
                if status.spec_digest != spec.digest:
                    mismatched.append(f"party {party} has {status.spec_digest.hex()[:16]}…")
                elif status.state is not RoundState.OPEN:
                    not_open.append(f"party {party}: {status.state.name}")
            elif getattr(status, "transient", False):
                unreachable[party] = str(status)
            else:
                raise status
        if mismatched:
            raise ProtocolError(
                f"round {spec.round_id!r}: the servers' spec differs from the one given "
                f"(digest {spec.digest.hex()[:16]}…): {'; '.join(mismatched)}; nothing was uploaded"
            )
        if not_open:
            raise RoundStateError(
                f"round {spec.round_id!r} is not open ({', '.join(not_open)}); nothing was uploaded"
            )
        return unreachable

    def _share(self, spec: RoundSpec, encoded: RingVector) -> list[wire.PartyUpload]:
        n = spec.n_parties
        seeds = [Seed.generate() for _ in range(n - 1)]
        shares = share(
            encoded,
            n,
            full_party_for(self.client_id, n),
            seeds,
            SharingContext(spec.round_id, self.client_id),
        )
        return [wire.PartyUpload.from_share(s) for s in shares]

    def _failure_message(self, spec: RoundSpec, failed: dict[int, str]) -> str:
        reasons = "; ".join(f"party {p}: {r}" for p, r in sorted(failed.items()))
        return (
            f"round {spec.round_id!r}: no party acknowledged client {self.client_id!r}'s "
            f"upload ({reasons})"
        )


def _counted(messages: Any, sent: dict[int, int], party: int) -> Any:
    """Yield ``messages``, adding their serialized size to ``sent[party]``."""
    for msg in messages:
        sent[party] += msg.ByteSize()
        yield msg


def _locate_encoding_error(spec: RoundSpec, layout: TensorLayout, vector: FloatArray) -> InputError:
    """The encoding error of the first offending tensor, named."""
    for name, part in layout.unflatten(vector).items():
        try:
            spec.fixed_point.encode(part, bound=spec.bound)
        except EncodingError as exc:
            return InputError(f"tensor {name!r}: {exc}")
    return InputError("the update cannot be encoded")  # pragma: no cover
