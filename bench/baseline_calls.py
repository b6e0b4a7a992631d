"""The baseline's client calls: upload a vector, close the round, fetch the sum.

Each takes a channel from :meth:`bench.baseline_process.BaselineServer.channel` and
calls :data:`bench.baseline_service.SERVICE`, chunked as the real client chunks a full
share.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import numpy.typing as npt

from bench.baseline_service import SERVICE
from mpcagg.mpc.ring import DTYPE
from mpcagg.v1 import aggregation_pb2 as pb
from mpcagg.wire.framing import chunk_message_bytes


def upload_stream(
    round_id: str, client_id: str, vector: np.ndarray, chunk_bytes: int
) -> Iterator[pb.UploadMessage]:
    """The baseline upload: a FULL header, then the vector's bytes in ``chunk_bytes`` chunks
    (as :func:`clients.wire.upload_messages` chunks a full share)."""
    yield pb.UploadMessage(
        header=pb.UploadHeader(
            round_id=round_id, client_id=client_id, party=0, kind=pb.FULL, length=len(vector)
        )
    )
    data = vector.data.cast("B")
    for start in range(0, len(data), chunk_bytes):
        yield pb.UploadMessage(chunk=bytes(data[start : start + chunk_bytes]))


def upload(
    channel: grpc.Channel,
    round_id: str,
    client_id: str,
    vector: np.ndarray,
    chunk_bytes: int,
    timeout: float = 120.0,
) -> int:
    """Upload one trainer's vector (uint64 fixed point, or float32 as it is) in one message
    if it fits in one chunk, else streamed; returns the serialized bytes sent."""
    raw = vector.nbytes
    header = pb.UploadMessage(
        header=pb.UploadHeader(
            round_id=round_id, client_id=client_id, party=0, kind=pb.FULL, length=len(vector)
        )
    )
    # Counted from the sizes: upb's ByteSize serializes a message to measure it.
    sent = header.ByteSize() + sum(
        chunk_message_bytes(min(chunk_bytes, raw - start)) for start in range(0, raw, chunk_bytes)
    )

    suffix = "Float32" if vector.dtype == np.float32 else ""
    if raw <= chunk_bytes:  # one message, as the real client sends a share of one chunk
        request = pb.UploadRequest(header=header.header, data=vector.data.cast("B").tobytes())
        whole = channel.unary_unary(
            f"/{SERVICE}/UploadWhole{suffix}",
            request_serializer=pb.UploadRequest.SerializeToString,
            response_deserializer=pb.UploadReceipt.FromString,
        )
        whole(request, timeout=timeout)
        return request.ByteSize()
    call = channel.stream_unary(
        f"/{SERVICE}/Upload{suffix}",
        request_serializer=pb.UploadMessage.SerializeToString,
        response_deserializer=pb.UploadReceipt.FromString,
    )
    call(upload_stream(round_id, client_id, vector, chunk_bytes), timeout=timeout)
    return sent


def close(channel: grpc.Channel, round_id: str) -> int:
    """Close the round; returns how many uploads the server summed."""
    call = channel.unary_unary(
        f"/{SERVICE}/Close",
        request_serializer=pb.GetRoundRequest.SerializeToString,
        response_deserializer=pb.RoundStatus.FromString,
    )
    reply = call(pb.GetRoundRequest(round_id=round_id), timeout=60)
    return int(reply.received)


def fetch_sum(channel: grpc.Channel, round_id: str, dtype: npt.DTypeLike = DTYPE) -> np.ndarray:
    """The round's sum (ring elements, or float32 for an ``UploadFloat32`` round); the
    round is forgotten by the server."""
    call = channel.unary_stream(
        f"/{SERVICE}/GetSum",
        request_serializer=pb.GetAggregateShareRequest.SerializeToString,
        response_deserializer=pb.AggregateShareMessage.FromString,
    )
    stream = call(pb.GetAggregateShareRequest(round_id=round_id), timeout=120)
    out: np.ndarray | None = None
    offset = 0
    for msg in stream:
        if msg.WhichOneof("body") == "header":
            out = np.empty(msg.header.length, dtype=dtype)
        else:
            assert out is not None, "the sum stream starts with a header"
            raw = out.data.cast("B")
            chunk = msg.chunk  # each access copies the bytes out of the message
            raw[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
    assert out is not None and offset == out.nbytes, "incomplete sum stream"
    return out
