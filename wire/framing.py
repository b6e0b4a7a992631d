"""Chunk framing of the v1 streams: an upload out (header, then chunks) and an aggregate
share in (header, then chunks), with the bounds checked on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from mpcagg.mpc import Seed, SeedShare, Share
from mpcagg.mpc.digest import PayloadDigest, payload_digest
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES, RingVector, to_bytes
from mpcagg.protocol.errors import InvalidArgument, ProtocolError
from mpcagg.protocol.spec import SHARING_ID_BYTES
from mpcagg.protocol.state import AggregateShare, RoundStatus, ShareKind, UploadHeader
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.convert import header_from_proto

__all__ = [
    "KEEP_BYTES",
    "SHARING_ID_BYTES",
    "PartyUpload",
    "aggregate_messages",
    "chunk_message_bytes",
    "read_aggregate_share",
    "read_upload",
    "read_whole_upload",
    "upload_messages",
    "upload_request",
]


KEEP_BYTES = 64 << 20
"""A streamed full share up to this size keeps the chunks its digest pass computed, so
sending (and each retry) reuses them; a larger one is computed again for each send."""

Pieces = Callable[[int], Iterable[RingVector]]
"""``pieces(chunk_elements)``: the full share's consecutive pieces of that many elements
(the last may be shorter), the same every call; each valid until the next is taken."""


@dataclass(frozen=True, slots=True, eq=False)
class PartyUpload:
    """One party's share, ready to be streamed: its kind, length, payload digest
    (:mod:`mpc.digest` of the seed's 32 bytes or of the full share's little-endian
    bytes) and the payload: the seed, or a source of the full share's chunks, which
    may be computed as they are sent (:meth:`streamed`). ``repr`` shows no payload.
    """

    party: int
    kind: ShareKind
    length: int
    digest: bytes
    seed: Seed | None = field(default=None, repr=False)
    pieces: Pieces | None = field(default=None, repr=False)
    kept: tuple[int, tuple[bytes, ...]] | None = field(default=None, repr=False)
    """``(chunk_bytes, chunks)`` computed by the digest pass, reused when sending."""

    def __repr__(self) -> str:
        payload = "seed=Seed(..)" if self.seed is not None else "chunks=.."
        return (
            f"PartyUpload(party={self.party}, kind={self.kind.name}, length={self.length}, "
            f"{payload})"
        )

    @classmethod
    def from_share(cls, share: Share) -> PartyUpload:
        """The upload of a share held whole (seed or vector)."""
        if isinstance(share, SeedShare):
            return cls.of_seed(share.party, share.length, share.seed)
        vector = np.ascontiguousarray(share.vector, dtype=DTYPE)

        def pieces(chunk_elements: int) -> Iterator[RingVector]:
            for start in range(0, len(vector), chunk_elements):
                yield vector[start : start + chunk_elements]

        return cls(
            share.party, ShareKind.FULL, len(vector), payload_digest(to_bytes(vector)),
            pieces=pieces,
        )  # fmt: skip

    @classmethod
    def of_seed(cls, party: int, length: int, seed: Seed) -> PartyUpload:
        """The upload of a seed share: ``length`` ring elements the party expands from
        ``seed`` itself; the digest covers the seed's 32 bytes (:mod:`mpc.digest`)."""
        return cls(party, ShareKind.SEED, length, payload_digest(seed.expose()), seed=seed)

    @classmethod
    def streamed(
        cls, party: int, length: int, pieces: Pieces, chunk_bytes: int, keep_bytes: int = KEEP_BYTES
    ) -> PartyUpload:
        """A full share computed piece by piece (e.g. :func:`mpc.sharing.full_share_chunks`):
        one pass now for its digest, keeping the chunks if it is at most ``keep_bytes``
        long; otherwise each send computes it again, so it never exists whole."""
        _check_chunk_bytes(chunk_bytes)
        keep = length * ELEMENT_BYTES <= keep_bytes
        digest = PayloadDigest()
        chunks: list[bytes] = []
        for piece in pieces(chunk_bytes // ELEMENT_BYTES):
            raw = to_bytes(piece)
            digest.update(raw)
            if keep:
                chunks.append(bytes(raw))
        return cls(
            party, ShareKind.FULL, length, digest.digest(), pieces=pieces,
            kept=(chunk_bytes, tuple(chunks)) if keep else None,
        )  # fmt: skip

    @property
    def payload_bytes(self) -> int:
        """Bytes of share material this upload carries (seed or vector)."""
        return len(self.seed.expose()) if self.seed is not None else self.length * ELEMENT_BYTES

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The full share's little-endian bytes in chunks of ``chunk_bytes`` (the last may be
        shorter); the same bytes every call."""
        _check_chunk_bytes(chunk_bytes)
        if self.kept is not None and self.kept[0] == chunk_bytes:
            yield from self.kept[1]
            return
        if self.pieces is None:
            return
        for piece in self.pieces(chunk_bytes // ELEMENT_BYTES):
            yield bytes(to_bytes(piece))


def _check_chunk_bytes(chunk_bytes: int) -> None:
    if chunk_bytes <= 0 or chunk_bytes % ELEMENT_BYTES:
        raise ValueError(f"chunk_bytes must be a positive multiple of 8, got {chunk_bytes}")


def upload_messages(
    upload: PartyUpload,
    *,
    round_id: str,
    client_id: str,
    sharing_id: bytes,
    chunk_bytes: int,
    spec_digest: bytes = b"",
    seeds_acknowledged: bool = False,
    on_progress: Callable[[int], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
) -> Iterator[pb.UploadMessage]:
    """The client stream of one upload: the header, then (full shares) the vector in chunks.

    Chunks are at most ``chunk_bytes`` (a positive multiple of 8) and concatenate to
    the share's little-endian bytes. ``seeds_acknowledged`` (full shares only) tells the
    party every seed of the sharing is held, so it may fold the share for good.
    ``on_progress(n)`` is called with the payload bytes yielded so far, ``on_sent(n)``
    with each message's serialized size as it is yielded (upb's ``ByteSize`` serializes
    the message to find it, as long as a copy of the chunk). Each call makes a fresh,
    byte-identical stream, so a retry resends exactly the same data.
    """
    _check_chunk_bytes(chunk_bytes)
    header = _upload_header(
        upload, round_id, client_id, sharing_id, spec_digest, seeds_acknowledged
    )
    first = pb.UploadMessage(header=header)
    if on_sent is not None:
        on_sent(first.ByteSize())
    yield first
    if upload.seed is not None:
        if on_progress is not None:
            on_progress(len(header.seed))
        return
    sent = 0
    for chunk in upload.chunks(chunk_bytes):
        if on_sent is not None:
            on_sent(chunk_message_bytes(len(chunk)))
        yield pb.UploadMessage(chunk=chunk)
        sent += len(chunk)
        if on_progress is not None:
            on_progress(sent)


def upload_request(
    upload: PartyUpload,
    *,
    round_id: str,
    client_id: str,
    sharing_id: bytes,
    chunk_bytes: int,
    spec_digest: bytes = b"",
    seeds_acknowledged: bool = False,
) -> pb.UploadRequest | None:
    """The same upload as :func:`upload_messages` in one message (``UploadWhole``), or
    None if it needs a stream: a full share longer than ``chunk_bytes``."""
    _check_chunk_bytes(chunk_bytes)
    if upload.seed is None and upload.payload_bytes > chunk_bytes:
        return None
    header = _upload_header(
        upload, round_id, client_id, sharing_id, spec_digest, seeds_acknowledged
    )
    return pb.UploadRequest(header=header, data=b"".join(upload.chunks(chunk_bytes)))


def _upload_header(
    upload: PartyUpload,
    round_id: str,
    client_id: str,
    sharing_id: bytes,
    spec_digest: bytes,
    seeds_acknowledged: bool,
) -> pb.UploadHeader:
    if len(sharing_id) != SHARING_ID_BYTES:
        raise ValueError(f"sharing_id must be {SHARING_ID_BYTES} bytes, got {len(sharing_id)}")
    header = pb.UploadHeader(
        round_id=round_id,
        client_id=client_id,
        sharing_id=sharing_id,
        party=upload.party,
        kind=pb.SEED if upload.kind == ShareKind.SEED else pb.FULL,
        length=upload.length,
        payload_digest=upload.digest,
        spec_digest=spec_digest,
    )
    if upload.seed is not None:
        header.seed = upload.seed.expose()
    else:
        header.seeds_acknowledged = seeds_acknowledged
    return header


def chunk_message_bytes(n: int) -> int:
    """Serialized size of an ``UploadMessage``/``AggregateShareMessage`` carrying an
    ``n``-byte chunk (field 2, length-delimited: tag, varint length, bytes)."""
    return 1 + _varint_bytes(n) + n


def _varint_bytes(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


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
        chunk = msg.chunk  # each access copies the bytes out of the message
        n = len(chunk)
        if filled + n > len(buf):
            raise ProtocolError(
                f"party {party}: aggregate share chunks exceed the announced length "
                f"{h.length} ({len(buf)} bytes)"
            )
        buf[filled : filled + n] = np.frombuffer(chunk, dtype=np.uint8)
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


def read_whole_upload(request: pb.UploadRequest) -> tuple[UploadHeader, Iterator[bytes]]:
    """Split a one-message upload into its header and its chunks (its data, if any), as
    :func:`read_upload` splits a stream.

    Raises :class:`InvalidArgument` if the request carries no header.
    """
    if not request.HasField("header"):
        raise InvalidArgument("an upload request carries a header; got none")
    chunks = [request.data] if request.data else []
    return header_from_proto(request.header), iter(chunks)


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
