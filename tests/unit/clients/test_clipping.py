"""Clipping an update before sharing: L∞ clamps coordinates, L2 scales the whole update."""

from __future__ import annotations

import numpy as np
import pytest

from mpcagg import InputError
from mpcagg.clients.clipping import clip_l2, clip_linf, l2_norm

UPDATE = {"w": np.array([[3.0, -4.0], [0.5, 0.0]]), "b": np.array([12.0], np.float32)}


def test_linf_clamps_each_coordinate_and_leaves_the_input_alone() -> None:
    out = clip_linf(UPDATE, 2.0)
    np.testing.assert_array_equal(out["w"], [[2.0, -2.0], [0.5, 0.0]])
    np.testing.assert_array_equal(out["b"], [2.0])
    assert UPDATE["w"][0, 0] == 3.0 and out["b"].dtype == np.float64


def test_l2_scales_a_long_update_to_the_norm_and_keeps_its_direction() -> None:
    assert l2_norm(UPDATE) == pytest.approx(13.009611)
    out = clip_l2(UPDATE, 6.5)
    assert l2_norm(out) == pytest.approx(6.5)
    scale = 6.5 / l2_norm(UPDATE)
    np.testing.assert_allclose(out["w"], UPDATE["w"] * scale)
    np.testing.assert_allclose(out["b"], UPDATE["b"] * scale)


def test_l2_leaves_a_short_update_as_it_is() -> None:
    out = clip_l2(UPDATE, 100.0)
    np.testing.assert_array_equal(out["w"], UPDATE["w"])


@pytest.mark.parametrize("limit", [0.0, -1.0, float("inf"), float("nan"), True])
def test_a_limit_must_be_a_finite_positive_number(limit: float) -> None:
    with pytest.raises(InputError, match="finite number > 0"):
        clip_linf(UPDATE, limit)
    with pytest.raises(InputError, match="finite number > 0"):
        clip_l2(UPDATE, limit)


def test_a_non_finite_coordinate_is_refused_not_clipped() -> None:
    with pytest.raises(InputError, match="tensor 'x' has a non-finite value"):
        clip_l2({"x": np.array([np.nan])}, 1.0)
