"""Statistical privacy tests: any n − 1 parties see nothing that depends on the input.

For n in {3, 4} and every coalition of n − 1 parties, the coalition's view of many
sharings of a fixed input A and of a different fixed input B (fresh OS-CSPRNG
seeds each time) is reduced to *features*: each member's share vector (its full
share, or the expansion of its seed) and the coalition's own partial sum of them
(what it gets by pooling, i.e. x minus the missing party's mask). On every
feature we run

(a) a chi-square goodness-of-fit test for uniformity per byte position (0..7 of
    the uint64) of the view for A and of the view for B;
(b) a chi-square homogeneity test per byte position, view for A against view
    for B, and a two-sample Kolmogorov–Smirnov test on the top 53 bits.

All p-values face α = 1e-6 with a Bonferroni correction over every test the
real-implementation cases perform. A coalition that does not hold the full share
sees only seeds: trivially independent of the input, and still tested.

The same analysis must reject deliberately weakened sharings implemented here
(masks cut to 32 bits), which shows the tests have power; one weakening leaks
only through the *joint* view (full share plus a seed), not the full share alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy import stats

import mpcagg.mpc as mpc
from mpcagg.mpc import prg
from mpcagg.mpc.ring import RingVector

ALPHA = 1e-6
N_VALUES = (3, 4)
FULL_PARTY = 1
TRIALS = 2000
LENGTH = 64
CONTEXT = mpc.SharingContext(round_id="privacy-round", client_id="privacy-client")
MASK32 = np.uint64(0xFFFFFFFF)

INPUT_A = np.zeros(LENGTH, dtype=np.uint64)
INPUT_B = (np.arange(1, LENGTH + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).astype(
    np.uint64
)

UNIFORMITY_TESTS = 2 * 8  # per byte position, views for A and for B
TWO_SAMPLE_TESTS = 8 + 1  # per byte position homogeneity, plus KS
TESTS_PER_FEATURE = UNIFORMITY_TESTS + TWO_SAMPLE_TESTS
# n coalitions of size n − 1, each with n − 1 member vectors plus its partial sum.
TOTAL_TESTS = sum(n * n * TESTS_PER_FEATURE for n in N_VALUES)
THRESHOLD = ALPHA / TOTAL_TESTS

# A sharer maps (input, n, full party, seeds, context) to every party's share
# vector, ordered by party: the full share, or the expansion of the party's seed.
Sharer = Callable[[RingVector, int, int, Sequence[mpc.Seed], mpc.SharingContext], list[RingVector]]


def real_sharer(
    x: RingVector, n: int, full: int, seeds: Sequence[mpc.Seed], ctx: mpc.SharingContext
) -> list[RingVector]:
    return [s.expand() for s in mpc.share(x, n, full, seeds, ctx)]


def weak_sharer(truncated: Callable[[int, list[int]], bool]) -> Sharer:
    """A correct but leaky sharing: masks of parties chosen by ``truncated`` keep 32 bits."""

    def sharer(
        x: RingVector, n: int, full: int, seeds: Sequence[mpc.Seed], ctx: mpc.SharingContext
    ) -> list[RingVector]:
        parties = mpc.seed_parties(n, full)
        vectors: dict[int, RingVector] = {}
        rest = x.copy()
        for party, seed in zip(parties, seeds, strict=True):
            mask = prg.expand(seed, ctx.prg_context(party), len(x))
            if truncated(party, parties):
                mask &= MASK32
            vectors[party] = mask
            rest -= mask
        vectors[full] = rest
        return [vectors[p] for p in range(n)]

    return sharer


all_masks_32_bits = weak_sharer(lambda party, parties: True)
last_mask_32_bits = weak_sharer(lambda party, parties: party == parties[-1])


def sample_views(sharer: Sharer, x: RingVector, n: int) -> np.ndarray:
    """``TRIALS`` sharings of ``x`` with fresh seeds: array [trial, party, element]."""
    views = np.empty((TRIALS, n, len(x)), dtype=np.uint64)
    for t in range(TRIALS):
        seeds = [mpc.Seed.generate() for _ in range(n - 1)]
        vectors = sharer(x, n, FULL_PARTY, seeds, CONTEXT)
        views[t] = vectors
    # The sampled sharings are sharings of x (checked on a few, to keep the run fast).
    for t in range(3):
        np.testing.assert_array_equal(views[t].sum(axis=0, dtype=np.uint64), x)
    return views


def coalition_features(views: np.ndarray, coalition: tuple[int, ...]) -> dict[str, np.ndarray]:
    """What a coalition sees, as flat uint64 samples: each member's vector and their sum."""
    features = {f"share[{p}]": views[:, p, :].reshape(-1) for p in coalition}
    features["coalition sum"] = views[:, list(coalition), :].sum(axis=1, dtype=np.uint64)
    features["coalition sum"] = features["coalition sum"].reshape(-1)
    return features


