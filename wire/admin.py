"""Conversions of the Admin service (``protos/mpcagg/v1/admin.proto``): round summaries,
retention decisions and audit-log chunks, both ways."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import get_args

from mpcagg.protocol.admin import Action, Decision, RoundSummary, Rule
from mpcagg.protocol.errors import ProtocolError
from mpcagg.protocol.spec import RoundSpec
from mpcagg.v1 import admin_pb2 as apb
from mpcagg.wire.convert import spec_from_proto, spec_to_proto, state_from_proto, state_to_proto

AUDIT_CHUNK_BYTES = 1 << 20
"""Audit records per streamed message: about this many bytes (below max_message_bytes)."""


def summary_to_proto(s: RoundSummary) -> apb.RoundSummary:
    """The summary as ``admin.proto``'s ``RoundSummary``; a missing ``closed_at`` or
    ``finished_at`` travels as 0.0 (:func:`summary_from_proto` reads 0 back as None).
    The spec is not included (see :func:`show_round_reply`)."""
    return apb.RoundSummary(
        round_id=s.round_id,
        party=s.party,
        state=state_to_proto(s.state),
        reason=s.reason,
        spec_digest=s.spec_digest,
        cohort_size=s.cohort_size,
        cohort_digest=s.cohort_digest,
        uploads=s.uploads,
        full_shares=s.full_shares,
        seed_shares=s.seed_shares,
        share_bytes=s.share_bytes,
        created_unix=s.created_at,
        closed_unix=s.closed_at or 0.0,
        finished_unix=s.finished_at or 0.0,
        deadline_unix=s.deadline_unix,
    )


def summary_from_proto(msg: apb.RoundSummary, spec: RoundSpec | None = None) -> RoundSummary:
    """Inverse of :func:`summary_to_proto`, with ``spec`` attached as given. An unknown
    state reads as ``RoundState.UNKNOWN``; nothing else is validated."""
    return RoundSummary(
        round_id=msg.round_id,
        party=msg.party,
        state=state_from_proto(msg.state),
        reason=msg.reason,
        spec_digest=bytes(msg.spec_digest),
        cohort_size=msg.cohort_size,
        cohort_digest=bytes(msg.cohort_digest),
        uploads=msg.uploads,
        full_shares=msg.full_shares,
        seed_shares=msg.seed_shares,
        share_bytes=msg.share_bytes,
        created_at=msg.created_unix,
        closed_at=msg.closed_unix or None,
        finished_at=msg.finished_unix or None,
        deadline_unix=msg.deadline_unix,
        spec=spec,
    )


def list_rounds_request() -> apb.ListRoundsRequest:
    """The (empty) ``ListRoundsRequest``: every round the party holds."""
    return apb.ListRoundsRequest()


def show_round_request(round_id: str) -> apb.ShowRoundRequest:
    """``ShowRoundRequest`` for ``round_id`` (not validated here; the party checks it)."""
    return apb.ShowRoundRequest(round_id=round_id)


def show_round_reply(summary: RoundSummary, audit_record: bytes | None) -> apb.ShowRoundReply:
    """``ShowRoundReply``: the summary, its spec if known, and the round's audit record
    (empty bytes on the wire for None)."""
    return apb.ShowRoundReply(
        summary=summary_to_proto(summary),
        spec=spec_to_proto(summary.spec) if summary.spec is not None else None,
        audit_record=audit_record or b"",
    )


def show_round_from_proto(msg: apb.ShowRoundReply) -> tuple[RoundSummary, bytes | None]:
    """The summary (with its spec) and the audit record, if any; :class:`ProtocolError`
    for an invalid spec."""
    spec = None
    if msg.HasField("spec"):
        try:
            spec = spec_from_proto(msg.spec)
        except ValueError as exc:
            raise ProtocolError(f"party {msg.summary.party} sent an invalid spec: {exc}") from None
    return summary_from_proto(msg.summary, spec), bytes(msg.audit_record) or None


def abort_round_request(round_id: str, reason: str) -> apb.AbortRoundRequest:
    """``AbortRoundRequest``, sent to the leader (party 0): fail ``round_id`` at every party,
    recording ``reason``, so that nothing is ever revealed for it. The leader refuses once
    it has decided the cohort."""
    return apb.AbortRoundRequest(round_id=round_id, reason=reason)


def prune_rounds_request(dry_run: bool) -> apb.PruneRoundsRequest:
    """``PruneRoundsRequest``: apply the retention policy now (fail abandoned OPEN rounds,
    prune old ones); with ``dry_run`` the party only reports what it would do."""
    return apb.PruneRoundsRequest(dry_run=dry_run)


def prune_reply(party: int, decisions: Sequence[Decision], dry_run: bool) -> apb.PruneRoundsReply:
    """``PruneRoundsReply``: party ``party``'s retention ``decisions``, in order, and whether
    they were only proposed (``dry_run``)."""
    return apb.PruneRoundsReply(
        party=party,
        dry_run=dry_run,
        decisions=[
            apb.RetentionDecision(round_id=d.round_id, action=d.action, why=d.why, rule=d.rule)
            for d in decisions
        ],
    )


def prune_from_proto(msg: apb.PruneRoundsReply) -> list[Decision]:
    """The decisions of a ``PruneRoundsReply``, in order. Raises :class:`ProtocolError` for
    an action or rule outside :data:`protocol.admin.Action` / :data:`protocol.admin.Rule`."""
    out = []
    for d in msg.decisions:
        if d.action not in get_args(Action) or d.rule not in get_args(Rule):
            raise ProtocolError(f"party {msg.party} sent an unknown decision {d.action!r}")
        out.append(Decision(d.round_id, d.action, d.why, d.rule))  # type: ignore[arg-type]
    return out


def audit_log_request() -> apb.GetAuditLogRequest:
    """The (empty) ``GetAuditLogRequest``: the party's whole audit log."""
    return apb.GetAuditLogRequest()


def audit_chunks(
    lines: Sequence[bytes], certificates: Iterable[bytes]
) -> Iterator[apb.AuditLogChunk]:
    """The audit log as a stream: certificates in the first message, records in order."""
    batch: list[bytes] = []
    size = 0
    first = apb.AuditLogChunk(certificates=list(certificates))
    for line in lines:
        batch.append(line)
        size += len(line)
        if size >= AUDIT_CHUNK_BYTES:
            first.records.extend(batch)
            yield first
            first, batch, size = apb.AuditLogChunk(), [], 0
    first.records.extend(batch)
    yield first


def audit_log_from_chunks(chunks: Iterable[apb.AuditLogChunk]) -> tuple[list[bytes], list[bytes]]:
    """(records in order, PEM certificates) from a GetAuditLog stream."""
    lines: list[bytes] = []
    certs: list[bytes] = []
    for chunk in chunks:
        lines.extend(bytes(r) for r in chunk.records)
        certs.extend(bytes(c) for c in chunk.certificates)
    return lines, certs
