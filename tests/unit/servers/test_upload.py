"""Upload sessions on real storage: what a party folds or keeps is exactly the bytes
received, whatever the chunking and whether they were staged in memory or in the
staging file; refused uploads leave nothing, in memory or on disk."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from mpcagg.mpc.digest import payload_digest
from mpcagg.mpc.engines import NumpyEngine
from mpcagg.protocol.cluster import Limits
from mpcagg.protocol.errors import Busy, InvalidArgument
from mpcagg.protocol.spec import RoundSpec, TensorSpec
from mpcagg.protocol.state import ShareKind, UploadHeader
from mpcagg.servers.aggregator import Aggregator
from mpcagg.servers.spool import DIRECT_ALIGN, aligned_empty, read_vector, write_vector
from mpcagg.servers.storage import Storage
from mpcagg.servers.upload import StagingBudget, UploadSession

LENGTH = 3 * DIRECT_ALIGN // 8 + 5  # not a multiple of the O_DIRECT alignment
RAW = np.random.default_rng(1).integers(0, 2**64 - 1, LENGTH, dtype=np.uint64)


@pytest.fixture(params=["memory", "file"])
def agg(request: pytest.FixtureRequest, tmp_path: Path) -> Aggregator:
    """An aggregator whose staging keeps uploads in memory, or (budget 0) in their file."""
    a = Aggregator(0, 3, Storage(tmp_path), NumpyEngine(), Limits(min_cohort=1))
    if request.param == "file":
        a.staging = StagingBudget(0)
    a.create_round(RoundSpec("r", (TensorSpec("w", (LENGTH,)),), 3, min_clients=1))
    return a


def _header(client: str, raw: bytes, *, fold: bool) -> UploadHeader:
    return UploadHeader(
        "r", client, b"i" * 16, 0, ShareKind.FULL, LENGTH, payload_digest(raw),
        seeds_acknowledged=fold,
    )  # fmt: skip


def _send(agg: Aggregator, client: str, raw: bytes, chunk: int, *, fold: bool) -> None:
    session = agg.begin_upload(_header(client, raw, fold=fold))
    assert isinstance(session, UploadSession)
    for start in range(0, len(raw), chunk):
        session.add_chunk(raw[start : start + chunk])
    assert not session.finish().duplicate


def _files(agg: Aggregator) -> list[str]:
    return sorted(p.name for p in agg.storage.spool_dir("r").iterdir())


@pytest.mark.parametrize("chunk", [8, 13, 1000, DIRECT_ALIGN + 8, LENGTH * 8])
def test_a_share_kept_apart_is_on_disk_byte_for_byte(agg: Aggregator, chunk: int) -> None:
    raw = RAW.tobytes()
    _send(agg, "c", raw, chunk, fold=False)
    assert agg.storage.share_path("r", "c", ShareKind.FULL).read_bytes() == raw
    assert _files(agg) == ["c.full"]  # no staging file left, no checkpoint
    assert agg.staging.in_use == 0


@pytest.mark.parametrize("chunk", [8, 13, 1000, DIRECT_ALIGN + 8, LENGTH * 8])
def test_a_folded_share_is_in_the_accumulator_and_its_checkpoint_only(
    agg: Aggregator, chunk: int
) -> None:
    raw = RAW.tobytes()
    _send(agg, "c", raw, chunk, fold=True)
    _send(agg, "d", raw, chunk, fold=True)
    ingest = agg.get("r").ingest
    assert ingest is not None
    assert np.array_equal(ingest.vector, RAW * np.uint64(2))
    assert _files(agg) == ["acc-0.bin", "acc-1.bin"]  # the shares are nowhere else on disk
    current = agg.storage.checkpoint("r")
    assert current is not None and current.generation == 2
    on_disk = read_vector(agg.storage.checkpoint_path("r", current.slot), LENGTH)
    assert np.array_equal(on_disk, ingest.vector)
    assert agg.staging.in_use == 0


def test_an_upload_in_progress_is_staged_in_its_file_beyond_the_budget(tmp_path: Path) -> None:
    a = Aggregator(0, 3, Storage(tmp_path), NumpyEngine(), Limits(min_cohort=1))
    a.staging = StagingBudget(1000)  # uploads may keep 1000 bytes in memory
    a.create_round(RoundSpec("r", (TensorSpec("w", (LENGTH,)),), 3, min_clients=1))
    raw = RAW.tobytes()
    session = a.begin_upload(_header("c", raw, fold=True))
    assert isinstance(session, UploadSession)
    for start in range(0, 3000, 1000):
        session.add_chunk(raw[start : start + 1000])
    (staging,) = a.storage.spool_dir("r").glob("*.tmp")
    assert staging.read_bytes()[1000:3000] == raw[1000:3000]  # the first 1000 in memory
    assert a.staging.in_use == 1000
    session.add_chunk(raw[3000:])
    session.finish()
    assert np.array_equal(a.get("r").ingest.vector, RAW)  # type: ignore[union-attr]
    assert not staging.exists() and a.staging.in_use == 0


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "kept-apart"])
def test_wrong_digest_leaves_nothing_and_frees_the_budget(agg: Aggregator, fold: bool) -> None:
    raw = RAW.tobytes()
    header = UploadHeader(
        "r", "c", b"i" * 16, 0, ShareKind.FULL, LENGTH, b"\x00" * 32, seeds_acknowledged=fold
    )
    session = agg.begin_upload(header)
    assert isinstance(session, UploadSession)
    session.add_chunk(raw)
    with pytest.raises(InvalidArgument, match="digest"):
        session.finish()
    session.abort()
    assert _files(agg) == []
    assert agg.status("r").received == 0 and agg.staging.in_use == 0
    assert not agg.get("r").ingest.vector.any()  # type: ignore[union-attr]
    _send(agg, "c", raw, len(raw), fold=fold)  # the client may upload again
    assert agg.status("r").received == 1


def test_an_aborted_upload_leaves_nothing(agg: Aggregator) -> None:
    raw = RAW.tobytes()
    session = agg.begin_upload(_header("c", raw, fold=True))
    assert isinstance(session, UploadSession)
    session.add_chunk(raw[:800])
    session.abort()  # the client went away
    assert _files(agg) == [] and agg.staging.in_use == 0
    assert not agg.get("r").ingest.vector.any()  # type: ignore[union-attr]


@pytest.mark.parametrize("length", [1, 1000, 1 << 17])
def test_vectors_round_trip_through_a_checkpoint_file(tmp_path: Path, length: int) -> None:
    vec = aligned_empty(length)
    assert vec.ctypes.data % DIRECT_ALIGN == 0
    vec[:] = np.arange(length, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    path = tmp_path / "acc-0.bin"
    write_vector(path, vec)
    write_vector(path, vec[::-1].copy())  # overwritten in place: same name, same size
    assert np.array_equal(read_vector(path, length), vec[::-1])
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="expected"):
        read_vector(path, length + 1)


def test_uploads_wait_for_staging_memory_and_a_huge_one_takes_all_of_it() -> None:
    budget = StagingBudget(100, wait_s=0.2)
    assert budget.reserve(60) == 60
    with pytest.raises(Busy, match="retry"):
        budget.reserve(60)  # waited 0.2 s: refused, retryable
    done: list[int] = []
    waiter = threading.Thread(target=lambda: done.append(budget.reserve(1000)))
    waiter.start()  # larger than the whole budget: it waits for all of it
    threading.Event().wait(0.05)
    assert not done
    budget.release(60)
    waiter.join(5)
    assert done == [100] and budget.in_use == 100


_CHURN = """
import sys, threading, psutil
from mpcagg.servers.upload import unmap_large_allocations
if sys.argv[1] == "tuned":
    assert unmap_large_allocations()
keep = []
def work():
    for k in range(10):  # what staging does: 2 MiB chunks held, then freed, by many threads
        held = [b"x" * ((2 << 20) + k) for _ in range(20)]
        keep.append(b"y" * 1000)
        del held
threads = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(psutil.Process().memory_info().rss)
"""


def test_freed_chunks_go_back_to_the_system() -> None:
    import subprocess
    import sys

    def rss(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert rss("tuned") < rss("default") - 30e6
