"""Upload sessions on real storage: the spool file holds exactly the bytes received,
whatever the chunking, with and without O_DIRECT; refused uploads leave nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mpcagg.mpc.engines import NumpyEngine
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import InvalidArgument
from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.protocol.state import UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.storage import DIRECT_ALIGN, SpoolWriter, Storage
from mpcagg.servers.upload import BufferPool, UploadSession, aligned_empty

LENGTH = 3 * DIRECT_ALIGN // 8 + 5  # not a multiple of the O_DIRECT alignment


@pytest.fixture(params=[True, False], ids=["direct", "page-cache"])
def agg(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Aggregator:
    if not request.param:
        monkeypatch.setattr(SpoolWriter, "direct", property(lambda self: False))
    a = Aggregator(0, 3, Storage(tmp_path), NumpyEngine(), Limits(min_cohort=1))
    a.create_round(RoundSpec("r", (TensorSpec("w", (LENGTH,)),), 3, min_clients=1))
    return a


def _header(client: str, raw: bytes) -> UploadHeader:
    return UploadHeader("r", client, b"i" * 16, 0, "full", LENGTH, hashlib.sha256(raw).digest())


@pytest.mark.parametrize("chunk", [8, 1000, DIRECT_ALIGN, DIRECT_ALIGN + 8, LENGTH * 8])
def test_spool_file_and_accumulator_hold_exactly_the_upload(agg: Aggregator, chunk: int) -> None:
    vec = np.random.default_rng(chunk).integers(0, 2**64 - 1, LENGTH, dtype=np.uint64)
    raw = vec.tobytes()
    session = agg.begin_upload(_header("c", raw))
    assert isinstance(session, UploadSession)
    # The pooled buffer is page-aligned, so O_DIRECT is used wherever the disk allows it.
    assert session._direct == session._writer.direct  # type: ignore[union-attr]
    for start in range(0, len(raw), chunk):
        session.add_chunk(raw[start : start + chunk])
    receipt = session.finish()
    assert not receipt.duplicate
    assert agg.storage.share_path("r", "c", "full").read_bytes() == raw
    assert np.array_equal(agg.engine.to_ring(agg.get("r").accumulator), vec)


def test_wrong_digest_leaves_nothing_and_returns_the_buffer(agg: Aggregator) -> None:
    raw = bytes(LENGTH * 8)
    header = UploadHeader("r", "c", b"i" * 16, 0, "full", LENGTH, b"\x00" * 32)
    session = agg.begin_upload(header)
    assert isinstance(session, UploadSession)
    session.add_chunk(raw)
    with pytest.raises(InvalidArgument, match="digest"):
        session.finish()
    session.abort()
    assert list(agg.storage.spool_dir("r").iterdir()) == []
    assert agg.status("r").received == 0
    again = agg.begin_upload(_header("c", raw))  # the client may upload again
    assert isinstance(again, UploadSession)
    again.add_chunk(raw)
    again.finish()
    assert agg.status("r").received == 1


@pytest.mark.parametrize("length", [1, 1000, 1 << 17])
def test_aligned_buffers_start_on_a_page(length: int) -> None:
    buf = aligned_empty(length)
    assert buf.ctypes.data % DIRECT_ALIGN == 0
    assert buf.shape == (length,) and buf.dtype == np.uint64 and buf.flags.writeable


def test_buffer_pool_reuses_and_caps() -> None:
    pool = BufferPool(keep_bytes=2 * 8 * 16)
    a, b, c = pool.take(16), pool.take(16), pool.take(16)
    for buf in (a, b, c):
        pool.give(buf)
    reused = {id(pool.take(16)), id(pool.take(16))}
    assert reused <= {id(a), id(b), id(c)} and len(reused) == 2
    assert id(pool.take(16)) not in {id(a), id(b), id(c)}  # the third was not kept
