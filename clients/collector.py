"""The collector client: opens rounds, closes them, reconstructs the aggregate.

Follows DESIGN.md "A round": the same spec is created on every server (each
answers with its spec digest, which must equal the collector's), the leader
(party 0) closes the round and agrees the cohort, and the sum is the ring sum of
every server's aggregate share over exactly that cohort (all servers must report
the same cohort and spec digests).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mpcagg.clients.broadcast import broadcast, round_statuses
from mpcagg.clients.credentials import ClientCredentials
from mpcagg.clients.layout import TensorLayout
from mpcagg.clients.results import AggregateResult
from mpcagg.clients.revealed import fetch_revealed_sum, reveal_statuses
from mpcagg.clients.rounds import fetch_spec
from mpcagg.clients.transport import RetryPolicy, Transport
from mpcagg.clients.weighting import Mean, split_weighted, weighted_mean
from mpcagg.mpc import ring
from mpcagg.protocol.cluster import ClusterConfig
from mpcagg.protocol.errors import (
    AlreadyExists,
    CloseTimeout,
    InputError,
    InvalidArgument,
    ProtocolError,
    ServiceError,
)
from mpcagg.protocol.group import RevealedSum, RevealStatus
from mpcagg.protocol.spec import RevealMode, RoundSpec
from mpcagg.protocol.state import AggregateShare, RoundState, RoundStatus

LEADER = 0


class Collector:
    """The training orchestrator's connection to the cluster (see :class:`SecureAggregator`
    for ``cluster``, ``cert``, ``key`` and the TLS options). ``client_id`` defaults to the
    id the collector certificate names, or ``"collector"`` without a certificate."""

    def __init__(
        self,
        cluster: ClusterConfig | str | Path,
        client_id: str | None = None,
        *,
        cert: ClientCredentials | str | Path | None = None,
        key: str | Path | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._transport = Transport(cluster, cert=cert, key=key, retry=retry)
        self.client_id = self._transport.client_id(client_id, default="collector")

    @classmethod
    def _over(cls, transport: Transport, client_id: str) -> Collector:
        """A collector view on an existing transport (a cohort trainer fetching a result)."""
        view = cls.__new__(cls)
        view.client_id = client_id
        view._transport = transport
        return view

    @property
    def cluster(self) -> ClusterConfig:
        """The cluster this collector talks to (as loaded, never re-read)."""
        return self._transport.cluster

    def __repr__(self) -> str:
        return f"Collector(client_id={self.client_id!r}, {self._transport!r})"

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *_: object) -> None:
        self.disconnect()

    def disconnect(self) -> None:
        """Close the channels to the servers (a later call dials again)."""
        self._transport.close()

    def open_round(
        self,
        round_id: str,
        tensors_or_model: Any,
        *,
        min_clients: int = 2,
        max_clients: int = 1000,
        bound: float = 1000.0,
        precision_bits: int = 16,
        deadline_s: float | None = None,
        trainers_may_fetch: bool = False,
        weighted: bool = False,
        max_weight: float | None = None,
        reveal: RevealMode | str = RevealMode.COLLECTOR,
    ) -> RoundSpec:
        """Create the round on every server and return its spec (hand it to the trainers).

        The layout is derived from ``tensors_or_model`` (a model, ``state_dict``,
        mapping, ``(name, tensor)`` pairs, or a :class:`TensorLayout`). Creating a round
        that already exists with the same spec succeeds. A ``weighted`` round takes one
        weight ``0..max_weight`` from each trainer (``submit(..., weight=n_examples)``) and
        reveals the weighted mean; ``max_clients × max_weight × bound`` must fit the ring.
        Raises :class:`InputError` for invalid parameters, :class:`ProtocolError` if a
        server answers another digest, or the first server error (naming which parties
        did create the round). ``reveal="servers"``: the parties open the aggregate among
        themselves and this collector gets the reveal's state only
        (:meth:`reveal_status`), never the sum or an aggregate share.
        """
        layout = TensorLayout.of(tensors_or_model)
        if deadline_s is not None and not deadline_s > 0:
            raise InputError(f"deadline_s must be > 0 seconds (or None), got {deadline_s!r}")
        deadline_unix = time.time() + deadline_s if deadline_s is not None else 0.0
        try:
            spec = RoundSpec(
                round_id=round_id,
                tensors=layout.to_tensor_specs(),
                n_parties=self.cluster.n_parties,
                precision_bits=precision_bits,
                bound=bound,
                min_clients=min_clients,
                max_clients=max_clients,
                deadline_unix=deadline_unix,
                trainers_may_fetch=trainers_may_fetch,
                weighted=weighted,
                max_weight=0.0 if max_weight is None else max_weight,
                reveal=_reveal_mode(reveal),
            )
        except InvalidArgument as exc:
            raise InputError(str(exc)) from None
        t = self._transport

        def create(party: int) -> RoundStatus:
            try:
                return t.create_round(party, spec)
            except AlreadyExists:
                # A retried create whose first attempt went through, or a re-open with
                # the same spec: accept it if the server holds exactly this spec.
                info = t.retrying(lambda: t.get_round(party, round_id), what=f"GetRound at {party}")
                if info.spec_digest != spec.digest:
                    raise
                return info

        outcomes = broadcast(t, create, what="CreateRound")
        created = sorted(outcomes.acknowledged)
        note = f"round {round_id!r} was created at parties {created}"
        outcomes.raise_refusal(note)
        if outcomes.unreachable:
            first = outcomes.unreachable[min(outcomes.unreachable)]
            first.add_note(note)
            raise first
        wrong = [p for p, o in outcomes.acknowledged.items() if o.spec_digest != spec.digest]
        if wrong:
            raise ProtocolError(
                f"round {round_id!r}: parties {wrong} answered a spec digest other than "
                f"{spec.digest.hex()[:16]}…; the servers do not agree on the spec"
            )
        return spec

    def status(self, round_id: str) -> list[RoundStatus]:
        """Every server's view of the round, by party.

        A server that stays unreachable after retries shows as ``RoundState.UNKNOWN``
        with the reason; any other server error is raised.
        """
        outcomes = round_statuses(self._transport, round_id)
        outcomes.raise_refusal()
        unknown = {
            p: RoundStatus(round_id, p, RoundState.UNKNOWN, reason=reason)
            for p, reason in outcomes.reasons().items()
        }
        return [s for _, s in sorted({**outcomes.acknowledged, **unknown}.items())]

    def close(self, round_id: str, wait_s: float = 30.0) -> RoundStatus:
        """Close the round at the leader and wait until it is COMMITTED or FAILED.

        While the leader answers CLOSING (e.g. a peer is down) or is unreachable, the
        call is repeated with back-off until ``wait_s`` seconds have passed; then
        :class:`CloseTimeout` is raised with the last reason. Returns the leader's
        final :class:`RoundStatus` (``state`` COMMITTED, or FAILED with ``reason``).
        Other server errors are raised as they come.
        """
        t = self._transport
        deadline = time.monotonic() + wait_s
        last = ""
        for retry in itertools.count():
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                info = t.close_round(LEADER, round_id, timeout=min(t.timeout, max(remaining, 1.0)))
            except ServiceError as exc:
                if not exc.transient:
                    raise
                last = str(exc)
            else:
                if info.state.final:
                    return info
                last = f"the leader reports {info.state.name}" + (
                    f" ({info.reason})" if info.reason else ""
                )
            delay = t.retry.backoff(retry)
            if time.monotonic() + delay >= deadline:
                break
            t.sleep(delay)
        raise CloseTimeout(f"round {round_id!r} did not finish closing within {wait_s}s: {last}")

    def aggregate_ring(self, round_id: str) -> tuple[npt.NDArray[np.uint64], int]:
        """The revealed sum as ring elements (uint64) and the cohort size.

        Fetches every server's aggregate share, checks that all report the same
        round, spec digest, cohort digest, cohort size and length, and adds them
        modulo 2^64. Raises the first server error (e.g. :class:`RoundNotOpen` if the
        round is not committed) or :class:`ProtocolError` if the servers disagree.
        """
        shares = self._aggregate_shares(round_id)
        return ring.total([s.vector for s in shares], len(shares[0].vector)), shares[0].cohort_size

    def result(self, round_id: str, spec: RoundSpec | None = None) -> AggregateResult:
        """The decoded sum and mean over the round's cohort, in the spec's tensor shapes.

        ``spec`` is what :meth:`open_round` returned (fetched from the servers if not
        given); the servers' spec digest must match it. Raises as :meth:`aggregate_ring`;
        :class:`ProtocolError` for an empty cohort, a mismatched spec, or a decoded sum
        that honest inputs cannot produce (some coordinate beyond cohort size × bound:
        a corrupted aggregate is never returned). In a weighted round ``sum`` is
        ``Σw·x``, ``mean`` the weighted mean and ``total_weight`` is ``Σw``.
        """
        if spec is None:
            spec = fetch_spec(self._transport, round_id)
        if spec.round_id != round_id:
            raise InputError(f"spec is for round {spec.round_id!r}, not {round_id!r}")
        shares: list[AggregateShare] | list[RevealedSum] = (
            [fetch_revealed_sum(self._transport, round_id)]  # the parties opened it
            if spec.reveal is RevealMode.SERVERS
            else self._aggregate_shares(round_id)
        )
        first = shares[0]
        if first.spec_digest != spec.digest:
            raise ProtocolError(
                f"round {round_id!r}: the servers aggregated under spec digest "
                f"{first.spec_digest.hex()[:16]}…, not the given spec's {spec.digest.hex()[:16]}…"
            )
        if len(first.vector) != spec.length:
            raise ProtocolError(
                f"round {round_id!r}: aggregate length {len(first.vector)} does not match "
                f"the spec ({spec.length})"
            )
        if first.cohort_size < 1:
            raise ProtocolError(f"round {round_id!r}: the servers report an empty cohort")
        total = ring.total([s.vector for s in shares], len(shares[0].vector))
        return decode_result(spec, total, first.cohort_size, first.cohort_digest)

    def reveal_status(self, round_id: str) -> list[RevealStatus]:
        """Every party's reveal of a round in reveal mode ``servers`` (never the sum), by
        party; see :func:`mpcagg.clients.revealed.reveal_statuses`."""
        return reveal_statuses(self._transport, round_id)

    def _aggregate_shares(self, round_id: str) -> list[AggregateShare]:
        t = self._transport
        outcomes = broadcast(t, lambda p: t.aggregate_share(p, round_id), what="GetAggregateShare")
        outcomes.raise_refusal()
        if outcomes.unreachable:  # every share is needed: nothing is revealed without all
            raise outcomes.unreachable[min(outcomes.unreachable)]
        shares = list(outcomes.acknowledged.values())
        first = shares[0]

        def key(s: AggregateShare) -> tuple[str, bytes, bytes, int, int]:
            return (s.round_id, s.spec_digest, s.cohort_digest, s.cohort_size, len(s.vector))

        disagree = [s.party for s in shares if key(s) != key(first)]
        if disagree or first.round_id != round_id:
            views = "; ".join(
                f"party {s.party}: round {s.round_id!r}, spec {s.spec_digest.hex()[:12]}…, "
                f"cohort {s.cohort_size} ({s.cohort_digest.hex()[:12]}…), length {len(s.vector)}"
                for s in shares
            )
            raise ProtocolError(
                f"round {round_id!r}: the servers' aggregate shares do not agree ({views}); "
                "nothing was reconstructed"
            )
        return shares


def decode_result(
    spec: RoundSpec, total_ring: npt.NDArray[np.uint64], cohort_size: int, cohort_digest: bytes
) -> AggregateResult:
    """The decoded sum and mean of a revealed ring sum over a cohort of ``cohort_size``
    (what :meth:`Collector.result` returns); :class:`ProtocolError` for a sum honest
    inputs cannot produce (see :func:`_check_bound`, and for weighted rounds
    :func:`mpcagg.clients.weighting.split_weighted`)."""
    layout = TensorLayout.from_spec(spec)
    total = spec.fixed_point.decode(total_ring)
    total_weight: float | None = None
    if spec.weighted:
        total, total_weight = split_weighted(spec, total, cohort_size)
        mean = weighted_mean(spec, total, total_weight)
    else:
        _check_bound(spec, total, cohort_size)
        mean = total / float(cohort_size)
    total.flags.writeable = False
    mean.flags.writeable = False
    return AggregateResult(
        round_id=spec.round_id,
        sum=layout.unflatten(total),
        mean=Mean(
            layout.unflatten(mean),
            "weighted" if spec.weighted else "unweighted",
            cohort_size if total_weight is None else total_weight,
        ),
        cohort_size=cohort_size,
        cohort_digest=cohort_digest,
        total_weight=total_weight,
    )


def _reveal_mode(value: RevealMode | str) -> RevealMode:
    try:
        return RevealMode(value)
    except ValueError:
        modes = ", ".join(m.value for m in RevealMode)
        raise InputError(f"reveal must be one of {modes}, got {value!r}") from None


def _check_bound(spec: RoundSpec, total: npt.NDArray[np.float64], cohort_size: int) -> None:
    """Refuse a decoded sum that honest inputs cannot produce.

    Each honest input is encoded within ``±bound`` (rounded to the nearest multiple of
    ``2^-precision_bits``), so every coordinate of the sum of ``cohort_size`` inputs
    lies within ``cohort_size · (bound + 2^-precision_bits)``. A share from another
    sharing, a corrupted aggregate share or a wrapped ring shows up far outside.
    """
    limit = cohort_size * (spec.bound + 2.0**-spec.precision_bits)
    bad = np.flatnonzero(~(np.abs(total) <= limit))
    if bad.size == 0:
        return
    index = int(bad[0])
    offset = 0
    for tensor in spec.tensors:
        if index < offset + tensor.size:
            where = np.unravel_index(index - offset, tensor.shape) if tensor.shape else ()
            raise ProtocolError(
                f"round {spec.round_id!r}: the revealed sum is not one honest inputs can "
                f"produce: tensor {tensor.name!r} at {tuple(int(i) for i in where)} is "
                f"{float(total[index]):.6g}, beyond cohort size {cohort_size} × bound "
                f"{spec.bound} ({bad.size} coordinates out of range); nothing is returned"
            )
        offset += tensor.size
    raise ProtocolError(f"round {spec.round_id!r}: revealed sum out of range")  # pragma: no cover
