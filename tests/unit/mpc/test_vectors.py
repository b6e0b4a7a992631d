"""The implementation reproduces the committed wire-format test vectors exactly.

The vectors live in ``tests/vectors/v<PROTOCOL_VERSION>/`` and are written by
``scripts/gen_vectors.py``. A change to the PRG, the encoding or the sharing makes
these tests fail; the fix is a new protocol version with new vectors, never an
edit of the old ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc import errors, prg

ROOT = Path(__file__).resolve().parents[3]
VECTOR_DIR = ROOT / "tests" / "vectors" / f"v{mpc.PROTOCOL_VERSION}"
FILES = [
    "prg.json",
    "fixed_point.json",
    "sharing.json",
    "bad_seed.json",
    "bad_encode.json",
    "bad_sharing.json",
]


@cache
def load(name: str) -> dict[str, Any]:
    """A vector file's content; empty if missing (test_vectors_exist... then fails)."""
    path = VECTOR_DIR / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def cases(name: str, key: str = "cases") -> list[dict[str, Any]]:
    return list(load(name).get(key, []))


def ints(values: list[str]) -> list[int]:
    return [int(v) for v in values]


def floats(values: list[str], dtype: str) -> np.ndarray:
    return np.array([float.fromhex(v) for v in values], dtype=dtype)


def error_type(name: str) -> type[errors.MpcError]:
    error = getattr(errors, name)
    assert issubclass(error, errors.MpcError)
    return error


def seed(hex_material: str) -> mpc.Seed:
    return mpc.Seed(bytes.fromhex(hex_material))


def test_vectors_exist_for_the_current_protocol_version() -> None:
    assert VECTOR_DIR.is_dir(), f"no test vectors for protocol version {mpc.PROTOCOL_VERSION}"
    assert sorted(p.name for p in VECTOR_DIR.glob("*.json")) == sorted(FILES)
    for name, key in [
        ("prg.json", "cases"),
        ("fixed_point.json", "cases"),
        ("fixed_point.json", "max_bound"),
        ("sharing.json", "cases"),
        ("sharing.json", "full_party_for"),
        ("bad_seed.json", "cases"),
        ("bad_encode.json", "cases"),
        ("bad_sharing.json", "cases"),
    ]:
        assert cases(name, key), f"{name} has no {key}"


@pytest.mark.parametrize("name", FILES)
def test_declared_version_is_the_protocol_version(name: str) -> None:
    assert load(name)["version"] == mpc.PROTOCOL_VERSION
    assert VECTOR_DIR.name == f"v{load(name)['version']}"


@pytest.mark.parametrize("case", cases("prg.json"), ids=lambda c: c["name"])
def test_prg(case: dict[str, Any]) -> None:
    ctx = prg.PrgContext(**case["context"])
    assert ctx.info().hex() == case["info"]
    stream = prg.expand(seed(case["seed"]), ctx, case["length"])
    assert stream.tolist()[: len(case["prefix"])] == ints(case["prefix"])
    assert {str(i): str(stream[int(i)]) for i in case["samples"]} == case["samples"]
    assert hashlib.sha256(stream.tobytes()).hexdigest() == case["sha256"]


def test_prg_vectors_cover_chunk_boundaries() -> None:
    longest = max(cases("prg.json"), key=lambda c: c["length"])
    assert longest["length"] > 2 * prg.CHUNK_ELEMENTS
    for index in (prg.CHUNK_ELEMENTS - 1, prg.CHUNK_ELEMENTS, prg.CHUNK_ELEMENTS + 1):
        assert str(index) in longest["samples"]


@pytest.mark.parametrize("case", cases("fixed_point.json"))
def test_fixed_point_encoding(case: dict[str, Any]) -> None:
    x = floats(case["x"], case["dtype"])
    bound = None if case["bound"] is None else float.fromhex(case["bound"])
    fp = mpc.FixedPoint(case["precision_bits"])
    encoded = fp.encode(x, bound=bound)
    assert encoded.tolist() == ints(case["encoded"])
    assert encoded.view(np.int64).tolist() == ints(case["signed"])


def test_fixed_point_vectors_cover_several_precisions_and_dtypes() -> None:
    found = cases("fixed_point.json")
    assert {c["precision_bits"] for c in found} >= {0, 16, 52}
    assert {c["dtype"] for c in found} == {"float32", "float64"}


@pytest.mark.parametrize("case", cases("fixed_point.json", "max_bound"))
def test_max_bound(case: dict[str, Any]) -> None:
    bound = mpc.max_bound(case["max_clients"], case["precision_bits"])
    assert bound.hex() == case["max_bound"]


@pytest.mark.parametrize("case", cases("sharing.json"))
def test_sharing(case: dict[str, Any]) -> None:
    n, full = case["n_parties"], case["full_party"]
    ctx = mpc.SharingContext(round_id=case["round_id"], client_id=case["client_id"])
    x = np.array(ints(case["input"]), dtype=np.uint64)
    shares = mpc.share(x, n, full, [seed(s) for s in case["seeds"]], ctx)
    assert len(shares) == len(case["shares"]) == n
    for got, want in zip(shares, case["shares"], strict=True):
        assert got.party == want["party"]
        assert got.expand().tolist() == ints(want["vector"])
        if want["kind"] == "seed":
            assert isinstance(got, mpc.SeedShare)
            assert got.seed.expose().hex() == want["seed"]
        else:
            assert want["kind"] == "full"
            assert isinstance(got, mpc.FullShare)
            assert got.party == full
    assert mpc.reconstruct(shares).tolist() == ints(case["input"])


@pytest.mark.parametrize("case", cases("sharing.json", "full_party_for"))
def test_full_party_for(case: dict[str, Any]) -> None:
    assert mpc.full_party_for(case["client_id"], case["n_parties"]) == case["full_party"]


@pytest.mark.parametrize("case", cases("bad_seed.json"))
def test_bad_seed(case: dict[str, Any]) -> None:
    with pytest.raises(error_type(case["error"])):
        seed(case["seed"])


@pytest.mark.parametrize("case", cases("bad_encode.json"))
def test_bad_encode(case: dict[str, Any]) -> None:
    x = floats(case["x"], case["dtype"])
    bound = None if case["bound"] is None else float.fromhex(case["bound"])
    with pytest.raises(error_type(case["error"])) as info:
        mpc.FixedPoint(case["precision_bits"]).encode(x, bound=bound)
    if case["index"] is not None:
        assert f"index {case['index']} " in str(info.value)


def test_bad_encode_vectors_cover_nan_inf_and_bound() -> None:
    values = {v for c in cases("bad_encode.json") for v in c["x"]}
    assert {"nan", "inf", "-inf"} <= values
    assert any(
        c["bound"] is not None and c["error"] == "EncodingError" for c in cases("bad_encode.json")
    )


@pytest.mark.parametrize("case", cases("bad_sharing.json"))
def test_bad_sharing(case: dict[str, Any]) -> None:
    ctx = mpc.SharingContext(round_id="r", client_id="c")
    x = np.array(ints(case["input"]), dtype=np.uint64)
    with pytest.raises(error_type(case["error"])):
        mpc.share(x, case["n_parties"], case["full_party"], [seed(s) for s in case["seeds"]], ctx)


def test_generator_reproduces_the_committed_files() -> None:
    """scripts/gen_vectors.py and the files agree (no hand edits, no stale script)."""
    spec = importlib.util.spec_from_file_location(
        "gen_vectors", ROOT / "scripts" / "gen_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert sorted(built) == sorted(FILES)
    for name, content in built.items():
        assert module.render(content) == (VECTOR_DIR / name).read_text(encoding="utf-8"), name
