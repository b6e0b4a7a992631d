"""CrypTen compatibility: same encodings, same ring arithmetic, real CrypTen parties.

* ``mpc.FixedPoint(f).encode`` equals ``crypten.encoder.FixedPointEncoder(f).encode``
  bit for bit (int64 view) for float32 and float64 tensors, including signed zeros,
  tiny values, negative fractions and values at the round's bound.
* Our float64 decode agrees with CrypTen's float32 decode wherever CrypTen's decode is
  right, and is exact on sums; CrypTen 0.4.1's decode is off by one for some negative
  values (pinned below), which is why the collector decodes with :mod:`mpc`.
* The numpy and CrypTen engines agree bit for bit: test_crypten_engines.py.
* Three real CrypTen processes (gloo over loopback) reveal shares made by ``mpc.share``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import mpcagg.mpc as mpc
from mpcagg.mpc import crypten_shim

pytestmark = pytest.mark.crypten

REPO_ROOT = Path(__file__).resolve().parents[3]
PARTY_SCRIPT = Path(__file__).with_name("_crypten_party.py")
PRECISIONS = (0, 8, 16, 24)
FLOAT_DTYPES = (np.float32, np.float64)
PARTY_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crypten() -> ModuleType:
    return crypten_shim.load()


# --------------------------------------------------------------------------- helpers


def crypten_encode(crypten: ModuleType, x: np.ndarray, f: int) -> np.ndarray:
    encoded = crypten.encoder.FixedPointEncoder(f).encode(torch.from_numpy(x))
    assert encoded.dtype == torch.int64
    return encoded.numpy().reshape(-1)


def crypten_decode(crypten: ModuleType, signed: np.ndarray, f: int) -> np.ndarray:
    decoded = crypten.encoder.FixedPointEncoder(f).decode(torch.from_numpy(signed.copy()))
    return decoded.numpy()


def ours_encode(x: np.ndarray, f: int, bound: float | None = None) -> np.ndarray:
    return mpc.FixedPoint(f).encode(x, bound=bound).view(np.int64)


def crypten_decode_is_right(signed: np.ndarray, f: int) -> np.ndarray:
    """Where CrypTen 0.4.1's decode is correct: it floor-divides a negative ``t`` by
    ``2^f - 1`` instead of ``2^f``; with ``-t = q·2^f + r`` that gives the right integer
    part only when ``q + r <= 2^f - 1``."""
    scale = 1 << f
    q, r = np.divmod(np.abs(signed), scale)
    return (signed >= 0) | (q + r <= scale - 1) | (scale == 1)


def random_values(rng: np.random.Generator, f: int, size: int = 4000) -> np.ndarray:
    """Normal, uniform and log-uniform values of both signs, all encodable at ``f`` bits."""
    reach = min(mpc.max_bound(3, f), 1e12)
    log_mag = rng.uniform(-30, np.log10(reach), size)
    return np.concatenate(
        [
            rng.standard_normal(size),
            rng.standard_normal(size) * 1e3,
            rng.uniform(-1.0, 1.0, size),
            rng.uniform(-reach, reach, size),
            np.copysign(10.0**log_mag, rng.uniform(-1, 1, size)),
        ]
    )


def edge_values(f: int) -> list[float]:
    ulp = 2.0**-f
    return [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        2.0**-17,
        -(2.0**-17),
        -0.3,
        -1.5,
        -(2.0**-16),
        ulp,
        -ulp,
        ulp / 2,
        -ulp / 2,
        ulp * 1.5,
        -ulp * 1.5,
        1 - ulp / 4,
        -1 + ulp / 4,
        0.1,
        -0.1,
        12345.678,
        -12345.678,
    ]


def largest_at_most(value: float, dtype: type[np.floating[Any]]) -> Any:
    """The largest ``dtype`` number ``<= value`` (``value`` > 0)."""
    cast = dtype(value)
    return np.nextafter(cast, dtype(0)) if float(cast) > value else cast


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("f", PRECISIONS)
def test_encode_matches_crypten_on_random_values(crypten: ModuleType, dtype: type, f: int) -> None:
    rng = np.random.default_rng(1000 + f)
    x = random_values(rng, f).astype(dtype)
    ours = ours_encode(x, f)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, crypten_encode(crypten, x, f))
    # Exactly the values at least one unit in the last place encode to non-zero.
    assert np.count_nonzero(ours) == np.count_nonzero(np.abs(x.astype(np.float64)) >= 2.0**-f)
    assert np.count_nonzero(ours) > 0.5 * x.size


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("f", PRECISIONS)
def test_encode_matches_crypten_on_edge_values(crypten: ModuleType, dtype: type, f: int) -> None:
    x = np.array(edge_values(f), dtype=dtype)
    ours = ours_encode(x, f)
    np.testing.assert_array_equal(ours, crypten_encode(crypten, x, f))
    # Spot-check the contract itself: truncation toward zero, signed zero encodes to 0.
    assert ours[0] == ours[1] == 0
    if f == 16:
        assert list(ours[4:9]) == [0, 0, int(-0.3 * 2**16), -(3 << 15), -1]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("f", PRECISIONS)
@pytest.mark.parametrize("max_clients", [1, 3, 1000])
def test_encode_matches_crypten_at_the_bound(
    crypten: ModuleType, dtype: type, f: int, max_clients: int
) -> None:
    bound = mpc.max_bound(max_clients, f)
    at = largest_at_most(bound, dtype)
    inside = np.nextafter(at, dtype(0))
    x = np.array([at, -at, inside, -inside], dtype=dtype)
    ours = ours_encode(x, f, bound=bound)
    np.testing.assert_array_equal(ours, crypten_encode(crypten, x, f))
    limit = int(mpc.FixedPoint(f).encoded_bound(bound))
    assert abs(int(ours[0])) <= limit
    if dtype is np.float64:  # bound itself is a float64: it encodes to exactly the limit
        assert int(ours[0]) == limit == -int(ours[1])
    beyond = np.nextafter(dtype(bound), dtype(np.inf))
    with pytest.raises(mpc.EncodingError, match=r"index 1 .* beyond the round's bound"):
        mpc.FixedPoint(f).encode(np.array([0.0, beyond], dtype=dtype), bound=bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_encode_accepts_torch_tensors_like_crypten(crypten: ModuleType, dtype: torch.dtype) -> None:
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(7), dtype=dtype) * 100
    ours = mpc.FixedPoint(16).encode(x).view(np.int64)
    theirs = crypten.encoder.FixedPointEncoder(16).encode(x).reshape(-1).numpy()
    np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("f", PRECISIONS)
def test_decode_agrees_with_crypten(crypten: ModuleType, dtype: type, f: int) -> None:
    rng = np.random.default_rng(2000 + f)
    x = np.concatenate([random_values(rng, f), edge_values(f)]).astype(dtype)
    signed = ours_encode(x, f)
    ours = mpc.FixedPoint(f).decode(signed.view(mpc.ring.DTYPE))
    assert ours.dtype == np.float64
    # Exact: every encoding here is below 2^53 in magnitude.
    assert all(
        float(o) == float(Fraction(int(t), 1 << f)) for o, t in zip(ours, signed, strict=True)
    )
    theirs = crypten_decode(crypten, signed, f)
    right = crypten_decode_is_right(signed, f)
    assert right.mean() > 0.75  # most values are compared
    np.testing.assert_allclose(
        theirs[right].astype(np.float64), ours[right].astype(np.float32), rtol=2**-22, atol=0
    )


def test_crypten_decode_is_off_by_one_for_some_negative_values(crypten: ModuleType) -> None:
    """CrypTen 0.4.1 divides negatives by 2^f − 1; ours is exact (why the collector uses ours)."""
    signed = ours_encode(np.array([-1000.9999, -0.9999, 1000.9999]), 16)
    theirs = crypten_decode(crypten, signed, 16).astype(np.float64)
    ours = mpc.FixedPoint(16).decode(signed.view(mpc.ring.DTYPE))
    assert theirs[0] == pytest.approx(ours[0] - 1.0, abs=1e-3)
    np.testing.assert_allclose(theirs[1:], ours[1:], rtol=2**-22)


@pytest.mark.parametrize("f", [8, 16, 24])
def test_decode_of_a_sum_is_exact_float64(f: int) -> None:
    fp = mpc.FixedPoint(f)
    rng = np.random.default_rng(3000 + f)
    k, d = 7, 2000
    bound = mpc.max_bound(k, f)
    inputs = rng.uniform(-1, 1, (k, d)) * np.array([[1e-3], [1.0], [1e3], [1e6], [bound]] * 2)[:k]
    inputs[-1, :2] = [bound, -bound]
    total = mpc.ring.zeros(d)
    exact = [0] * d
    for row in inputs:
        enc = fp.encode(row, bound=bound)
        mpc.ring.add_(total, enc)
        exact = [a + int(b) for a, b in zip(exact, enc.view(np.int64), strict=True)]
    decoded = fp.decode(total)
    assert decoded.dtype == np.float64
    expected = np.array([float(Fraction(s, 1 << f)) for s in exact])
    np.testing.assert_array_equal(decoded, expected)
    assert np.abs(decoded - inputs.sum(axis=0)).max() <= k * 2.0**-f * (1 + np.abs(inputs).max())


# --------------------------------------------------------------------------- real parties


def _seed(*parts: object) -> mpc.Seed:
    return mpc.Seed(hashlib.sha256(repr(parts).encode()).digest())


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "<no output>"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def test_three_real_crypten_parties_reveal_mpc_shares(crypten: ModuleType, tmp_path: Path) -> None:
    f, n = 16, 3
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal(1000) * 100, edge_values(f), [-1000.9999, 1e6]])
    encoded = mpc.FixedPoint(f).encode(x)
    ctx = mpc.SharingContext(round_id="round-crypten", client_id="client-a")
    seeds = [_seed("three-party", i) for i in range(n - 1)]
    shares = mpc.share(encoded, n, mpc.full_party_for(ctx.client_id, n), seeds, ctx)
    for p, s in enumerate(shares):
        assert s.party == p
        np.save(tmp_path / f"share{p}.npy", s.expand().view(np.int64))
        assert not np.array_equal(s.expand(), encoded)  # no party holds the input

    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for rank in range(n):
            env = {
                **os.environ,
                "WORLD_SIZE": str(n),
                "RANK": str(rank),
                "RENDEZVOUS": f"file://{tmp_path / 'rdv'}",
                "DISTRIBUTED_BACKEND": "gloo",
                "MASTER_ADDR": "127.0.0.1",
                "GLOO_SOCKET_IFNAME": "lo",
                "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                ),
            }
            log = tmp_path / f"party{rank}.log"
            logs.append(log)
            with log.open("wb") as out:
                args = [str(PARTY_SCRIPT), str(tmp_path / f"share{rank}.npy"), str(tmp_path), "16"]
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        cwd=REPO_ROOT,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + PARTY_TIMEOUT_S
        for rank, proc in enumerate(procs):
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"party {rank} did not finish in {PARTY_TIMEOUT_S} s:\n{_tail(logs[rank])}"
                )
            assert code == 0, f"party {rank} exited with {code}:\n{_tail(logs[rank])}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    signed = encoded.view(np.int64)
    expected_plain = crypten_decode(crypten, signed, f)
    assert expected_plain.dtype == np.float32
    for rank in range(n):
        revealed = np.load(tmp_path / f"revealed{rank}.npy")
        np.testing.assert_array_equal(revealed, signed)
        plain = np.load(tmp_path / f"plain{rank}.npy")
        assert plain.dtype == np.float32
        np.testing.assert_array_equal(plain, expected_plain)
    # And it is the input, as far as float32 and 16 fractional bits go.
    ok = crypten_decode_is_right(signed, f)
    np.testing.assert_allclose(expected_plain[ok], x[ok], rtol=2**-20, atol=2.0**-f)
