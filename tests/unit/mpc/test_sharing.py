"""Additive sharing with seed-compressed shares (mpc.sharing)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.sharing import MAX_PARTIES, FullShare, SeedShare, full_party_for, seed_parties

CTX = mpc.SharingContext(round_id="round-1", client_id="client-1")
X = np.array([0, 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF], dtype=np.uint64)


def seeds(count: int, tag: int = 0) -> list[mpc.Seed]:
    return [mpc.Seed(bytes([tag, i]) + bytes(30)) for i in range(count)]


@pytest.mark.parametrize("n", [0, 1, MAX_PARTIES + 1, -2])
def test_party_count_out_of_range_is_refused(n: int) -> None:
    with pytest.raises(mpc.ParameterError, match=rf"n_parties must be in 2\.\.64, got {n}$"):
        mpc.share(X, n, 0, seeds(2), CTX)


def test_party_count_must_be_int() -> None:
    with pytest.raises(mpc.ParameterError, match="n_parties"):
        mpc.share(X, 3.0, 0, seeds(2), CTX)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "count"), [(3, 1), (3, 3), (2, 0), (5, 0), (4, 5)])
def test_wrong_number_of_seeds_is_refused(n: int, count: int) -> None:
    with pytest.raises(
        mpc.ParameterError, match=rf"expected {n - 1} seeds for {n} parties, got {count}$"
    ):
        mpc.share(X, n, 0, seeds(count), CTX)


@pytest.mark.parametrize(("n", "full"), [(3, 3), (3, -1), (2, 5), (4, 4)])
def test_full_party_out_of_range_is_refused(n: int, full: int) -> None:
    with pytest.raises(
        mpc.ParameterError, match=rf"full_party must be in 0\.\.{n - 1}, got {full}$"
    ):
        mpc.share(X, n, full, seeds(n - 1), CTX)


@pytest.mark.parametrize("full", [0, 1, 2, 3])
def test_shares_are_ordered_by_party_with_one_full_share(full: int) -> None:
    given = seeds(3)
    shares = mpc.share(X, 4, full, given, CTX)
    assert [s.party for s in shares] == [0, 1, 2, 3]
    kinds = [type(s) for s in shares]
    assert kinds.count(FullShare) == 1
    assert isinstance(shares[full], FullShare)
    # seeds[k] goes to the k-th seed party, in increasing order.
    seeded = [s for s in shares if isinstance(s, SeedShare)]
    assert [s.party for s in seeded] == seed_parties(4, full)
    assert [s.seed for s in seeded] == given
    assert all(s.length == len(X) and s.context == CTX for s in seeded)


def test_seed_parties() -> None:
    assert seed_parties(3, 0) == [1, 2]
    assert seed_parties(3, 1) == [0, 2]
    assert seed_parties(5, 4) == [0, 1, 2, 3]


def test_full_share_is_input_minus_seed_expansions() -> None:
    shares = mpc.share(X, 3, 1, seeds(2), CTX)
    full = shares[1]
    assert isinstance(full, FullShare)
    expected = X.copy()
    for s in (shares[0], shares[2]):
        assert isinstance(s, SeedShare)
        expected -= prg.expand(s.seed, CTX.prg_context(s.party), len(X))
    np.testing.assert_array_equal(full.vector, expected)
    assert not np.array_equal(full.vector, X)


def test_seed_share_expands_with_its_own_party_in_the_context() -> None:
    shares = mpc.share(X, 3, 0, seeds(2), CTX)
    s = shares[2]
    assert isinstance(s, SeedShare)
    assert s.prg_context() == prg.PrgContext("round-1", "client-1", party=2)
    np.testing.assert_array_equal(s.expand(), prg.expand(s.seed, s.prg_context(), len(X)))


@pytest.mark.parametrize("n", [2, 3, 4, 7, MAX_PARTIES])
def test_reconstruct_returns_the_input(n: int) -> None:
    for full in {0, n // 2, n - 1}:
        shares = mpc.share(X, n, full, seeds(n - 1), CTX)
        np.testing.assert_array_equal(mpc.reconstruct(shares), X)


def test_reconstruct_in_any_order() -> None:
    shares = mpc.share(X, 5, 2, seeds(4), CTX)
    shuffled = shares[:]
    random.Random(1).shuffle(shuffled)
    np.testing.assert_array_equal(mpc.reconstruct(shuffled), X)


def test_share_does_not_mutate_or_alias_the_input() -> None:
    x = X.copy()
    shares = mpc.share(x, 3, 0, seeds(2), CTX)
    np.testing.assert_array_equal(x, X)
    full = shares[0]
    assert isinstance(full, FullShare)
    assert not np.shares_memory(full.vector, x)


def test_share_of_empty_and_single_element_vectors() -> None:
    for x in (np.zeros(0, dtype=np.uint64), np.array([2**64 - 1], dtype=np.uint64)):
        shares = mpc.share(x, 3, 2, seeds(2), CTX)
        assert all(s.length == len(x) for s in shares)
        np.testing.assert_array_equal(mpc.reconstruct(shares), x)


def test_context_binds_the_shares() -> None:
    a = mpc.share(X, 3, 0, seeds(2), CTX)
    other = mpc.SharingContext(round_id="round-1", client_id="client-2")
    b = mpc.share(X, 3, 0, seeds(2), other)
    assert isinstance(a[0], FullShare) and isinstance(b[0], FullShare)
    assert not np.intersect1d(a[0].vector, b[0].vector).size
    # A seed share replayed under another client's context does not reconstruct.
    mixed = [a[0], b[1], a[2]]
    assert not np.array_equal(mpc.reconstruct(mixed), X)


def test_different_seeds_give_different_full_shares() -> None:
    a = mpc.share(X, 3, 0, seeds(2, tag=1), CTX)[0]
    b = mpc.share(X, 3, 0, seeds(2, tag=2), CTX)[0]
    assert isinstance(a, FullShare) and isinstance(b, FullShare)
    assert not np.intersect1d(a.vector, b.vector).size


def test_reconstruct_refuses_no_shares() -> None:
    with pytest.raises(mpc.ParameterError, match="zero shares"):
        mpc.reconstruct([])


def test_reconstruct_refuses_missing_or_duplicate_parties() -> None:
    shares = mpc.share(X, 3, 0, seeds(2), CTX)
    with pytest.raises(mpc.ParameterError, match=r"0\.\.1, got parties \[0, 2\]"):
        mpc.reconstruct([shares[0], shares[2]])
    with pytest.raises(mpc.ParameterError, match=r"got parties \[0, 1, 1\]"):
        mpc.reconstruct([shares[0], shares[1], shares[1]])


def test_reconstruct_refuses_mismatched_lengths() -> None:
    shares = mpc.share(X, 2, 0, seeds(1), CTX)
    short = FullShare(party=0, vector=np.zeros(2, dtype=np.uint64))
    with pytest.raises(mpc.LengthError, match="party 1 has length 5, expected 2"):
        mpc.reconstruct([short, shares[1]])


def test_seed_share_refuses_negative_length() -> None:
    with pytest.raises(mpc.LengthError, match="-1"):
        SeedShare(party=1, length=-1, seed=seeds(1)[0], context=CTX)


def test_share_reprs_show_no_vector() -> None:
    shares = mpc.share(X, 3, 0, seeds(2), CTX)
    assert repr(shares[0]) == "FullShare(party=0, length=5)"
    assert repr(shares[1]) == "SeedShare(party=1, length=5, seed=Seed(..))"


@pytest.mark.parametrize("n", [2, 3, 4, 7, MAX_PARTIES])
def test_full_party_for_is_deterministic_and_in_range(n: int) -> None:
    for i in range(50):
        p = full_party_for(f"client-{i}", n)
        assert 0 <= p < n
        assert full_party_for(f"client-{i}", n) == p


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_full_party_for_spreads_clients_evenly(n: int) -> None:
    counts = np.bincount([full_party_for(f"trainer-{i:05d}", n) for i in range(3000)], minlength=n)
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-6


def test_full_party_for_depends_on_the_client_id() -> None:
    assert len({full_party_for(f"c{i}", 64) for i in range(200)}) > 32
    assert full_party_for("", 3) in range(3)
    assert full_party_for("ünïcode-клиент", 3) in range(3)


@pytest.mark.parametrize("n", [0, 1, MAX_PARTIES + 1])
def test_full_party_for_refuses_bad_party_count(n: int) -> None:
    with pytest.raises(mpc.ParameterError, match=rf"n_parties must be in 2\.\.64, got {n}$"):
        full_party_for("client", n)
