"""The operator's client of every party's Admin service (``mpcagg rounds``), with the
collector's client certificate (mutual TLS), over the same channels, deadlines and
error translation as the collector's own calls (:class:`Transport`)."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from mpcagg.clients.transport import Transport
from mpcagg.protocol.admin import Decision, RoundSummary
from mpcagg.protocol.state import LEADER, RoundStatus
from mpcagg.v1 import admin_pb2_grpc
from mpcagg.wire import admin as wire
from mpcagg.wire.convert import status_from_proto
from mpcagg.wire.status import translate


class AdminClient(Transport):
    """Admin calls to any party (see :class:`Transport` for ``cluster``, ``cert``, ``key``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admin: dict[int, tuple[grpc.Channel, Any]] = {}
        self._admin_lock = threading.Lock()

    def _admin_stub(self, party: int) -> Any:
        with self._admin_lock:
            entry = self._admin.get(party)
            if entry is None:
                channel = self._dial(party)
                entry = (channel, admin_pb2_grpc.AdminStub(channel))
                self._admin[party] = entry
        return entry[1]

    def close(self) -> None:
        """Close the Admin channels and every Aggregation channel (later calls dial again)."""
        with self._admin_lock:
            channels, self._admin = self._admin, {}
        for channel, _ in channels.values():
            channel.close()
        super().close()

    def _call(self, party: int, method: str, call: Any) -> Any:
        try:
            return call(self._admin_stub(party))
        except grpc.RpcError as exc:
            raise translate(exc, party, method) from None

    def list_rounds(self, party: int) -> list[RoundSummary]:
        """Every round party ``party`` knows, as the operator sees it (no shares).

        One attempt; raises the translated :class:`ServiceError` (e.g.
        :class:`PermissionDenied` for a certificate that is not the collector's).
        """
        request = wire.list_rounds_request()
        stream = self._call(
            party, "ListRounds", lambda s: list(s.ListRounds(request, timeout=self.timeout))
        )
        return [wire.summary_from_proto(m) for m in stream]

    def show_round(self, party: int, round_id: str) -> tuple[RoundSummary, bytes | None]:
        """Party ``party``'s summary of ``round_id`` and the round's stored record, if any.

        One attempt; raises the translated :class:`ServiceError` (:class:`NotFound` for
        a round the party does not know).
        """
        request = wire.show_round_request(round_id)
        reply = self._call(party, "ShowRound", lambda s: s.ShowRound(request, timeout=self.timeout))
        return wire.show_round_from_proto(reply)

    def abort_round(self, round_id: str, reason: str) -> RoundStatus:
        """Abort ``round_id`` at the leader, which fails it on every party with ``reason``;
        returns the leader's status. One attempt; raises the translated
        :class:`ServiceError` (e.g. :class:`RoundNotOpen` for a committed round)."""
        request = wire.abort_round_request(round_id, reason)
        reply = self._call(
            LEADER, "AbortRound", lambda s: s.AbortRound(request, timeout=self.timeout)
        )
        return status_from_proto(reply)

    def prune(self, party: int, *, dry_run: bool) -> list[Decision]:
        """Party ``party``'s retention decisions, carried out unless ``dry_run``.

        One attempt; raises the translated :class:`ServiceError`.
        """
        request = wire.prune_rounds_request(dry_run)
        reply = self._call(
            party, "PruneRounds", lambda s: s.PruneRounds(request, timeout=self.timeout)
        )
        return wire.prune_from_proto(reply)

    def audit_log(self, party: int) -> tuple[list[bytes], list[bytes]]:
        """(records, PEM certificates) of party ``party``'s audit log. One attempt;
        raises the translated :class:`ServiceError`."""
        request = wire.audit_log_request()
        chunks = self._call(
            party, "GetAuditLog", lambda s: list(s.GetAuditLog(request, timeout=self.timeout))
        )
        return wire.audit_log_from_chunks(chunks)
