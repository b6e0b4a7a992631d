"""Chunk framing of the v1 streams: an upload out (header, then chunks) and an aggregate
share in (header, then chunks), with the bounds checked on the way."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mpcagg.mpc import SeedShare, Share
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES, RingVector, to_bytes
from mpcagg.protocol.errors import InvalidArgument, ProtocolError
from mpcagg.protocol.spec import SHARING_ID_BYTES
from mpcagg.protocol.state import AggregateShare, RoundStatus, UploadHeader
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.convert import header_from_proto

__all__ = [
    "SHARING_ID_BYTES",
    "PartyUpload",
    "aggregate_messages",
    "read_aggregate_share",
    "read_upload",
    "upload_messages",
]


@dataclass(frozen=True, slots=True)
class PartyUpload:
    """One party's share, ready to be streamed: the share and the SHA-256 it is sent with.

    The digest covers the seed's 32 bytes (seed shares) or the full share's
    little-endian uint64 bytes (full shares). ``repr`` shows neither.
    """

    share: Share
    digest: bytes

    @classmethod
    def from_share(cls, share: Share) -> PartyUpload:
        return cls(share, hashlib.sha256(_payload(share)).digest())

    @property
    def party(self) -> int:
        return self.share.party

    @property
    def length(self) -> int:
        return self.share.length

    @property
    def payload_bytes(self) -> int:
        """Bytes of share material this upload carries (seed or vector)."""
        return len(_payload(self.share))


def _payload(share: Share) -> memoryview:
    if isinstance(share, SeedShare):
        return memoryview(share.seed.expose())
    return to_bytes(share.vector)


def upload_messages(
    upload: PartyUpload,
    *,
    round_id: str,
    client_id: str,
    sharing_id: bytes,
    chunk_bytes: int,
    spec_digest: bytes = b"",
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[pb.UploadMessage]:
    """The client stream of one upload: the header, then (full shares) the vector in chunks.

    Chunks are at most ``chunk_bytes`` (a positive multiple of 8) and concatenate to
    the share's little-endian bytes. ``on_progress(n)`` is called with the payload
    bytes yielded so far. Each call makes a fresh, byte-identical stream, so a retry
    resends exactly the same data.
    """
    if chunk_bytes <= 0 or chunk_bytes % ELEMENT_BYTES:
        raise ValueError(f"chunk_bytes must be a positive multiple of 8, got {chunk_bytes}")
    if len(sharing_id) != SHARING_ID_BYTES:
        raise ValueError(f"sharing_id must be {SHARING_ID_BYTES} bytes, got {len(sharing_id)}")
    share = upload.share
    header = pb.UploadHeader(
        round_id=round_id,
        client_id=client_id,
        sharing_id=sharing_id,
        party=share.party,
        kind=pb.SEED if isinstance(share, SeedShare) else pb.FULL,
        length=share.length,
        payload_digest=upload.digest,
        spec_digest=spec_digest,
    )
    if isinstance(share, SeedShare):
        header.seed = share.seed.expose()
        yield pb.UploadMessage(header=header)
        if on_progress is not None:
            on_progress(len(header.seed))
        return
    yield pb.UploadMessage(header=header)
    data = _payload(share)
    for start in range(0, len(data), chunk_bytes):
        stop = min(start + chunk_bytes, len(data))
        yield pb.UploadMessage(chunk=bytes(data[start:stop]))
        if on_progress is not None:
            on_progress(stop)


def read_aggregate_share(
    messages: Iterable[pb.AggregateShareMessage], *, party: int, max_length: int
) -> AggregateShare:
    """Assemble a streamed aggregate share (one header, then chunks of little-endian uint64).

    Raises :class:`ProtocolError` if the header is missing or repeated, names another
    party, announces more than ``max_length`` elements, or the chunks do not add up to
    exactly ``length`` elements.
    """
    it = iter(messages)
    first = next(it, None)
    if first is None or first.WhichOneof("body") != "header":
        raise ProtocolError(f"party {party}: aggregate share stream did not start with a header")
    h = first.header
    if h.party != party:
        raise ProtocolError(f"party {party}: aggregate share header names party {h.party}")
    if h.length > max_length:
        raise ProtocolError(
            f"party {party}: aggregate share length {h.length} exceeds the limit {max_length}"
        )
    vector = np.empty(h.length, dtype=DTYPE)
    buf = vector.view(np.uint8)
    filled = 0
    for msg in it:
        if msg.WhichOneof("body") != "chunk":
            raise ProtocolError(f"party {party}: a second header in the aggregate share stream")
        n = len(msg.chunk)
        if filled + n > len(buf):
            raise ProtocolError(
                f"party {party}: aggregate share chunks exceed the announced length "
                f"{h.length} ({len(buf)} bytes)"
            )
        buf[filled : filled + n] = np.frombuffer(msg.chunk, dtype=np.uint8)
        filled += n
    if filled != len(buf):
        raise ProtocolError(
            f"party {party}: aggregate share has {filled} bytes, expected {len(buf)} "
            f"({h.length} elements)"
        )
    return AggregateShare(
        party=party,
        round_id=h.round_id,
        cohort_size=h.cohort_size,
        cohort_digest=bytes(h.cohort_digest),
        spec_digest=bytes(h.spec_digest),
        vector=vector,
    )


def aggregate_messages(
    status: RoundStatus, vector: RingVector, chunk_bytes: int
) -> Iterator[pb.AggregateShareMessage]:
    """The server stream of one aggregate share: a header, then the little-endian
    uint64 vector in chunks of at most ``chunk_bytes``."""
    yield pb.AggregateShareMessage(
        header=pb.AggregateShareHeader(
            round_id=status.round_id,
            party=status.party,
            length=len(vector),
            cohort_size=status.cohort_size,
            cohort_digest=status.cohort_digest,
            spec_digest=status.spec_digest,
        )
    )
    raw = to_bytes(vector)
    for start in range(0, len(raw), chunk_bytes):
        yield pb.AggregateShareMessage(chunk=bytes(raw[start : start + chunk_bytes]))


def read_upload(messages: Iterator[pb.UploadMessage]) -> tuple[UploadHeader, Iterator[bytes]]:
    """Split an upload stream into its header and its chunks (read lazily).

    Raises :class:`InvalidArgument` if the stream does not start with a header; the
    chunk iterator raises it for a second header or an empty message.
    """
    first = next(messages, None)
    if first is None or first.WhichOneof("body") != "header":
        raise InvalidArgument("an upload starts with a header message; got a chunk or nothing")

    def chunks() -> Iterator[bytes]:
        for msg in messages:
            body = msg.WhichOneof("body")
            if body == "chunk":
                yield msg.chunk
            elif body == "header":
                raise InvalidArgument("a second header arrived after the upload started")
            else:
                raise InvalidArgument("upload message carries neither a header nor a chunk")

    return header_from_proto(first.header), chunks()
