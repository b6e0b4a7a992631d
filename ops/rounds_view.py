"""How ``mpcagg rounds`` prints: the list table and one round's report (pure text from
the views :mod:`mpcagg.ops.rounds` gathered)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mpcagg.protocol.admin import RoundSummary

if TYPE_CHECKING:
    from mpcagg.ops.rounds import View


def ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _joined(values: Sequence[object]) -> str:
    distinct = {str(v) for v in values}
    return str(values[0]) if len(distinct) == 1 else "/".join(str(v) for v in values)


def render_list(view: View, now: float) -> list[str]:
    by_round: dict[str, dict[int, RoundSummary]] = {}
    for party, summaries in sorted(view.answers.items()):
        for s in summaries:
            by_round.setdefault(s.round_id, {})[party] = s
    rows = [("ROUND", "STATE", "UPLOADS", "COHORT", "AGE", "NOTE")]
    order = sorted(by_round, key=lambda r: (min(s.created_at for s in by_round[r].values()), r))
    for rid in order:
        held = by_round[rid]
        states = [held[p].state.value if p in held else "-" for p in view.parties]
        state = states[0] if len(set(states)) == 1 else "MIXED"
        note = ""
        if state == "MIXED":
            note = ", ".join(f"party {p}: {s}" for p, s in zip(view.parties, states, strict=True))
        else:
            reasons = {s.reason for s in held.values() if s.reason}
            note = next(iter(reasons)) if len(reasons) == 1 else ""
        first = min(held.values(), key=lambda s: s.created_at)
        cohort = max(s.cohort_size for s in held.values())
        rows.append(
            (
                rid,
                state,
                _joined([held[p].uploads if p in held else "-" for p in view.parties]),
                str(cohort) if cohort else "-",
                ago(first.age(now)),
                note[:70] + ("…" if len(note) > 70 else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
        for r in rows
    ]
    for party, error in sorted(view.errors.items()):
        out.append(f"party {party}: unreachable or refused: {error}")
    if len(rows) == 1 and not view.errors:
        out.append("(no rounds)")
    return [line.rstrip() for line in out]


def render_show(round_id: str, view: View, audit: View, party_checks: dict[int, Any]) -> list[str]:
    out = []
    summaries = {p: a[0] for p, a in view.answers.items()}
    spec = next((s.spec for s in summaries.values() if s.spec is not None), None)
    states = {s.state.value for s in summaries.values()}
    if len(view.parties) == 1:
        where = f"party {view.parties[0]}"
    elif len(summaries) == len(view.parties):
        where = "every party"
    else:
        where = f"parties {sorted(summaries)}"
    if len(states) == 1:
        headline = f"round {round_id}: {states.pop()} at {where}"
    else:
        headline = f"round {round_id}: " + ", ".join(
            f"party {p} {s.state.value}" for p, s in sorted(summaries.items())
        )
    out.append(headline)
    if spec is not None:
        layout = ", ".join(f"{t.name} {list(t.shape)}" for t in spec.tensors)
        deadline = utc(spec.deadline_unix) if spec.deadline_unix else "none"
        out.append(
            f"  spec      {spec.digest.hex()[:16]}…  {layout} ({spec.length} elements), "
            f"precision {spec.precision_bits} bits, bound {spec.bound:g}, "
            f"clients {spec.min_clients}..{spec.max_clients}, deadline {deadline}"
            + (", weighted" if spec.weighted else "")
        )
    cohorts = {(s.cohort_size, s.cohort_digest) for s in summaries.values() if s.cohort_size}
    if cohorts:
        size, digest = sorted(cohorts)[0]
        agree = "" if len(cohorts) == 1 else "  (PARTIES DISAGREE)"
        out.append(f"  cohort    {size} clients, digest {digest.hex()[:16]}…{agree}")
    for party in view.parties:
        if party in view.errors:
            out.append(f"  party {party}   {view.errors[party]}")
            continue
        s, record_line = view.answers[party]
        out.append(
            f"  party {party}   {s.state.value:<9}  uploads {s.uploads} ({s.full_shares} full, "
            f"{s.seed_shares} seed, {s.share_bytes / 1e6:.1f} MB)"
            + (f"  reason: {s.reason}" if s.reason else "")
        )
        times = [f"created {utc(s.created_at)}"]
        if s.closed_at is not None:
            times.append(f"closed +{s.closed_at - s.created_at:.2f}s")
        if s.finished_at is not None:
            times.append(f"finished +{s.finished_at - s.created_at:.2f}s")
        out.append(f"            {', '.join(times)}")
        check = party_checks.get(party)
        if record_line is None:
            out.append("            audit     no record (the round has not finished here)")
        else:
            record = json.loads(record_line)
            agg = record.get("aggregate_digest") or "-"
            out.append(
                f"            audit     record {record.get('seq')}: {record.get('state')}, "
                f"aggregate share {agg[:16]}{'…' if agg != '-' else ''}"
            )
        if check is not None:
            out.append(f"            log       {check.describe()}")
        elif party in audit.errors:
            out.append(f"            log       not verified: {audit.errors[party]}")
    return out
