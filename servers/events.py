"""What a party's aggregator tells its observers (metrics, the audit log).

The aggregator calls one :class:`RoundEvents` at the points where a round changes;
:class:`Observers` fans each call out and never lets an observer's failure reach
the protocol (a round that committed stays committed if a metric or the audit log
fails: the failure is logged, and the audit log is reconciled at the next start).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Literal, Protocol

from mpcagg.mpc.ring import RingVector
from mpcagg.servers.round import Round

log = logging.getLogger("mpcagg.events")

UploadOutcome = Literal["stored", "duplicate", "refused", "aborted"]
"""``stored``: durably acknowledged; ``duplicate``: an identical retry acknowledged again;
``refused``: the header was refused; ``aborted``: started, then refused or broken off."""


class RoundEvents(Protocol):
    """Observer of one party's rounds. Every method is called without locks a caller
    could deadlock on beyond the round's own, and must return quickly."""

    def upload(self, outcome: UploadOutcome, kind: str, nbytes: int) -> None:
        """An upload ended (``kind`` is ``full``, ``seed`` or ``unknown``)."""
        ...

    def closing(self, rnd: Round) -> None:
        """The round stopped accepting uploads (OPEN → CLOSING)."""
        ...

    def committed(self, rnd: Round, aggregate: RingVector, seconds: float) -> None:
        """The round committed here; ``aggregate`` is this party's aggregate share (as
        written to disk), ``seconds`` how long the commit took."""
        ...

    def failed(self, rnd: Round) -> None:
        """The round failed here (nothing will be revealed)."""
        ...

    def forgotten(self, round_id: str) -> None:
        """The round was pruned: its rows and files are gone."""
        ...


class Observers:
    """Several :class:`RoundEvents` as one; exceptions are logged, never raised."""

    def __init__(self, *observers: RoundEvents) -> None:
        self._observers = list(observers)

    def add(self, observer: RoundEvents) -> None:
        """Also notify ``observer`` of every later event."""
        self._observers.append(observer)

    def upload(self, outcome: UploadOutcome, kind: str, nbytes: int) -> None:
        """Pass :meth:`RoundEvents.upload` to every observer; their errors are logged."""
        for o in self._observers:
            with _guard(o, "upload"):
                o.upload(outcome, kind, nbytes)

    def closing(self, rnd: Round) -> None:
        """Pass :meth:`RoundEvents.closing` to every observer; their errors are logged."""
        for o in self._observers:
            with _guard(o, "closing"):
                o.closing(rnd)

    def committed(self, rnd: Round, aggregate: RingVector, seconds: float) -> None:
        """Pass :meth:`RoundEvents.committed` to every observer; their errors are logged."""
        for o in self._observers:
            with _guard(o, "committed"):
                o.committed(rnd, aggregate, seconds)

    def failed(self, rnd: Round) -> None:
        """Pass :meth:`RoundEvents.failed` to every observer; their errors are logged."""
        for o in self._observers:
            with _guard(o, "failed"):
                o.failed(rnd)

    def forgotten(self, round_id: str) -> None:
        """Pass :meth:`RoundEvents.forgotten` to every observer; their errors are logged."""
        for o in self._observers:
            with _guard(o, "forgotten"):
                o.forgotten(round_id)


@contextlib.contextmanager
def _guard(observer: object, what: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        log.exception("%s failed on %s (the round is unaffected)", type(observer).__name__, what)