def byte_counts(samples: np.ndarray, position: int) -> np.ndarray:
    byte = (samples >> np.uint64(8 * position)) & np.uint64(0xFF)
    return np.bincount(byte.astype(np.intp), minlength=256)


def homogeneity_pvalue(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    table = np.stack([counts_a, counts_b])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:  # both views put every sample in the same bin: identical
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def top_bits(samples: np.ndarray) -> np.ndarray:
    return (samples >> np.uint64(11)).astype(np.float64) / 2.0**53


def feature_pvalues(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Every test on one feature: uniformity of A and of B, then A against B."""
    out: dict[str, float] = {}
    for position in range(8):
        counts_a, counts_b = byte_counts(a, position), byte_counts(b, position)
        out[f"uniform A byte {position}"] = float(stats.chisquare(counts_a).pvalue)
        out[f"uniform B byte {position}"] = float(stats.chisquare(counts_b).pvalue)
        out[f"A vs B byte {position}"] = homogeneity_pvalue(counts_a, counts_b)
    out["A vs B KS"] = float(stats.ks_2samp(top_bits(a), top_bits(b)).pvalue)
    assert len(out) == TESTS_PER_FEATURE
    return out


def privacy_pvalues(sharer: Sharer, n: int) -> dict[tuple[int, ...], dict[str, float]]:
    """For every coalition of n − 1 parties: test name → p-value, names ``feature: test``."""
    views_a = sample_views(sharer, INPUT_A, n)
    views_b = sample_views(sharer, INPUT_B, n)
    result: dict[tuple[int, ...], dict[str, float]] = {}
    for coalition in itertools.combinations(range(n), n - 1):
        features_a = coalition_features(views_a, coalition)
        features_b = coalition_features(views_b, coalition)
        result[coalition] = {
            f"{name}: {test}": p
            for name in features_a
            for test, p in feature_pvalues(features_a[name], features_b[name]).items()
        }
    assert sum(len(r) for r in result.values()) == n * n * TESTS_PER_FEATURE
    return result


def rejected(pvalues: dict[str, float], *, feature: str = "", two_sample: bool = False) -> list:
    """The tests (optionally of one feature, optionally only A-vs-B ones) that reject."""
    return [
        (name, p)
        for name, p in pvalues.items()
        if p < THRESHOLD and name.startswith(feature) and (not two_sample or "A vs B" in name)
    ]


@pytest.mark.parametrize("n", N_VALUES)
def test_no_coalition_of_n_minus_1_parties_learns_anything(n: int) -> None:
    results = privacy_pvalues(real_sharer, n)
    assert len(results) == n
    for coalition, pvalues in results.items():
        assert not rejected(pvalues), (coalition, rejected(pvalues))
        # Every coalition but the one without the full party holds the full share.
        assert (f"share[{FULL_PARTY}]: A vs B KS" in pvalues) == (FULL_PARTY in coalition)


@pytest.mark.parametrize("n", N_VALUES)
def test_the_analysis_rejects_masks_cut_to_32_bits(n: int) -> None:
    results = privacy_pvalues(all_masks_32_bits, n)
    for coalition, pvalues in results.items():
        leaks = rejected(pvalues, feature=f"share[{FULL_PARTY}]", two_sample=True)
        if FULL_PARTY in coalition:
            # The full share alone already depends on the input, and is not uniform.
            assert leaks, coalition
            assert rejected(pvalues, feature=f"share[{FULL_PARTY}]: uniform A")
        else:
            # Seeds alone say nothing about the input, however weak the masks.
            assert not rejected(pvalues, two_sample=True), coalition


@pytest.mark.parametrize("n", N_VALUES)
def test_the_analysis_rejects_a_leak_visible_only_in_the_joint_view(n: int) -> None:
    results = privacy_pvalues(last_mask_32_bits, n)
    weak_party = mpc.seed_parties(n, FULL_PARTY)[-1]
    for coalition, pvalues in results.items():
        if weak_party not in coalition:
            # Full share + the other seeds = input − a 32-bit mask: the input shows.
            assert FULL_PARTY in coalition
            assert rejected(pvalues, feature="coalition sum", two_sample=True), coalition
            # ... while the full share on its own passes every test.
            assert not rejected(pvalues, feature=f"share[{FULL_PARTY}]"), coalition
        else:
            assert not rejected(pvalues, two_sample=True), coalition


@pytest.mark.parametrize("sharer", [real_sharer, all_masks_32_bits, last_mask_32_bits])
def test_every_sharer_here_is_a_correct_sharing(sharer: Sharer) -> None:
    for n in N_VALUES:
        for x in (INPUT_A, INPUT_B):
            vectors = sharer(x, n, FULL_PARTY, [mpc.Seed.generate() for _ in range(n - 1)], CONTEXT)
            assert len(vectors) == n
            np.testing.assert_array_equal(np.sum(vectors, axis=0, dtype=np.uint64), x)
