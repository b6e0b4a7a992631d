"""The group's pieces without a network: the mailbox (servers/mailbox.py), its wire frames
(wire/group.py), the names that tie a group to a round (protocol/group.py), and the
reveal mode in the round spec (protocol/spec.py, wire/convert.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mpcagg.mpc.errors import GroupChanged, GroupUnavailable
from mpcagg.mpc.ring import DTYPE
from mpcagg.protocol.errors import InvalidArgument, ProtocolError
from mpcagg.protocol.group import (
    MAX_MESSAGES,
    GroupMessage,
    Hello,
    RevealState,
    RevealStatus,
    binding,
    group_id,
)
from mpcagg.protocol.spec import RevealMode, RoundSpec, TensorSpec, spec_from_canonical
from mpcagg.servers.mailbox import Mailbox
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.v1 import group_pb2
from mpcagg.wire import convert
from mpcagg.wire import group as wire

S, B = "round-1", binding(b"s" * 32, b"c" * 32)
INC = [bytes([i]) * 16 for i in range(3)]
GID = group_id(S, B, INC)
VIEW = dict(enumerate(INC))


def _message(src: int, seq: int, group: bytes = GID, length: int = 3) -> GroupMessage:
    return GroupMessage(S, B, src, 0, INC[src], group, seq, length)


# --- the mailbox ------------------------------------------------------------------------


def test_a_message_is_taken_once_and_only_in_its_group() -> None:
    box = Mailbox(0, INC[0])
    other_group = group_id(S, B, [INC[0], INC[1], b"\x09" * 16])
    box.put(_message(1, 0, other_group), np.array([9, 9, 9], dtype=DTYPE))
    with pytest.raises(GroupUnavailable, match="did not arrive"):
        box.take(S, 1, 0, GID, VIEW, time.monotonic() + 0.2)
    box.put(_message(1, 0), np.array([1, 2, 3], dtype=DTYPE))  # replaces the other
    got = box.take(S, 1, 0, GID, VIEW, time.monotonic() + 1)
    assert got.tolist() == [1, 2, 3]
    with pytest.raises(GroupUnavailable):
        box.take(S, 1, 0, GID, VIEW, time.monotonic() + 0.1)


def test_a_member_that_restarts_breaks_every_wait_of_the_group() -> None:
    box = Mailbox(0, INC[0])
    for p in (1, 2):
        box.observe(p, INC[p])
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            box.take(S, 1, 0, GID, VIEW, time.monotonic() + 5)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    box.hello(Hello(S, B, 2, 0, b"\x42" * 16))  # party 2 came back as a new process
    waiter.join(2)
    assert not waiter.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], GroupChanged)
    assert "party 2 restarted" in str(errors[0])
    assert box.changed(VIEW) == 2
    assert box.hellos(S) == {2: b"\x42" * 16}


def test_dropping_a_group_keeps_the_messages_of_the_next_one() -> None:
    box = Mailbox(0, INC[0])
    newer = group_id(S, B, [INC[0], INC[1], b"\x07" * 16])
    box.put(_message(1, 0), np.zeros(3, dtype=DTYPE))
    box.put(_message(2, 1, newer), np.ones(3, dtype=DTYPE))
    box.drop(S, GID)
    assert box.take(S, 2, 1, newer, {}, time.monotonic() + 1).tolist() == [1, 1, 1]
    box.put(_message(1, 0), np.zeros(3, dtype=DTYPE))
    box.drop(S)
    with pytest.raises(GroupUnavailable):
        box.take(S, 1, 0, GID, {}, time.monotonic() + 0.05)


# --- names and frames ------------------------------------------------------------------------


def test_a_group_is_named_by_its_round_cohort_and_every_incarnation() -> None:
    assert binding(b"s" * 32, b"c" * 32) != binding(b"s" * 32, b"d" * 32)
    assert len(GID) == 16
    assert group_id(S, B, INC) != group_id(S, B, [INC[0], INC[1], b"\x05" * 16])
    assert group_id(S, B, INC) != group_id("round-2", B, INC)
    assert group_id(S, B, INC) != group_id(S, binding(b"t" * 32, b"c" * 32), INC)


def test_frames_round_trip_and_malformed_ones_are_refused() -> None:
    vector = np.arange(10, dtype=DTYPE) * np.uint64(2**61)
    header = _message(1, 5, length=10)
    frames = list(wire.message_frames(header, vector, chunk_bytes=24))
    assert len(frames) == 1 + 4  # 80 bytes in chunks of 24
    it = iter(frames)
    got = wire.read_frame_header(it)
    assert got == header
    np.testing.assert_array_equal(wire.read_frame_payload(it, got, 10), vector)
    # Too long for the round, or chunks that do not add up: refused.
    with pytest.raises(InvalidArgument, match="exceeds"):
        wire.read_frame_payload(iter(frames[1:]), header, 9)
    with pytest.raises(InvalidArgument, match="expected 80"):
        wire.read_frame_payload(iter(frames[1:-1]), header, 10)
    hello = Hello(S, B, 1, 0, INC[1])
    frames = list(wire.hello_frames(hello))
    assert wire.read_frame_header(iter(frames)) == hello
    with pytest.raises(InvalidArgument, match="no chunks"):
        wire.read_frame_payload(iter([group_pb2.GroupFrame(chunk=b"x")]), hello, 10)
    with pytest.raises(InvalidArgument, match="starts with a header"):
        wire.read_frame_header(iter([group_pb2.GroupFrame(chunk=b"x")]))
    bad_kind = group_pb2.GroupFrame(header=group_pb2.GroupHeader(kind=7))
    with pytest.raises(InvalidArgument, match="HELLO or DATA"):
        wire.read_frame_header(iter([bad_kind]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"binding": b"short"}, "binding must be 32"),
        ({"incarnation": b"\x00"}, "incarnation must be 16"),
        ({"group": b"\x00" * 15}, "group id must be 16"),
        ({"seq": MAX_MESSAGES}, "message number"),
        ({"dst": 1}, "not from 1 to itself"),
        ({"session": "../etc"}, "session"),
    ],
)
def test_message_headers_are_validated(change: dict[str, object], match: str) -> None:
    fields = {
        "session": S,
        "binding": B,
        "src": 1,
        "dst": 0,
        "incarnation": INC[1],
        "group": GID,
        "seq": 0,
        "length": 1,
    }
    with pytest.raises(InvalidArgument, match=match):
        GroupMessage(**{**fields, **change})  # type: ignore[arg-type]


def test_a_revealed_sum_stream_must_be_a_revealed_one_from_that_party() -> None:
    status = RevealStatus("r", 1, RevealState.REVEALED, cohort_size=3, cohort_digest=b"c" * 32)
    vector = np.array([1, 2**64 - 1], dtype=DTYPE)
    msgs = list(wire.revealed_sum_messages(status, vector, 8))
    got = wire.read_revealed_sum(msgs, party=1, max_length=2)
    np.testing.assert_array_equal(got.vector, vector)
    assert got.cohort_size == 3
    with pytest.raises(ProtocolError, match="names party 1"):
        wire.read_revealed_sum(msgs, party=2, max_length=2)
    with pytest.raises(ProtocolError, match="exceeds"):
        wire.read_revealed_sum(msgs, party=1, max_length=1)
    pending = RevealStatus("r", 1, RevealState.PENDING)
    with pytest.raises(ProtocolError, match="state pending"):
        wire.read_revealed_sum(
            wire.revealed_sum_messages(pending, vector, 8), party=1, max_length=2
        )


# --- the reveal mode in the spec --------------------------------------------------------------


def _spec(**kw: object) -> RoundSpec:
    return RoundSpec("r", (TensorSpec("w", (4,)),), 3, **kw)  # type: ignore[arg-type]


def test_the_reveal_mode_is_covered_by_the_spec_digest() -> None:
    collector, servers = _spec(), _spec(reveal="servers")
    assert collector.reveal is RevealMode.COLLECTOR and servers.reveal is RevealMode.SERVERS
    assert collector.digest != servers.digest
    assert b'"reveal"' not in collector.canonical()  # older digests are unchanged
    assert b'"reveal":"servers"' in servers.canonical()
    assert spec_from_canonical(servers.canonical()) == servers
    assert convert.spec_from_proto(convert.spec_to_proto(servers)) == servers
    assert convert.spec_to_proto(servers).reveal == pb.REVEAL_MODE_SERVERS
    with pytest.raises(InvalidArgument, match="reveal must be one of collector, servers"):
        _spec(reveal="trainers")
    msg = convert.spec_to_proto(servers)
    msg.reveal = 9  # type: ignore[assignment]
    with pytest.raises(InvalidArgument, match="reveal mode 9"):
        convert.spec_from_proto(msg)


def test_a_mailbox_needs_a_full_incarnation() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Mailbox(0, b"\x00")
