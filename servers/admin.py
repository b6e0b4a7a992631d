"""The Admin servicer: the operator commands (``mpcagg rounds``) against a running party.

Thin, like the other servicers: who may call it (the collector's client certificate),
the error mapping and the log line of a refusal are the interceptor's
(:data:`mpcagg.servers.interceptor.POLICY`); conversions are :mod:`mpcagg.wire.admin`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc

from mpcagg.protocol.admin import RoundSummary
from mpcagg.protocol.errors import InvalidArgument, NotFound, RoundNotOpen
from mpcagg.protocol.state import LEADER, RoundState
from mpcagg.servers.audit import AuditLog
from mpcagg.servers.interceptor import caller
from mpcagg.servers.inventory import Inventory
from mpcagg.servers.retention import Janitor
from mpcagg.v1 import admin_pb2_grpc
from mpcagg.wire import admin as wire
from mpcagg.wire.convert import status_to_proto

if TYPE_CHECKING:
    from mpcagg.servers.aggregator import Aggregator
    from mpcagg.servers.leader import Leader

MAX_REASON = 200


class AdminService(admin_pb2_grpc.AdminServicer):
    """List, show, abort and prune rounds; serve the audit log."""

    def __init__(
        self, aggregator: Aggregator, leader: Leader | None, janitor: Janitor, audit: AuditLog
    ) -> None:
        self._agg = aggregator
        self._leader = leader
        self._janitor = janitor
        self._audit = audit

    def _inventory(self) -> Inventory:
        return Inventory(self._agg.storage.data_dir, self._agg.party)

    def _live(self, s: RoundSummary) -> RoundSummary:
        """What a CLOSING round waits for is kept in memory only: show it."""
        if s.state is not RoundState.CLOSING:
            return s
        try:
            rnd = self._agg.get(s.round_id)
        except NotFound:  # pruned meanwhile
            return s
        return replace(s, reason=rnd.reason or s.reason)

    def ListRounds(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Stream one summary per round in this party's store (live state where loaded)."""
        with self._inventory() as inventory:
            rounds = inventory.rounds()
        for s in rounds:
            yield wire.summary_to_proto(self._live(s))

    def ShowRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        """One round's summary and its audit record, if any; NOT_FOUND for an unknown round."""
        with self._inventory() as inventory:
            summary = self._live(inventory.round(request.round_id))
        return wire.show_round_reply(summary, self._record_of(request.round_id))

    def _record_of(self, round_id: str) -> bytes | None:
        for line in reversed(self._audit.lines()):
            try:
                if json.loads(line).get("round_id") == round_id:
                    return line
            except (ValueError, AttributeError):
                continue
        return None

    def AbortRound(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Leader only (FAILED_PRECONDITION elsewhere): fail a round on every party with the
        operator's printable reason; refused once COMMITTED or once its cohort is decided.
        """
        if self._leader is None:
            raise RoundNotOpen(
                f"party {self._agg.party} is not the leader; send AbortRound to party {LEADER}, "
                "which fails the round on every party"
            )
        reason = " ".join(str(request.reason).split())[:MAX_REASON]
        if not reason.isprintable():
            raise InvalidArgument("the abort reason must be printable text")
        ident = caller()
        who = f"{ident.role} {ident.client_id!r}" if ident is not None else "the operator"
        rid = request.round_id
        rnd = self._agg.get(rid)
        with rnd.lock:
            if rnd.state is RoundState.COMMITTED:
                raise RoundNotOpen(
                    f"round {rid!r} is already COMMITTED; an aggregate may have been revealed, "
                    "so there is nothing to abort"
                )
            if rnd.decided is not None:
                raise RoundNotOpen(
                    f"round {rid!r}: the leader has decided its cohort and commits are under "
                    "way (some party may already hold its aggregate share); it completes once "
                    "every party is reachable again: close it again instead of aborting"
                )
            if rnd.state is not RoundState.FAILED:
                self._agg.fail(rid, f"aborted by {who}" + (f": {reason}" if reason else ""))
        # Tells every peer; one that cannot be reached is told again from the leader's tick.
        return status_to_proto(self._leader.close(rid))

    def PruneRounds(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Run the ``[retention]`` policy once (``dry_run``: only report what it would remove)."""
        decisions = self._janitor.run_once(dry_run=request.dry_run)
        return wire.prune_reply(self._agg.party, decisions, request.dry_run)

    def GetAuditLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """Stream ``audit.jsonl`` and the certificates that signed it, unchanged."""
        yield from wire.audit_chunks(self._audit.lines(), self._audit.certificates().values())
