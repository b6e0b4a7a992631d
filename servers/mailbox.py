"""What other parties delivered to this one in its groups (reveal mode ``servers``).

A :class:`Mailbox` holds, per session (round), each party's latest hello and the
messages :class:`servers.group.GroupService` admitted, keyed by (session, sender,
message number), until this party's computation takes them; it tracks every party's
latest incarnation, so a wait of a group whose member restarted raises
:class:`GroupChanged` instead of waiting out the deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from mpcagg.mpc.errors import GroupChanged, GroupUnavailable
from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.group import INCARNATION_BYTES, GroupMessage, Hello

KEEPALIVE_S = 1.0
"""While a group is open, each member re-sends its hello this often (restart detection)."""


class Mailbox:
    """What other parties delivered to this one: hellos, messages, their incarnations."""

    def __init__(self, party: int, incarnation: bytes) -> None:
        if len(incarnation) != INCARNATION_BYTES:
            raise ValueError(f"an incarnation is {INCARNATION_BYTES} bytes")
        self.party = party
        self.incarnation = incarnation
        self._changed = threading.Condition()
        self._known: dict[int, bytes] = {party: incarnation}
        self._hellos: dict[tuple[str, int], bytes] = {}
        self._messages: dict[tuple[str, int, int], tuple[bytes, RingVector]] = {}

    def observe(self, party: int, incarnation: bytes) -> None:
        """``party`` answered, or sent something, as ``incarnation``."""
        with self._changed:
            if self._known.get(party) != incarnation:
                self._known[party] = incarnation
                self._changed.notify_all()

    def known(self, party: int) -> bytes | None:
        """The latest incarnation ``party`` was seen under, or None if never seen."""
        with self._changed:
            return self._known.get(party)

    def changed(self, view: Mapping[int, bytes]) -> int | None:
        """A member of ``view`` now known under another incarnation (it restarted), if any."""
        with self._changed:
            return self._changed_locked(view)

    def _changed_locked(self, view: Mapping[int, bytes]) -> int | None:
        return next((p for p, inc in view.items() if self._known.get(p, inc) != inc), None)

    def hello(self, h: Hello) -> None:
        """Record ``h`` as its sender's latest hello for its session (and its incarnation)."""
        self.observe(h.src, h.incarnation)
        with self._changed:
            self._hellos[h.session, h.src] = h.incarnation
            self._changed.notify_all()

    def hellos(self, session: str) -> dict[int, bytes]:
        """The incarnation of each party's latest hello for ``session``."""
        with self._changed:
            return {src: inc for (s, src), inc in self._hellos.items() if s == session}

    def put(self, m: GroupMessage, vector: RingVector) -> None:
        """Hold message ``m`` (a later one under the same number replaces it: at most one
        per session, sender and number is ever held)."""
        self.observe(m.src, m.incarnation)
        with self._changed:
            self._messages[m.session, m.src, m.seq] = (m.group, vector)
            self._changed.notify_all()

    def take(
        self,
        session: str,
        src: int,
        seq: int,
        group: bytes,
        view: Mapping[int, bytes],
        deadline: float,
    ) -> RingVector:
        """Message ``seq`` from ``src`` in ``group`` (waits; ``deadline`` is monotonic).

        Raises:
            GroupChanged: a member of ``view`` restarted meanwhile.
            GroupUnavailable: the deadline passed.
        """
        key = (session, src, seq)
        with self._changed:
            while True:
                held = self._messages.get(key)
                if held is not None and held[0] == group:
                    del self._messages[key]
                    return held[1]
                restarted = self._changed_locked(view)
                if restarted is not None:
                    raise GroupChanged(f"party {restarted} restarted while the group was open")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GroupUnavailable(
                        f"party {src}'s message {seq} did not arrive before the deadline"
                    )
                self._changed.wait(min(left, KEEPALIVE_S))

    def drop(self, session: str, group: bytes | None = None) -> None:
        """Forget ``session``'s messages (only those of ``group``, if given) and hellos."""
        with self._changed:
            for key in [k for k, v in self._messages.items() if k[0] == session]:
                if group is None or self._messages[key][0] == group:
                    del self._messages[key]
            if group is None:
                for hello in [k for k in self._hellos if k[0] == session]:
                    del self._hellos[hello]
