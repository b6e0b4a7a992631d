"""Seeds (mpc.seed): exact size, never printed, constant-time equality, not picklable."""

from __future__ import annotations

import base64
import copy
import hmac
import pickle
from typing import Any

import numpy as np
import pytest

import mpcagg.mpc as mpc
from mpcagg.mpc.seed import SEED_BYTES, Seed

MATERIAL = bytes.fromhex("8f3a5c0e1d2b4a6978e7c6d5b4a39281f0e1d2c3b4a5968778695a4b3c2d1e0f")


def leak_forms(material: bytes) -> list[str]:
    """Ways the material could show up in text."""
    return [
        material.hex(),
        material.hex().upper(),
        material.hex()[:16],
        material.hex()[-16:],
        base64.b64encode(material).decode(),
        base64.b64encode(material).decode()[:12],
        base64.urlsafe_b64encode(material).decode().rstrip("="),
        repr(material)[2:-1],
        str(list(material))[1:-1],
        str(int.from_bytes(material, "big")),
        str(int.from_bytes(material, "little")),
    ]


def test_seed_size_is_32() -> None:
    assert SEED_BYTES == 32
    assert mpc.SEED_BYTES == 32


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_exactly_32_bytes(kind: Any) -> None:
    seed = Seed(kind(MATERIAL))
    assert seed.expose() == MATERIAL
    assert type(seed.expose()) is bytes


@pytest.mark.parametrize("size", [0, 1, 16, 31, 33, 64])
def test_refuses_other_sizes(size: int) -> None:
    with pytest.raises(mpc.SeedError, match=rf"exactly 32 bytes, got {size}$"):
        Seed(bytes(size))


@pytest.mark.parametrize("material", [MATERIAL.hex(), 12345, None, list(MATERIAL)])
def test_refuses_non_bytes(material: Any) -> None:
    with pytest.raises(mpc.SeedError, match="seed must be bytes, got"):
        Seed(material)


def test_keeps_its_own_copy_of_mutable_material() -> None:
    buf = bytearray(MATERIAL)
    seed = Seed(buf)
    buf[0] ^= 0xFF
    assert seed.expose() == MATERIAL


def test_generate_draws_fresh_32_byte_seeds() -> None:
    seeds = [Seed.generate() for _ in range(8)]
    materials = {s.expose() for s in seeds}
    assert len(materials) == 8
    assert all(len(m) == 32 for m in materials)
    # The material of a fresh seed is not all one byte value.
    assert all(len(set(m)) > 4 for m in materials)


@pytest.mark.parametrize("material", [MATERIAL, bytes(range(32)), bytes(32)])
def test_text_forms_show_no_material(material: bytes) -> None:
    seed = Seed(material)
    texts = [
        repr(seed),
        str(seed),
        format(seed),
        format(seed, ">80"),
        f"{seed}",
        f"{seed!r}",
        "%s %r" % (seed, seed),  # noqa: UP031 - old-style formatting is a path too
        repr([seed]),
        repr({"seed": seed}),
    ]
    assert repr(seed) == "Seed(..)"
    for text in texts:
        assert "Seed(..)" in text
        for form in leak_forms(material):
            if len(form) >= 8:
                assert form not in text, (text, form)


def test_seed_share_repr_shows_no_material() -> None:
    ctx = mpc.SharingContext(round_id="r", client_id="c")
    shares = mpc.share(np.zeros(3, dtype=np.uint64), 3, 0, [Seed(MATERIAL), Seed(MATERIAL)], ctx)
    text = repr(shares)
    for form in leak_forms(MATERIAL):
        assert form not in text


def test_equality_by_material() -> None:
    assert Seed(MATERIAL) == Seed(bytearray(MATERIAL))
    assert Seed(MATERIAL) != Seed(bytes(32))
    other = bytearray(MATERIAL)
    other[-1] ^= 1
    assert Seed(MATERIAL) != Seed(other)
    # Never equal to raw bytes, even the same bytes.
    assert Seed(MATERIAL) != MATERIAL
    assert MATERIAL != Seed(MATERIAL)  # noqa: SIM300 - bytes on the left is the point


def test_equality_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    other = Seed(bytes(32))
    assert (Seed(MATERIAL) == other) is False
    assert (Seed(MATERIAL) == Seed(MATERIAL)) is True
    assert calls == [(MATERIAL, bytes(32)), (MATERIAL, MATERIAL)]


def test_not_hashable() -> None:
    with pytest.raises(TypeError, match="not hashable"):
        hash(Seed(MATERIAL))
    with pytest.raises(TypeError):
        {Seed(MATERIAL)}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_is_refused(protocol: int) -> None:
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps(Seed(MATERIAL), protocol=protocol)


def test_pickle_of_a_container_is_refused() -> None:
    with pytest.raises(TypeError, match="pickle"):
        pickle.dumps({"seeds": [Seed(MATERIAL)]})


@pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
def test_copy_is_refused(copier: Any) -> None:
    with pytest.raises(TypeError):
        copier(Seed(MATERIAL))


def test_deepcopy_of_a_seed_share_is_refused() -> None:
    ctx = mpc.SharingContext(round_id="r", client_id="c")
    shares = mpc.share(np.zeros(2, dtype=np.uint64), 2, 0, [Seed(MATERIAL)], ctx)
    with pytest.raises(TypeError):
        copy.deepcopy(shares)


def test_has_no_instance_dict() -> None:
    seed = Seed(MATERIAL)
    with pytest.raises((AttributeError, TypeError)):
        vars(seed)
    with pytest.raises(AttributeError):
        seed.extra = 1  # type: ignore[attr-defined]
