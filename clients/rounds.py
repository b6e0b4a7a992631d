"""Round specs fetched from the servers: how a trainer or collector in another process
learns a round with its id alone."""

from __future__ import annotations

from mpcagg.clients.broadcast import round_statuses
from mpcagg.clients.transport import Transport
from mpcagg.protocol.errors import InputError, InvalidArgument, ProtocolError, UploadFailed
from mpcagg.protocol.spec import RoundSpec, check_id


def fetch_spec(transport: Transport, round_id: str) -> RoundSpec:
    """The spec of ``round_id`` as the servers hold it.

    Every reachable server is asked (GetRound returns the whole spec); each spec must
    hash to the digest that server reports, and all of them must agree. Raises
    :class:`InputError` for a malformed id, :class:`ProtocolError` if the servers
    disagree, :class:`UploadFailed` if no server answers, and a server's non-transient
    error as it comes.
    """
    try:
        check_id("round id", round_id)
    except InvalidArgument as exc:
        raise InputError(str(exc)) from None
    outcomes = round_statuses(transport, round_id)
    outcomes.raise_refusal()
    specs: dict[int, RoundSpec] = {}
    for party, status in outcomes.acknowledged.items():
        if status.spec is None or status.spec.digest != status.spec_digest:
            raise ProtocolError(
                f"party {party} sent no round spec for {round_id!r}, or one that does "
                "not hash to the digest it reports"
            )
        specs[party] = status.spec
    unreachable = outcomes.reasons()
    if not specs:
        raise UploadFailed(
            f"round {round_id!r}: no server answered "
            f"({'; '.join(f'party {p}: {r}' for p, r in sorted(unreachable.items()))})",
            unreachable,
        )
    digests = {s.digest for s in specs.values()}
    if len(digests) != 1:
        views = "; ".join(f"party {p}: {s.digest.hex()[:16]}…" for p, s in specs.items())
        raise ProtocolError(f"round {round_id!r}: the servers hold different specs ({views})")
    spec = next(iter(specs.values()))
    if spec.round_id != round_id:
        raise ProtocolError(f"asked for round {round_id!r}, the servers sent {spec.round_id!r}")
    return spec
