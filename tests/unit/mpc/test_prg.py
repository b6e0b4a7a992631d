"""The PRG (mpc.prg): determinism, domain separation, chunking, fused add."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.prg import CHUNK_ELEMENTS, PrgContext, add_stream_into, expand, expand_into
from mpcagg.mpc.seed import Seed

SEED = Seed(bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
CTX = PrgContext(round_id="round-7", client_id="client-42", party=1)
BOUNDARY_LENGTHS = [0, 1, CHUNK_ELEMENTS - 1, CHUNK_ELEMENTS, CHUNK_ELEMENTS + 1]


def reference_expand(seed: bytes, ctx: PrgContext, length: int) -> list[int]:
    """The construction of mpc.prg's docstring, written independently of mpc.prg.

    HKDF-SHA256 (RFC 5869) with the stdlib's HMAC, then AES-128-CTR from
    AES-ECB of a big-endian 128-bit counter.
    """

    def lp(s: str) -> bytes:
        raw = s.encode("utf-8")
        return struct.pack(">I", len(raw)) + raw

    info = (
        b"mpcagg/prg"
        + struct.pack(">H", ctx.version)
        + lp(ctx.usage)
        + lp(ctx.round_id)
        + lp(ctx.client_id)
        + struct.pack(">H", ctx.party)
    )
    prk = hmac.new(bytes(32), seed, hashlib.sha256).digest()
    okm = hmac.new(prk, info + b"\x01", hashlib.sha256).digest()
    key, counter = okm[:16], int.from_bytes(okm[16:], "big")
    nblocks = (length * 8 + 15) // 16
    blocks = b"".join(((counter + i) % 2**128).to_bytes(16, "big") for i in range(nblocks))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = ecb.update(blocks) + ecb.finalize()
    return [int.from_bytes(stream[8 * i : 8 * i + 8], "little") for i in range(length)]


def test_matches_independent_reference_construction() -> None:
    for ctx in [CTX, PrgContext("", "", 0), PrgContext("räund", "клиент", 65535, usage="x")]:
        assert expand(SEED, ctx, 37).tolist() == reference_expand(SEED.expose(), ctx, 37)


def test_info_is_length_prefixed() -> None:
    info = PrgContext(round_id="ab", client_id="c", party=3).info()
    assert info == (
        b"mpcagg/prg\x00\x01"
        + b"\x00\x00\x00\x05share"
        + b"\x00\x00\x00\x02ab"
        + b"\x00\x00\x00\x01c"
        + b"\x00\x03"
    )
    assert info != PrgContext(round_id="a", client_id="bc", party=3).info()


def test_expand_is_deterministic() -> None:
    a = expand(SEED, CTX, 100)
    b = expand(Seed(SEED.expose()), dataclasses.replace(CTX), 100)
    assert a.dtype == np.dtype("<u8")
    np.testing.assert_array_equal(a, b)


def test_output_is_not_trivial() -> None:
    out = expand(SEED, CTX, 4096)
    assert len(np.unique(out)) == 4096
    # Every bit position is set in roughly half of the elements (|z| < 10).
    bits = (out[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    ones = bits.sum(axis=0).astype(np.int64)
    assert np.all(np.abs(ones - 2048) < 10 * 32)


@pytest.mark.parametrize(
    "change",
    [
        {"version": 2},
        {"usage": "mask"},
        {"round_id": "round-8"},
        {"client_id": "client-43"},
        {"party": 2},
        {"round_id": "round-", "client_id": "7client-42"},
    ],
    ids=lambda c: ",".join(c),
)
def test_changing_any_context_field_changes_the_output(change: dict[str, object]) -> None:
    other = dataclasses.replace(CTX, **change)  # type: ignore[arg-type]
    assert other.info() != CTX.info()
    a, b = expand(SEED, CTX, 64), expand(SEED, other, 64)
    # Independent streams: no element in common, not just "not equal".
    assert not np.intersect1d(a, b).size


def test_changing_the_seed_changes_the_output() -> None:
    other = Seed(bytes(31) + b"\x01")
    assert not np.intersect1d(expand(SEED, CTX, 64), expand(other, CTX, 64)).size


def test_all_context_variants_are_pairwise_distinct() -> None:
    variants = [
        CTX,
        dataclasses.replace(CTX, version=0),
        dataclasses.replace(CTX, usage=""),
        dataclasses.replace(CTX, round_id=""),
        dataclasses.replace(CTX, client_id=""),
        dataclasses.replace(CTX, party=0),
        dataclasses.replace(CTX, party=65535),
    ]
    firsts = {int(expand(SEED, v, 1)[0]) for v in variants}
    assert len(firsts) == len(variants)


@pytest.mark.parametrize(("field", "value"), [("party", -1), ("party", 65536), ("version", 65536)])
def test_context_fields_out_of_range_are_refused(field: str, value: int) -> None:
    with pytest.raises(mpc.ParameterError, match=rf"{field}.*0\.\.65535, got {value}"):
        dataclasses.replace(CTX, **{field: value})  # type: ignore[arg-type]


def test_negative_length_is_refused() -> None:
    with pytest.raises(mpc.ParameterError, match="length must be >= 0, got -1"):
        expand(SEED, CTX, -1)


@pytest.mark.parametrize("length", BOUNDARY_LENGTHS)
def test_expand_at_chunk_boundaries_is_a_prefix_of_one_stream(length: int) -> None:
    long = expand(SEED, CTX, 2 * CHUNK_ELEMENTS + 3)
    out = expand(SEED, CTX, length)
    assert out.shape == (length,)
    np.testing.assert_array_equal(out, long[:length])


@pytest.mark.parametrize("length", [*BOUNDARY_LENGTHS, 2 * CHUNK_ELEMENTS + 3])
def test_expand_into_equals_expand(length: int) -> None:
    out = np.full(length, 0xDEADBEEF, dtype=np.uint64)
    returned = expand_into(SEED, CTX, out)
    assert returned is out
    np.testing.assert_array_equal(out, expand(SEED, CTX, length))


def test_expand_into_writes_into_a_slice_of_a_larger_buffer() -> None:
    buf = np.zeros(CHUNK_ELEMENTS + 10, dtype=np.uint64)
    expand_into(SEED, CTX, buf[5:-5])
    np.testing.assert_array_equal(buf[5:-5], expand(SEED, CTX, CHUNK_ELEMENTS))
    assert buf[:5].tolist() == [0] * 5
    assert buf[-5:].tolist() == [0] * 5


@pytest.mark.parametrize("length", [*BOUNDARY_LENGTHS, 2 * CHUNK_ELEMENTS + 3])
@pytest.mark.parametrize("negate", [False, True])
def test_add_stream_into_equals_add_of_expand(length: int, negate: bool) -> None:
    start = np.arange(length, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    acc = start.copy()
    add_stream_into(acc, SEED, CTX, negate=negate)
    stream = expand(SEED, CTX, length)
    expected = start - stream if negate else start + stream
    np.testing.assert_array_equal(acc, expected)
    if length:
        assert not np.array_equal(acc, start)


def test_add_then_subtract_restores_the_accumulator() -> None:
    start = np.full(CHUNK_ELEMENTS + 1, 2**64 - 1, dtype=np.uint64)
    acc = start.copy()
    add_stream_into(acc, SEED, CTX)
    add_stream_into(acc, SEED, CTX, negate=True)
    np.testing.assert_array_equal(acc, start)


@pytest.mark.parametrize("length", [0, 1, 7, CHUNK_ELEMENTS, 3 * CHUNK_ELEMENTS + 2])
def test_chunks_cover_the_range_exactly(length: int) -> None:
    spans = list(prg.chunks(length))
    covered = [i for start, stop in spans for i in range(start, stop)]
    assert covered == list(range(length))
    assert all(0 < stop - start <= CHUNK_ELEMENTS for start, stop in spans)
