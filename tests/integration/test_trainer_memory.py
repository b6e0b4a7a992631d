"""A trainer's memory with a large model, measured in the trainer's own OS process
against server processes: a streamed update (the default above
``SecureAggregator.stream_bytes``) grows the process by a few chunks, not by the 8·d
bytes of the encoded update; the same update held whole grows it by more than 8·d
(the control, so the measurement can tell the two apart)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Rig, running_cluster

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc"),
]

D = 12_000_000
"""Parameters: 48 MB float32, 96 MB encoded, above the 64 MB a full share may be kept."""

TRAINER = r"""
import re, sys
import numpy as np
from mpcagg import SecureAggregator

def peak():  # this process's peak RSS (ru_maxrss would count the forking parent's too)
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024

cluster, cert, key, round_id, streamed, d = sys.argv[1:7]
x = np.random.default_rng(0).standard_normal(int(d), dtype=np.float32)
x *= np.float32(0.01)  # in place: the process's peak so far is the model, not two copies
with SecureAggregator(cluster, "big", cert=cert, key=key, progress=False) as t:
    spec = t.join(round_id)
    t.stream_bytes = 0 if streamed == "yes" else 1 << 62
    before = peak()
    receipt = t.submit(spec, {"w": x})
    after = peak()
print(receipt.complete, after - before)
"""


def _growth(rig: Rig, round_id: str, streamed: bool) -> int:
    files = rig.cluster.client_files("big")
    assert files is not None
    args = [str(rig.cluster.cluster_file), str(files.cert), str(files.key)]
    result = subprocess.run(
        [sys.executable, "-c", TRAINER, *args, round_id, "yes" if streamed else "no", str(D)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    complete, growth = result.stdout.split()
    assert complete == "True"
    return int(growth)


def test_a_streamed_update_costs_a_few_chunks_and_a_held_one_more_than_8d(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "c", n_parties=3) as cluster, Rig(cluster) as rig:
        shape = (("w", (D,)),)
        rig.open("streamed", shape, min_clients=1)
        rig.open("held", shape, min_clients=1)
        streamed = _growth(rig, "streamed", streamed=True)
        held = _growth(rig, "held", streamed=False)
        assert rig.close("streamed").cohort_size == 1
    mib, few_chunks = 2**20, 16 * cluster.config.limits.chunk_bytes  # 32 MiB, 8d = 92 MiB
    assert held > 8 * D, f"held whole: +{held / mib:.0f} MiB (the control)"
    assert streamed < few_chunks, f"streamed: +{streamed / mib:.0f} MiB for 8d = {8 * D / mib:.0f}"
