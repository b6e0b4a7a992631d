"""Micro benchmarks of the share arithmetic, d = 10^6 float32 inputs, n = 3 parties.

    pytest bench/test_micro.py --benchmark-only -q

Groups: ``encode``, ``prg``, ``share`` (client side), ``accumulate-full`` and
``accumulate-seeded`` (server side, numpy and CrypTen engines side by side), and
``reference`` (a bare in-place uint64 add and bare AES-128-CTR, the ceilings the
fast path is measured against). Aims: accumulate full >= 6 GB/s, seeded >= 3 GB/s,
client share (n = 3) >= 150 M elements/s.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.ring import DTYPE, ELEMENT_BYTES

D = 10**6
N_PARTIES = 3
ENGINES = ("numpy", "crypten")
Measure = Callable[..., Any]


def _seed(label: str) -> mpc.Seed:
    return mpc.Seed(hashlib.sha256(label.encode()).digest())


@pytest.fixture(scope="module")
def values() -> np.ndarray:
    """Benchmark data (not secret): d float32 model-update-like values."""
    return (np.random.default_rng(0).standard_normal(D) * 0.01).astype(np.float32)


@pytest.fixture(scope="module")
def encoded(values: np.ndarray) -> np.ndarray:
    return mpc.FixedPoint(16).encode(values)


@pytest.fixture(scope="module")
def context() -> mpc.SharingContext:
    return mpc.SharingContext(round_id="bench-round", client_id="bench-client")


@pytest.fixture(scope="module")
def shares(encoded: np.ndarray, context: mpc.SharingContext) -> list[mpc.Share]:
    seeds = [_seed(f"bench-{i}") for i in range(N_PARTIES - 1)]
    return mpc.share(encoded, N_PARTIES, 0, seeds, context)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> mpc.Engine:
    if request.param == "crypten":
        request.getfixturevalue("crypten_single_party")
    return mpc.get_engine(request.param)


# --------------------------------------------------------------------------- client side


@pytest.mark.benchmark(group="encode")
def test_encode(measure: Measure, values: np.ndarray) -> None:
    fp = mpc.FixedPoint(16)
    out = measure(fp.encode, values, 10.0, elements=D)
    assert len(out) == D


@pytest.mark.benchmark(group="prg")
def test_prg_expand_into(measure: Measure, context: mpc.SharingContext) -> None:
    out = np.empty(D, dtype=DTYPE)
    measure(prg.expand_into, _seed("prg"), context.prg_context(1), out, elements=D)


@pytest.mark.benchmark(group="prg")
def test_prg_expand(measure: Measure, context: mpc.SharingContext) -> None:
    out = measure(prg.expand, _seed("prg"), context.prg_context(1), D, elements=D)
    assert len(out) == D


@pytest.mark.benchmark(group="share")
def test_client_share(measure: Measure, encoded: np.ndarray, context: mpc.SharingContext) -> None:
    seeds = [_seed(f"share-{i}") for i in range(N_PARTIES - 1)]
    out = measure(mpc.share, encoded, N_PARTIES, 0, seeds, context, elements=D)
    assert len(out) == N_PARTIES


# --------------------------------------------------------------------------- server side


@pytest.mark.benchmark(group="accumulate-full")
def test_accumulate_full(measure: Measure, engine: mpc.Engine, shares: list[mpc.Share]) -> None:
    full = shares[0]
    assert isinstance(full, mpc.FullShare)
    acc = engine.zeros(D)
    measure(engine.accumulate, acc, full, elements=D)


@pytest.mark.benchmark(group="accumulate-seeded")
def test_accumulate_seeded(measure: Measure, engine: mpc.Engine, shares: list[mpc.Share]) -> None:
    seeded = shares[1]
    assert isinstance(seeded, mpc.SeedShare)
    acc = engine.zeros(D)
    measure(engine.accumulate, acc, seeded, elements=D)


# --------------------------------------------------------------------------- ceilings


@pytest.mark.benchmark(group="reference")
def test_reference_inplace_uint64_add(measure: Measure, shares: list[mpc.Share]) -> None:
    acc = np.zeros(D, dtype=DTYPE)
    vec = shares[0].expand()
    measure(np.add, acc, vec, acc, elements=D)


@pytest.mark.benchmark(group="reference")
def test_reference_aes128_ctr(measure: Measure) -> None:
    zeros = bytes(D * ELEMENT_BYTES)
    out = bytearray(D * ELEMENT_BYTES + 15)
    encryptor = Cipher(algorithms.AES(bytes(16)), modes.CTR(bytes(16))).encryptor()
    measure(encryptor.update_into, zeros, out, elements=D)
