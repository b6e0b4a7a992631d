"""Conversions of the Group (peer port) and Reveal (client port) services' messages.

A group frame is one header, then, for a message, chunks of little-endian int64 ring
elements; a revealed sum is one header, then chunks of little-endian uint64. Both are
assembled into a preallocated vector and refused (:class:`InvalidArgument` for a
frame a party received, :class:`ProtocolError` for a reply a client received) if the
chunks do not add up to exactly the announced length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mpcagg.mpc.ring import DTYPE, RingVector, to_bytes
from mpcagg.protocol.errors import InvalidArgument, ProtocolError
from mpcagg.protocol.group import (
    GroupMessage,
    Hello,
    RevealedSum,
    RevealState,
    RevealStatus,
)
from mpcagg.v1 import group_pb2, reveal_pb2


def hello_frames(hello: Hello) -> Iterator[group_pb2.GroupFrame]:
    """A hello's frames: one ``GROUP_HELLO`` header and no chunks (what
    :func:`read_frame_header` and :func:`read_frame_payload` accept back)."""
    yield group_pb2.GroupFrame(
        header=group_pb2.GroupHeader(
            kind=group_pb2.GROUP_HELLO,
            session=hello.session,
            binding=hello.binding,
            src=hello.src,
            dst=hello.dst,
            src_incarnation=hello.incarnation,
        )
    )


def message_frames(
    header: GroupMessage, vector: RingVector, chunk_bytes: int
) -> Iterator[group_pb2.GroupFrame]:
    """A message's frames: its header, then ``vector`` in chunks of ``chunk_bytes``."""
    yield group_pb2.GroupFrame(
        header=group_pb2.GroupHeader(
            kind=group_pb2.GROUP_DATA,
            session=header.session,
            binding=header.binding,
            src=header.src,
            dst=header.dst,
            src_incarnation=header.incarnation,
            group=header.group,
            seq=header.seq,
            length=len(vector),
        )
    )
    raw = to_bytes(vector)
    for start in range(0, len(raw), chunk_bytes):
        yield group_pb2.GroupFrame(chunk=bytes(raw[start : start + chunk_bytes]))


def read_frame_header(frames: Iterator[group_pb2.GroupFrame]) -> Hello | GroupMessage:
    """The header of a received frame, read before its payload (so a party refuses a
    frame it does not admit without reading what follows).

    Raises:
        InvalidArgument: no header first, an unknown kind, or malformed fields.
    """
    first = next(frames, None)
    if first is None or first.WhichOneof("body") != "header":
        raise InvalidArgument("a group frame starts with a header; got a chunk or nothing")
    h = first.header
    common = (h.session, bytes(h.binding), h.src, h.dst, bytes(h.src_incarnation))
    if h.kind == group_pb2.GROUP_HELLO:
        return Hello(*common)
    if h.kind != group_pb2.GROUP_DATA:
        raise InvalidArgument(f"group frame kind must be HELLO or DATA, got {h.kind}")
    return GroupMessage(*common, bytes(h.group), h.seq, h.length)


def read_frame_payload(
    frames: Iterator[group_pb2.GroupFrame], header: Hello | GroupMessage, max_length: int
) -> RingVector | None:
    """The rest of a frame: None for a hello (which carries nothing), else the message's
    ``header.length`` elements.

    Raises:
        InvalidArgument: a hello with chunks; a message longer than ``max_length``
            elements, or whose chunks do not add up to its length.
    """
    if isinstance(header, Hello):
        if next(frames, None) is not None:
            raise InvalidArgument("a group hello carries no chunks")
        return None
    if header.length > max_length:
        raise InvalidArgument(
            f"group message of {header.length} elements exceeds this round's length ({max_length})"
        )
    vector = np.empty(header.length, dtype=DTYPE)
    _fill(vector, (m.chunk for m in _chunks(frames, InvalidArgument)), InvalidArgument, "group")
    return vector


def ack_to_proto(party: int, incarnation: bytes) -> group_pb2.GroupAck:
    """``GroupAck`` from the recipient of a frame: its party index and its incarnation
    (:data:`protocol.group.INCARNATION_BYTES` bytes)."""
    return group_pb2.GroupAck(party=party, incarnation=incarnation)


def ack_from_proto(msg: group_pb2.GroupAck) -> tuple[int, bytes]:
    """``(party, incarnation)`` of a ``GroupAck``, as received: not checked here."""
    return msg.party, bytes(msg.incarnation)


# --- the Reveal service (client port) -----------------------------------------------------

