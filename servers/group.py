"""The parties' group, carried over their mutual-TLS peer links (reveal mode ``servers``).

Every message travels as one ``Group.Send`` call (``protos/mpcagg/v1/group.proto``) on
the recipient's **peer port**, over the same channel the leader's peer calls use: TLS
with the cluster CA, this party's certificate presented as the client certificate. The
recipient's interceptor admits it only from a party certificate of the cluster
(:data:`servers.interceptor.POLICY`), and :class:`GroupService` only if the frame names
that very party as its sender. torch's gloo has no TLS transport; this is what carries
CrypTen's communicator instead (:mod:`mpc.engines.crypten_communicator`).

Forming a group for a round (``session``)::

    each party, for every other party j (concurrently, retried until the deadline):
        Send(HELLO session, binding, src = me, incarnation = mine) → ack(j's incarnation)
    view = every member's incarnation; group id = H(session, binding, view)

Messages are numbered per pair (:class:`mpc.group.GroupChannel`) and carry the group id;
a recipient keeps them in its :class:`servers.mailbox.Mailbox` until its own computation takes them.
While a group is open each member re-sends its hello every :data:`KEEPALIVE_S`: an
acknowledgement (or a hello) naming a new incarnation means that member restarted, and
every wait of the broken group raises :class:`GroupChanged` (the revealer forms the
group again). Whatever does not arrive by the deadline raises
:class:`GroupUnavailable`; nothing partial is ever returned.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

from mpcagg.mpc.errors import GroupChanged, GroupUnavailable, LengthError
from mpcagg.mpc.ring import RingVector
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import InvalidArgument, PermissionDenied, ProtocolError, ServiceError
from mpcagg.protocol.group import (
    INCARNATION_BYTES,
    GroupMessage,
    Hello,
    group_id,
)
from mpcagg.servers.auth import PeerAuthenticator
from mpcagg.servers.mailbox import KEEPALIVE_S, Mailbox
from mpcagg.servers.peers import PeerClient
from mpcagg.v1 import group_pb2_grpc
from mpcagg.wire import group as wire
from mpcagg.wire.status import translate

log = logging.getLogger("mpcagg.group")

Admit = Callable[[str, bytes], int]
"""``admit(session, binding)``: the round's vector length if this party takes part in
opening it now; else raises the :class:`ServiceError` to answer (:class:`Unavailable`:
not yet, retry; any other: never)."""

Frames = Callable[[], Iterator[Any]]


class GroupTransport:
    """One party's end of every group it forms: its mailbox and its peer channels."""

    def __init__(
        self,
        party: int,
        n_parties: int,
        peers: Sequence[PeerClient],
        limits: Limits,
        incarnation: bytes | None = None,
    ) -> None:
        self.party = party
        self.n_parties = n_parties
        self.mailbox = Mailbox(party, incarnation or secrets.token_bytes(INCARNATION_BYTES))
        self._peers = {p.party: p for p in peers}
        self._timeout = limits.rpc_timeout_s
        self.chunk_bytes = limits.chunk_bytes
        self._lock = threading.Lock()
        self.bytes_sent = 0
        """Serialized frame bytes sent by this party's group calls (hellos included)."""

    @property
    def incarnation(self) -> bytes:
        """This process's 16-byte incarnation (drawn at start; names it in every hello)."""
        return self.mailbox.incarnation

    def deliver(self, dst: int, frames: Frames, timeout: float) -> bytes:
        """One ``Group.Send`` to ``dst``; returns its incarnation. Raises the translated
        :class:`ServiceError`, or :class:`ProtocolError` for an ack from another party."""
        stub = group_pb2_grpc.GroupStub(self._peers[dst].channel())
        counted = self._counted(frames())
        try:
            ack = stub.Send(counted, timeout=timeout)
        except grpc.RpcError as exc:
            raise translate(exc, dst, "Group.Send") from None
        party, incarnation = wire.ack_from_proto(ack)
        if party != dst or len(incarnation) != INCARNATION_BYTES:
            raise ProtocolError(f"party {dst}: a group acknowledgement names party {party}")
        self.mailbox.observe(dst, incarnation)
        return incarnation

    def _counted(self, frames: Iterator[Any]) -> Iterator[Any]:
        for frame in frames:
            with self._lock:
                self.bytes_sent += frame.ByteSize()
            yield frame

    def deliver_until(
        self,
        dst: int,
        frames: Frames,
        deadline: float,
        what: str,
        stop: Callable[[], str | None] = lambda: None,
    ) -> bytes:
        """:meth:`deliver`, retried on transient errors with back-off until ``deadline``.

        Raises:
            GroupUnavailable: ``dst`` refused (a final error) or stayed unreachable.
            GroupChanged: ``stop()`` named a reason to give up (a member restarted).
        """
        backoff, last = 0.05, "no answer"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GroupUnavailable(
                    f"{what}: party {dst} was not reachable before the deadline ({last})"
                )
            try:
                return self.deliver(dst, frames, min(self._timeout, left))
            except ServiceError as exc:
                if not exc.transient:
                    raise GroupUnavailable(f"{what}: party {dst} refused it: {exc}") from None
                last = str(exc)
            reason = stop()
            if reason is not None:
                raise GroupChanged(reason)
            time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
            backoff = min(2 * backoff, KEEPALIVE_S)

    def hello(self, session: str, bound: bytes, dst: int) -> Frames:
        """The frames of this party's hello to ``dst`` for ``session`` under binding ``bound``."""
        h = Hello(session, bound, self.party, dst, self.incarnation)
        return lambda: wire.hello_frames(h)

    def form(self, session: str, bound: bytes, deadline: float) -> FormedGroup:
        """Deliver this party's hello to every other party and return the group.

        Raises :class:`GroupUnavailable` (naming every party that was not reached, and
        why) if some party did not acknowledge before ``deadline`` (monotonic).
        """
        others = [p for p in range(self.n_parties) if p != self.party]
        with ThreadPoolExecutor(max(1, len(others)), thread_name_prefix="group-hello") as pool:
            futures = {
                p: pool.submit(
                    self.deliver_until, p, self.hello(session, bound, p), deadline, "hello"
                )
                for p in others
            }
            view: dict[int, bytes] = {self.party: self.incarnation}
            problems = []
            for p, future in futures.items():
                try:
                    view[p] = future.result()
                except GroupUnavailable as exc:
                    problems.append(str(exc))
        if problems:
            raise GroupUnavailable("the group did not form: " + "; ".join(problems))
        for p in others:  # an incarnation seen later than its ack (a hello) wins
            view[p] = self.mailbox.known(p) or view[p]
        return FormedGroup(self, session, bound, view, deadline)


