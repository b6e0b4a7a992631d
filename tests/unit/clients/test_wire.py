"""Upload stream construction and aggregate-share reading."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg.mpc import FullShare, Seed, SeedShare, SharingContext
from mpcagg.mpc.digest import payload_digest
from mpcagg.protocol.errors import ProtocolError
from mpcagg.protocol.state import RoundState
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.convert import status_from_proto
from mpcagg.wire.framing import PartyUpload, read_aggregate_share, upload_messages

SHARING_ID = bytes(range(16))


def vector(length: int) -> np.ndarray:
    return (np.arange(length, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).astype("<u8")


def full_upload(length: int) -> PartyUpload:
    return PartyUpload.from_share(FullShare(party=2, vector=vector(length)))


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 100])
def test_full_share_stream(length: int) -> None:
    upload = full_upload(length)
    progress: list[int] = []
    msgs = list(
        upload_messages(
            upload,
            round_id="r1",
            client_id="c1",
            sharing_id=SHARING_ID,
            chunk_bytes=64,
            spec_digest=b"d" * 32,
            on_progress=progress.append,
        )
    )
    assert msgs[0].WhichOneof("body") == "header"
    h = msgs[0].header
    assert (h.round_id, h.client_id, h.sharing_id, h.party) == ("r1", "c1", SHARING_ID, 2)
    assert h.kind == pb.FULL and h.length == length and not h.seed
    assert h.spec_digest == b"d" * 32
    chunks = [m.chunk for m in msgs[1:]]
    assert all(m.WhichOneof("body") == "chunk" for m in msgs[1:])
    assert all(0 < len(c) <= 64 and len(c) % 8 == 0 for c in chunks)
    data = b"".join(chunks)
    expected = vector(length).tobytes()
    assert data == expected
    assert h.payload_digest == payload_digest(expected) == upload.digest
    assert len(chunks) == -(-len(expected) // 64)
    assert progress == [min(64 * (i + 1), len(expected)) for i in range(len(chunks))]


def test_seed_share_stream_is_one_header() -> None:
    seed = Seed(bytes(range(32)))
    share = SeedShare(party=1, length=1000, seed=seed, context=SharingContext("r1", "c1"))
    upload = PartyUpload.from_share(share)
    msgs = list(
        upload_messages(upload, round_id="r1", client_id="c1", sharing_id=SHARING_ID, chunk_bytes=8)
    )
    assert len(msgs) == 1
    h = msgs[0].header
    assert h.kind == pb.SEED and h.length == 1000 and h.party == 1
    assert h.seed == bytes(range(32))
    assert h.payload_digest == payload_digest(bytes(range(32)))
    assert "Seed(..)" in repr(upload) and bytes(range(32)).hex() not in repr(upload)


def test_streams_are_reproducible() -> None:
    upload = full_upload(50)

    def serialized() -> list[bytes]:
        return [
            m.SerializeToString()
            for m in upload_messages(
                upload, round_id="r", client_id="c", sharing_id=SHARING_ID, chunk_bytes=128
            )
        ]

    assert serialized() == serialized()


def test_bad_stream_parameters() -> None:
    upload = full_upload(3)
    with pytest.raises(ValueError, match="multiple of 8"):
        next(
            upload_messages(
                upload, round_id="r", client_id="c", sharing_id=SHARING_ID, chunk_bytes=12
            )
        )
    with pytest.raises(ValueError, match="16 bytes"):
        next(upload_messages(upload, round_id="r", client_id="c", sharing_id=b"x", chunk_bytes=8))


def aggregate_stream(vec: np.ndarray, party: int = 1, length: int | None = None, chunk: int = 16):
    header = pb.AggregateShareHeader(
        round_id="r1",
        party=party,
        length=len(vec) if length is None else length,
        cohort_size=3,
        cohort_digest=b"c" * 32,
        spec_digest=b"s" * 32,
    )
    yield pb.AggregateShareMessage(header=header)
    data = vec.astype("<u8").tobytes()
    for i in range(0, len(data), chunk):
        yield pb.AggregateShareMessage(chunk=data[i : i + chunk])


def test_read_aggregate_share() -> None:
    vec = np.array([1, 2**64 - 1, 5, 7, 11], dtype=np.uint64)
    share = read_aggregate_share(aggregate_stream(vec), party=1, max_length=10)
    np.testing.assert_array_equal(share.vector, vec)
    assert (share.cohort_size, share.cohort_digest, share.spec_digest) == (3, b"c" * 32, b"s" * 32)


def test_read_aggregate_share_refuses_malformed_streams() -> None:
    vec = np.arange(4, dtype=np.uint64)
    with pytest.raises(ProtocolError, match="names party 2"):
        read_aggregate_share(aggregate_stream(vec, party=2), party=1, max_length=10)
    with pytest.raises(ProtocolError, match="exceeds the limit 3"):
        read_aggregate_share(aggregate_stream(vec), party=1, max_length=3)
    with pytest.raises(ProtocolError, match="has 32 bytes, expected 40"):
        read_aggregate_share(aggregate_stream(vec, length=5), party=1, max_length=10)
    with pytest.raises(ProtocolError, match="exceed the announced length"):
        read_aggregate_share(aggregate_stream(vec, length=3), party=1, max_length=10)
    with pytest.raises(ProtocolError, match="did not start with a header"):
        read_aggregate_share(iter([]), party=1, max_length=10)


def test_round_info_maps_states() -> None:
    info = status_from_proto(
        pb.RoundStatus(round_id="r", state=pb.COMMITTED, party=2, cohort_size=4)
    )
    assert info.state is RoundState.COMMITTED and info.state.final and info.party == 2
    assert status_from_proto(pb.RoundStatus(round_id="r")).state is RoundState.UNKNOWN
