"""Generate the wire-format test vectors in ``tests/vectors/v<PROTOCOL_VERSION>/``.

Usage::

    python scripts/gen_vectors.py           # write the vectors (refuses to change existing ones)
    python scripts/gen_vectors.py --check   # exit 1 if the files differ from what mpc produces
    python scripts/gen_vectors.py --force   # overwrite changed files (only to add cases)

Every input is fixed here (hex seeds, ids, values), so the output is a pure
function of the implementation: ``tests/unit/mpc/test_vectors.py`` checks that mpc
still reproduces the files exactly. If an existing vector would change, the wire
format changed: bump ``mpc.PROTOCOL_VERSION`` (which writes a new ``v<N>/``
directory) instead of overwriting.

Files (uint64 values are decimal strings; floats are ``float.hex`` strings so
NaN, ±inf and every bit are exact; bytes are lowercase hex):

- ``prg.json``         seed + context → HKDF info, first elements, SHA-256 of the stream
- ``fixed_point.json`` float values at several precisions (float64 and float32) → encodings
- ``sharing.json``     seeds, input, n, full party → every party's share; ``full_party_for``
- ``bad_seed.json``    seed material of the wrong size → ``SeedError``
- ``bad_encode.json``  NaN, ±inf, beyond-bound, too-large values, bad parameters → error
- ``bad_sharing.json`` bad party count, full party, number of seeds → ``ParameterError``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.errors import MpcError

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "vectors" / f"v{mpc.PROTOCOL_VERSION}"
PREFIX = 8  # elements listed in full per PRG case

SEEDS = [
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "8f3a5c0e1d2b4a6978e7c6d5b4a39281f0e1d2c3b4a5968778695a4b3c2d1e0f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed",
    "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
]
TOP = 2**64 - 1


def u64(values: Any) -> list[str]:
    return [str(int(v)) for v in np.asarray(values, dtype=np.uint64).reshape(-1)]


def fhex(values: Any) -> list[str]:
    return [float(v).hex() for v in np.asarray(values).reshape(-1)]


def header(description: str) -> dict[str, Any]:
    return {"version": mpc.PROTOCOL_VERSION, "description": description}


def prg_vectors() -> dict[str, Any]:
    contexts = [
        ("base", SEEDS[0], prg.PrgContext("round-1", "client-1", party=1), PREFIX),
        ("party 0", SEEDS[0], prg.PrgContext("round-1", "client-1", party=0), PREFIX),
        ("party 65535", SEEDS[0], prg.PrgContext("round-1", "client-1", party=65535), PREFIX),
        ("other client", SEEDS[0], prg.PrgContext("round-1", "client-2", party=1), PREFIX),
        ("other round", SEEDS[0], prg.PrgContext("round-2", "client-1", party=1), PREFIX),
        ("other usage", SEEDS[0], prg.PrgContext("round-1", "client-1", 1, usage="x"), PREFIX),
        ("other seed", SEEDS[1], prg.PrgContext("round-1", "client-1", party=1), PREFIX),
        ("zero seed, empty ids", SEEDS[3], prg.PrgContext("", "", party=0), PREFIX),
        ("utf-8 ids", SEEDS[2], prg.PrgContext("räund-ü", "клиент-7", party=2), PREFIX),
        ("length 0", SEEDS[2], prg.PrgContext("r", "c", party=1), 0),
        ("length 1", SEEDS[2], prg.PrgContext("r", "c", party=1), 1),
        ("length 3 (odd half block)", SEEDS[2], prg.PrgContext("r", "c", party=1), 3),
        ("long", SEEDS[4], prg.PrgContext("round-1", "client-1", party=2), 2 * 2**15 + 3),
    ]
    cases = []
    for name, seed_hex, ctx, length in contexts:
        stream = prg.expand(mpc.Seed(bytes.fromhex(seed_hex)), ctx, length)
        samples = sorted(
            {i for i in (0, 2**15 - 1, 2**15, 2**15 + 1, length - 1) if 0 <= i < length}
        )
        cases.append(
            {
                "name": name,
                "seed": seed_hex,
                "context": {
                    "version": ctx.version,
                    "usage": ctx.usage,
                    "round_id": ctx.round_id,
                    "client_id": ctx.client_id,
                    "party": ctx.party,
                },
                "info": ctx.info().hex(),
                "length": length,
                "prefix": u64(stream[:PREFIX]),
                "samples": {str(i): str(int(stream[i])) for i in samples},
                "sha256": hashlib.sha256(stream.tobytes()).hexdigest(),
            }
        )
    return {
        **header(
            "PRG: HKDF-SHA256(seed, info) -> AES-128 key || CTR block; keystream as LE uint64. "
            "prefix = first elements, samples = index -> element, sha256 = of all elements' bytes"
        ),
        "cases": cases,
    }


ENCODE_VALUES = [
    0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 0.1, -0.1, 1 / 3, -2 / 3, math.pi, -math.e,
    1.5e-5, -1.5e-5, 2.0**-17, -(2.0**-17), 1234.5678, -98765.4321, 1.0e6, -1.0e6,
    123456789.125, -3.0e9, 2.0**40 + 0.75,
]  # fmt: skip


def encode_case(precision: int, values: list[float], dtype: str, bound: float | None) -> dict:
    arr = np.array(values, dtype=dtype)
    encoded = mpc.FixedPoint(precision).encode(arr, bound=bound)
    return {
        "precision_bits": precision,
        "dtype": dtype,
        "bound": None if bound is None else float(bound).hex(),
        "x": fhex(arr),
        "x_decimal": [repr(float(v)) for v in arr],
        "encoded": u64(encoded),
        "signed": [str(int(v)) for v in encoded.view(np.int64)],
    }


def fixed_point_vectors() -> dict[str, Any]:
    cases = []
    for precision in (0, 8, 16, 24, 32, 52):
        fits = [v for v in ENCODE_VALUES if abs(v) * 2.0**precision < 2.0**62]
        cases.append(encode_case(precision, fits, "float64", None))
    cases.append(encode_case(16, [v for v in ENCODE_VALUES if abs(v) < 2.0**40], "float32", None))
    largest = math.nextafter(2.0**47, 0.0)  # largest float64 whose 16-bit encoding fits
    cases.append(encode_case(16, [largest, -largest], "float64", None))
    cases.append(encode_case(16, [2.5, -2.5, 2.4999, 0.0], "float64", 2.5))
    bound = mpc.max_bound(3)
    cases.append(encode_case(16, [bound, -bound], "float64", bound))
    bounds = [
        {"max_clients": m, "precision_bits": f, "max_bound": mpc.max_bound(m, f).hex()}
        for m in (1, 2, 3, 10, 1000, 2**20)
        for f in (0, 16, 52)
    ]
    return {
        **header(
            "Fixed point: encoded = trunc(x * 2^precision_bits) in x's dtype, as uint64 "
            "(signed = its int64 view). x and bounds are float.hex strings."
        ),
        "cases": cases,
        "max_bound": bounds,
    }


def sharing_vectors() -> dict[str, Any]:
    encoded = mpc.FixedPoint(16).encode(np.array([1.5, -2.25, 0.0, 1000.125, -0.0001]))
    specs = [
        (3, 0, "round-1", "client-1", encoded),
        (3, 2, "round-1", "client-1", encoded),
        (4, 1, "round-7", "trainer-ü", np.array([0, 1, 2**63, TOP], dtype=np.uint64)),
        (2, 1, "r", "c", np.array([TOP, TOP, 12345], dtype=np.uint64)),
        (5, 4, "round-1", "client-9", np.array([42], dtype=np.uint64)),
        (3, 1, "round-1", "client-0", np.zeros(0, dtype=np.uint64)),
    ]
    cases = []
    for n, full, round_id, client_id, x in specs:
        seeds = SEEDS[: n - 1]
        ctx = mpc.SharingContext(round_id=round_id, client_id=client_id)
        shares = mpc.share(x, n, full, [mpc.Seed(bytes.fromhex(s)) for s in seeds], ctx)
        out = []
        for s in shares:
            if isinstance(s, mpc.SeedShare):
                entry = {"party": s.party, "kind": "seed", "seed": s.seed.expose().hex()}
            else:
                entry = {"party": s.party, "kind": "full"}
            out.append({**entry, "vector": u64(s.expand())})
        cases.append(
            {
                "n_parties": n,
                "full_party": full,
                "round_id": round_id,
                "client_id": client_id,
                "seeds": seeds,
                "input": u64(x),
                "shares": out,
            }
        )
    full_party_for = [
        {"client_id": cid, "n_parties": n, "full_party": mpc.full_party_for(cid, n)}
        for cid in ("client-1", "client-2", "trainer-ü", "", "a" * 100)
        for n in (2, 3, 4, 5, 64)
    ]
    return {
        **header(
            "Sharing: seeds[k] goes to the k-th party other than full_party; a seed share's "
            "vector is the PRG expansion for (round_id, client_id, party); the full share is "
            "input minus all expansions mod 2^64; vectors are uint64 decimal strings"
        ),
        "cases": cases,
        "full_party_for": full_party_for,
    }


def expect_error(error: type[MpcError], fn: Any) -> str:
    """Run ``fn`` and return the name of the mpc error it raised (it must raise ``error``)."""
    try:
        fn()
    except MpcError as exc:
        if type(exc) is not error:
            raise
        return error.__name__
    raise AssertionError(f"expected {error.__name__}")


def bad_seed_vectors() -> dict[str, Any]:
    cases = []
    for size in (0, 1, 16, 31, 33, 64):
        material = bytes(range(size))
        cases.append(
            {
                "seed": material.hex(),
                "error": expect_error(mpc.SeedError, lambda m=material: mpc.Seed(m)),
            }
        )
    return {**header("Seed material that is not exactly 32 bytes"), "cases": cases}


def bad_encode_vectors() -> dict[str, Any]:
    nan, inf = math.nan, math.inf
    specs: list[tuple[int, list[float], str, float | None, type[MpcError], int | None]] = [
        (16, [0.5, nan, 1.0], "float64", None, mpc.EncodingError, 1),
        (16, [0.5, 1.0, inf], "float64", None, mpc.EncodingError, 2),
        (16, [-inf], "float64", None, mpc.EncodingError, 0),
        (16, [1.0, nan], "float32", None, mpc.EncodingError, 1),
        (16, [0.0, 2.0**47], "float64", None, mpc.EncodingError, 1),
        (0, [1.0e19], "float64", None, mpc.EncodingError, 0),
        (16, [0.5, 1.0, 1.5, -2.0], "float64", 1.0, mpc.EncodingError, 2),
        (16, [0.5, -3.0], "float64", 2.5, mpc.EncodingError, 1),
        (16, [1.0 + 2.0**-16], "float64", 1.0, mpc.EncodingError, 0),
        (16, [0.5, 1.0e20], "float64", 1.0e30, mpc.EncodingError, 1),
        (16, [1.0, 1.00001], "float64", 1.0, mpc.EncodingError, 1),
        (16, [1.0, 1.00001], "float32", 1.0, mpc.EncodingError, 1),
        (16, [0.5, 3.0, nan], "float64", 1.0, mpc.EncodingError, 1),
        (16, [0.5, -1.0e300, inf], "float64", None, mpc.EncodingError, 1),
        (53, [1.0], "float64", None, mpc.ParameterError, None),
        (-1, [1.0], "float64", None, mpc.ParameterError, None),
        (16, [1.0], "float64", 0.0, mpc.ParameterError, None),
        (16, [1.0], "float64", -1.0, mpc.ParameterError, None),
        (16, [1.0], "float64", inf, mpc.ParameterError, None),
        (16, [1.0], "float64", nan, mpc.ParameterError, None),
        (16, [1.0], "float64", 1.0e305, mpc.ParameterError, None),
    ]
    cases = []
    for precision, values, dtype, bound, error, index in specs:
        arr = np.array(values, dtype=dtype)
        name = expect_error(
            error,
            lambda f=precision, a=arr, b=bound: mpc.FixedPoint(f).encode(a, bound=b),
        )
        cases.append(
            {
                "precision_bits": precision,
                "dtype": dtype,
                "bound": None if bound is None else float(bound).hex(),
                "x": fhex(arr),
                "error": name,
                "index": index,
            }
        )
    return {
        **header(
            "Inputs encode refuses; index is the first offending flat index the message names"
        ),
        "cases": cases,
    }


def bad_sharing_vectors() -> dict[str, Any]:
    specs = [(1, 0, 0), (65, 0, 64), (0, 0, 0), (3, 3, 2), (3, -1, 2), (3, 0, 1), (3, 0, 3)]
    cases = []
    for n, full, count in specs:
        seeds = [SEEDS[i % len(SEEDS)] for i in range(count)]
        ctx = mpc.SharingContext(round_id="r", client_id="c")

        def attempt(
            n: int = n,
            full: int = full,
            seeds: list[str] = seeds,
            ctx: mpc.SharingContext = ctx,
        ) -> None:
            mpc.share(
                np.zeros(2, dtype=np.uint64),
                n,
                full,
                [mpc.Seed(bytes.fromhex(s)) for s in seeds],
                ctx,
            )

        cases.append(
            {
                "n_parties": n,
                "full_party": full,
                "seeds": seeds,
                "input": ["0", "0"],
                "error": expect_error(mpc.ParameterError, attempt),
            }
        )
    return {**header("Sharing parameters share() refuses"), "cases": cases}


def build() -> dict[str, dict[str, Any]]:
    """Every vector file's content, by file name."""
    return {
        "prg.json": prg_vectors(),
        "fixed_point.json": fixed_point_vectors(),
        "sharing.json": sharing_vectors(),
        "bad_seed.json": bad_seed_vectors(),
        "bad_encode.json": bad_encode_vectors(),
        "bad_sharing.json": bad_sharing_vectors(),
    }


def render(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--force", action="store_true", help="overwrite changed vectors")
    args = parser.parse_args(argv)
    changed = []
    for name, content in build().items():
        path = OUT_DIR / name
        text = render(content)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if path.exists() and not args.force:
            changed.append(path)
            continue
        if not args.check:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
        else:
            changed.append(path)
    for path in changed:
        print(
            f"{path.relative_to(ROOT)} differs from what mpc produces: the wire format changed, "
            f"bump mpc.PROTOCOL_VERSION (now {mpc.PROTOCOL_VERSION})",
            file=sys.stderr,
        )
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