class FormedGroup:
    """One formed group: :class:`mpc.group.Links` for its members' messages."""

    def __init__(
        self,
        transport: GroupTransport,
        session: str,
        bound: bytes,
        view: Mapping[int, bytes],
        deadline: float,
    ) -> None:
        self._t = transport
        self.rank = transport.party
        self.world_size = transport.n_parties
        self.session = session
        self.binding = bound
        self.view = dict(view)
        self.group = group_id(session, bound, [self.view[p] for p in range(self.world_size)])
        self.deadline = deadline
        others = [p for p in range(self.world_size) if p != self.rank]
        self._pool = ThreadPoolExecutor(max(1, len(others)), thread_name_prefix="group-send")
        self._posted: list[Future[bytes]] = []
        self._trouble: dict[int, str] = {}  # member → why the keep-alive does not reach it
        self._closed = threading.Event()
        self._keepalive = threading.Thread(
            target=self._keep_alive, args=(others,), name="group-keepalive", daemon=True
        )
        self._keepalive.start()

    def _stop_reason(self) -> str | None:
        if self._closed.is_set():
            return "the group was closed"
        restarted = self._t.mailbox.changed(self.view)
        return None if restarted is None else f"party {restarted} restarted"

    def post(self, dst: int, seq: int, vector: RingVector) -> None:
        """Send ``vector`` as message ``seq`` to ``dst`` in the background (retried until
        the deadline); :meth:`flush` reports how it went.
        """
        header = GroupMessage(
            self.session,
            self.binding,
            self.rank,
            dst,
            self._t.incarnation,
            self.group,
            seq,
            len(vector),
        )
        chunk = self._t.chunk_bytes

        def frames() -> Iterator[Any]:
            return wire.message_frames(header, vector, chunk)

        what = f"message {seq}"
        self._posted.append(
            self._pool.submit(
                self._t.deliver_until, dst, frames, self.deadline, what, self._stop_reason
            )
        )

    def flush(self) -> None:
        """Wait for every posted message to be acknowledged.

        Raises :class:`GroupChanged` if a member restarted meanwhile (first), else the first
        other error (:class:`GroupUnavailable`: refused or unreachable by the deadline).
        """
        posted, self._posted = self._posted, []
        errors: list[BaseException] = []
        for future in posted:
            try:
                future.result()
            except BaseException as exc:
                errors.append(exc)
        changed = [e for e in errors if isinstance(e, GroupChanged)]
        if changed:
            raise changed[0]
        if errors:
            raise errors[0]
        restarted = self._t.mailbox.changed(self.view)
        if restarted is not None:
            raise GroupChanged(f"party {restarted} restarted while the group was open")

    def recv(self, src: int, seq: int, length: int) -> RingVector:
        """Message ``seq`` from ``src`` (waits until the group's deadline).

        Raises :class:`GroupUnavailable` (naming unreachable parties) if it does not
        arrive, :class:`GroupChanged` if a member restarted, :class:`LengthError` if it does
        not hold exactly ``length`` elements.
        """
        try:
            got = self._t.mailbox.take(self.session, src, seq, self.group, self.view, self.deadline)
        except GroupUnavailable as exc:
            trouble = "; ".join(
                f"party {p} unreachable ({why})" for p, why in self._trouble.items()
            )
            raise GroupUnavailable(f"{exc}; {trouble}" if trouble else str(exc)) from None
        if len(got) != length:
            raise LengthError(f"message {seq} from party {src}: {len(got)} elements, not {length}")
        return got

    def _keep_alive(self, others: list[int]) -> None:
        while not self._closed.wait(KEEPALIVE_S):
            for p in others:
                # Unreachable for now: the group's waits give up at the deadline.
                try:
                    hello = self._t.hello(self.session, self.binding, p)
                    self._t.deliver(p, hello, min(KEEPALIVE_S, 2.0))
                    self._trouble.pop(p, None)
                except (ServiceError, ProtocolError) as exc:
                    self._trouble[p] = str(exc)

    def close(self) -> None:
        """Stop the keep-alive; messages still being delivered give up at once."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._t.mailbox.drop(self.session, self.group)


class GroupService(group_pb2_grpc.GroupServicer):
    """The recipient's side: authenticate the sender, admit the frame, hold it."""

    def __init__(self, transport: GroupTransport, admit: Admit, peer_auth: PeerAuthenticator):
        self._t = transport
        self._admit = admit
        self._peer_auth = peer_auth

    def Send(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """Admit one hello or message from another party and acknowledge it with this
        party's incarnation.

        Refused (PERMISSION_DENIED) unless the caller's party certificate names the frame's
        sender; INVALID_ARGUMENT if it is addressed to another party; whatever the
        :data:`Admit` callback raises for the round; a message longer than the round's length
        is refused before it is held.
        """
        header = wire.read_frame_header(request_iterator)
        sender = self._peer_auth.require_party(context)  # None only with --insecure
        if sender is not None and sender != header.src:
            raise PermissionDenied(
                f"party {sender}'s certificate may not send group frames as party {header.src}"
            )
        if header.dst != self._t.party or not 0 <= header.src < self._t.n_parties:
            raise InvalidArgument(
                f"group frame from party {header.src} to party {header.dst} was sent to party "
                f"{self._t.party} of {self._t.n_parties}"
            )
        length = self._admit(header.session, header.binding)
        vector = wire.read_frame_payload(request_iterator, header, length)
        if isinstance(header, Hello):
            self._t.mailbox.hello(header)
        else:
            assert vector is not None
            self._t.mailbox.put(header, vector)
        return wire.ack_to_proto(self._t.party, self._t.incarnation)
