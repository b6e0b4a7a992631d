"""The operator's Admin service reveals no share and no trainer.

Statically: its RPCs are exactly the expected ones, no response type reaches a message
that carries a share or a holding (client id + sharing id), and every bytes field is a
digest, an audit record or a certificate. Live: after a round with a dropout, nothing
the Admin service answers names a trainer, and an audit record holds only its keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from mpcagg.clients.admin import AdminClient
from mpcagg.protocol.state import RoundState
from mpcagg.v1 import admin_pb2
from tests.integration.conftest import Rig, running_cluster

pytestmark = pytest.mark.timeout(120)

P = "mpcagg.v1."
EXPECTED = {
    "ListRounds": ("ListRoundsRequest", "RoundSummary", False, True),
    "ShowRound": ("ShowRoundRequest", "ShowRoundReply", False, False),
    "AbortRound": ("AbortRoundRequest", "RoundStatus", False, False),
    "PruneRounds": ("PruneRoundsRequest", "PruneRoundsReply", False, False),
    "GetAuditLog": ("GetAuditLogRequest", "AuditLogChunk", False, True),
}
BYTES_FIELDS = {
    "RoundSummary.spec_digest",
    "RoundSummary.cohort_digest",
    "RoundStatus.spec_digest",
    "RoundStatus.cohort_digest",
    "ShowRoundReply.audit_record",  # one JSON line: digests, counts, times, a signature
    "AuditLogChunk.records",  # the same lines
    "AuditLogChunk.certificates",  # the party's own certificates (public)
}
RECORD_KEYS = {
    "v", "seq", "party", "round_id", "state", "reason", "spec_digest", "cohort_digest",
    "cohort_size", "aggregate_digest", "created_at", "closed_at", "finished_at",
    "recorded_at", "prev", "signer", "sig",
}  # fmt: skip


def _closure(message: Descriptor) -> dict[str, Descriptor]:
    seen: dict[str, Descriptor] = {}
    todo = [message]
    while todo:
        m = todo.pop()
        if m.full_name not in seen:
            seen[m.full_name] = m
            todo += [f.message_type for f in m.fields if f.message_type is not None]
    return seen


def test_the_admin_surface_reaches_no_share_and_no_holding() -> None:
    service = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    found = {
        m.name: (
            m.input_type.full_name.removeprefix(P),
            m.output_type.full_name.removeprefix(P),
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }
    assert found == EXPECTED
    reachable: dict[str, Descriptor] = {}
    for m in service.methods:
        reachable |= _closure(m.output_type)
    assert set(reachable) == {
        P + n
        for n in (
            "RoundSummary", "ShowRoundReply", "RoundSpec", "TensorSpec", "RoundStatus",
            "PruneRoundsReply", "RetentionDecision", "AuditLogChunk",
        )
    }  # fmt: skip
    bytes_fields = {
        f"{m.name}.{f.name}"
        for m in reachable.values()
        for f in m.fields
        if f.type == FieldDescriptor.TYPE_BYTES
    }
    assert bytes_fields == BYTES_FIELDS


def test_no_admin_answer_names_a_trainer(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3) as cluster, Rig(cluster) as rig:
        spec = rig.open("adm-r", min_clients=2)
        trainers = [f"hospital-{k}" for k in range(3)]
        for t in trainers:
            rig.submit(spec, t, {"w": np.ones(16)})
        encoded = spec.fixed_point.encode(np.ones(16), bound=spec.bound)
        rig.upload("adm-r", "hospital-x", rig.shares("adm-r", "hospital-x", encoded), [0, 1])
        assert rig.close("adm-r").state is RoundState.COMMITTED
        answers: list[bytes] = []
        with AdminClient(cluster.config, **cluster.client_kwargs("collector", "collector")) as a:
            for party in range(3):
                answers += [repr(s).encode() for s in a.list_rounds(party)]
                summary, record = a.show_round(party, "adm-r")
                assert record is not None
                answers += [repr(summary).encode(), record]
                lines, certs = a.audit_log(party)
                answers += lines + certs
                for line in lines:
                    assert set(json.loads(line)) == RECORD_KEYS
    blob = b"\n".join(answers)
    for name in [*trainers, "hospital-x"]:
        assert name.encode() not in blob, f"an Admin answer names trainer {name}"