_STATES = {
    RevealState.PENDING: reveal_pb2.REVEAL_PENDING,
    RevealState.REVEALED: reveal_pb2.REVEALED,
    RevealState.FAILED: reveal_pb2.REVEAL_FAILED,
}


def reveal_request(round_id: str) -> reveal_pb2.GetRevealRequest:
    """``GetRevealRequest`` for ``round_id`` (GetRevealStatus and GetRevealedSum alike)."""
    return reveal_pb2.GetRevealRequest(round_id=round_id)


def reveal_status_to_proto(s: RevealStatus) -> reveal_pb2.RevealStatus:
    """The status as ``reveal.proto``'s ``RevealStatus``; a state with no wire value (UNKNOWN)
    travels as ``REVEAL_STATE_UNSPECIFIED``."""
    return reveal_pb2.RevealStatus(
        round_id=s.round_id,
        party=s.party,
        state=_STATES.get(s.state, reveal_pb2.REVEAL_STATE_UNSPECIFIED),
        reason=s.reason,
        cohort_size=s.cohort_size,
        cohort_digest=s.cohort_digest,
        spec_digest=s.spec_digest,
    )


def reveal_status_from_proto(msg: reveal_pb2.RevealStatus) -> RevealStatus:
    """Inverse of :func:`reveal_status_to_proto`; an unknown or unspecified wire state reads
    as ``RevealState.UNKNOWN`` (never REVEALED)."""
    state = next((s for s, w in _STATES.items() if w == msg.state), RevealState.UNKNOWN)
    return RevealStatus(
        round_id=msg.round_id,
        party=msg.party,
        state=state,
        reason=msg.reason,
        cohort_size=msg.cohort_size,
        cohort_digest=bytes(msg.cohort_digest),
        spec_digest=bytes(msg.spec_digest),
    )


def revealed_sum_messages(
    status: RevealStatus, vector: RingVector, chunk_bytes: int
) -> Iterator[reveal_pb2.RevealedSumMessage]:
    """A revealed sum's stream: a header (``status``, ``len(vector)``), then ``vector``'s
    little-endian bytes in chunks of ``chunk_bytes``; :func:`read_revealed_sum` reads it."""
    yield reveal_pb2.RevealedSumMessage(
        header=reveal_pb2.RevealedSumHeader(
            status=reveal_status_to_proto(status), length=len(vector)
        )
    )
    raw = to_bytes(vector)
    for start in range(0, len(raw), chunk_bytes):
        yield reveal_pb2.RevealedSumMessage(chunk=bytes(raw[start : start + chunk_bytes]))


def read_revealed_sum(
    messages: Iterable[reveal_pb2.RevealedSumMessage], *, party: int, max_length: int
) -> RevealedSum:
    """A party's streamed revealed sum; :class:`ProtocolError` for a malformed stream, a
    header naming another party or a state other than REVEALED."""
    it = iter(messages)
    first = next(it, None)
    if first is None or first.WhichOneof("body") != "header":
        raise ProtocolError(f"party {party}: revealed sum stream did not start with a header")
    status = reveal_status_from_proto(first.header.status)
    if status.party != party or status.state is not RevealState.REVEALED:
        raise ProtocolError(
            f"party {party}: revealed sum header names party {status.party}, state "
            f"{status.state.value}"
        )
    length = first.header.length
    if length > max_length:
        raise ProtocolError(f"party {party}: revealed sum length {length} exceeds {max_length}")
    vector = np.empty(length, dtype=DTYPE)
    _fill(vector, (m.chunk for m in _chunks(it, ProtocolError)), ProtocolError, f"party {party}")
    return RevealedSum(
        party=party,
        round_id=status.round_id,
        cohort_size=status.cohort_size,
        cohort_digest=status.cohort_digest,
        spec_digest=status.spec_digest,
        vector=vector,
    )


def _chunks(messages: Iterable[Any], error: type[Exception]) -> Iterator[Any]:
    for msg in messages:
        if msg.WhichOneof("body") != "chunk":
            raise error("a second header arrived after the stream started")
        yield msg


def _fill(vector: RingVector, chunks: Iterable[bytes], error: type[Exception], who: str) -> None:
    buf = vector.view(np.uint8)
    filled = 0
    for chunk in chunks:
        n = len(chunk)
        if filled + n > len(buf):
            raise error(f"{who}: chunks exceed the announced {len(vector)} elements")
        buf[filled : filled + n] = np.frombuffer(chunk, dtype=np.uint8)
        filled += n
    if filled != len(buf):
        raise error(f"{who}: {filled} bytes came, expected {len(buf)} ({len(vector)} elements)")
