"""TensorLayout: derivation from models and tensors, flatten/unflatten, error messages."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mpcagg import InputError, LayoutError, TensorLayout
from mpcagg.protocol.spec import RoundSpec, TensorSpec


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


def test_layout_from_module_uses_floating_state_dict_entries() -> None:
    model = small_model()
    layout = TensorLayout.from_tensors(model)
    expected = [n for n, t in model.state_dict().items() if t.is_floating_point()]
    assert list(layout.names) == expected
    assert "1.num_batches_tracked" not in layout.names
    assert layout.shapes[0] == (3, 4)
    assert layout.length == sum(model.state_dict()[n].numel() for n in expected)


def test_round_trip_module_state_dict() -> None:
    model = small_model()
    layout = TensorLayout.from_tensors(model)
    vec = layout.flatten(model)
    assert vec.dtype == np.float32 and vec.shape == (layout.length,)
    back = layout.unflatten(vec)
    for name, tensor in model.state_dict().items():
        if name in layout.names:
            np.testing.assert_array_equal(back[name], tensor.numpy())
    # The integer buffer is not in the layout and is ignored, not "unexpected".
    assert set(back) == set(layout.names)


def test_named_parameters_and_grads() -> None:
    model = small_model()
    layout = TensorLayout.from_tensors(model.named_parameters())
    assert list(layout.names) == [n for n, _ in model.named_parameters()]
    with pytest.raises(InputError, match=r"'0.weight' has no gradient"):
        layout.flatten(model.named_parameters(), use_grad=True)
    model(torch.randn(8, 4)).sum().backward()
    grads = layout.flatten(model.named_parameters(), use_grad=True)
    expected = np.concatenate([p.grad.numpy().ravel() for _, p in model.named_parameters()])
    np.testing.assert_array_equal(grads, expected)
    # A module with use_grad takes its trainable parameters' gradients.
    np.testing.assert_array_equal(layout.flatten(model, use_grad=True), expected)


def test_dict_of_numpy_arrays_float64_and_noncontiguous() -> None:
    a = np.arange(12, dtype=np.float64).reshape(3, 4).T  # non-contiguous view
    b = np.ones(2, dtype=np.float32)
    layout = TensorLayout.from_tensors({"a": a, "b": b})
    vec = layout.flatten({"b": b, "a": a})  # order of the input does not matter
    assert vec.dtype == np.float64
    np.testing.assert_array_equal(vec, np.concatenate([a.ravel(), b]))
    back = layout.unflatten(vec)
    np.testing.assert_array_equal(back["a"], a)
    assert back["b"].shape == (2,)


def test_float32_only_when_all_inputs_float32() -> None:
    layout = TensorLayout.from_shapes([("x", (2,)), ("y", ())])
    f32 = {"x": np.zeros(2, np.float32), "y": np.array(1.5, np.float32)}
    assert layout.flatten(f32).dtype == np.float32
    half = {"x": torch.zeros(2, dtype=torch.bfloat16), "y": torch.tensor(1.5)}
    out = layout.flatten(half)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.5])


def test_from_spec_and_to_tensor_specs() -> None:
    spec = RoundSpec(
        round_id="r1", tensors=(TensorSpec("w", (2, 3)), TensorSpec("b", (3,))), n_parties=3
    )
    layout = TensorLayout.from_spec(spec)
    assert layout.to_tensor_specs() == spec.tensors
    assert layout.length == spec.length == 9
    assert TensorLayout.of(spec) == layout
    assert TensorLayout.of(layout) is layout
    assert layout.locate(0) == ("w", (0, 0))
    assert layout.locate(5) == ("w", (1, 2))
    assert layout.locate(8) == ("b", (2,))


def test_missing_and_unexpected_names_listed() -> None:
    layout = TensorLayout.from_shapes([("fc.weight", (4, 3)), ("fc.bias", (4,))])
    with pytest.raises(LayoutError) as err:
        layout.flatten({"fc.weight": np.zeros((4, 3)), "extra": np.zeros(1), "more": np.zeros(1)})
    assert str(err.value) == (
        "tensors do not match the layout: missing ['fc.bias']; unexpected ['extra', 'more']"
    )


def test_shape_mismatch_message() -> None:
    layout = TensorLayout.from_shapes([("fc.weight", (4, 3)), ("fc.bias", (4,))])
    with pytest.raises(
        LayoutError,
        match=re.escape("tensor 'fc.weight' has shape [3, 4], expected [4, 3]"),
    ):
        layout.flatten({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(4)})


def test_non_floating_tensor_named_by_layout_is_refused() -> None:
    layout = TensorLayout.from_shapes([("steps", (1,))])
    with pytest.raises(LayoutError, match="tensor 'steps' is not floating point"):
        layout.flatten({"steps": np.array([3], dtype=np.int64)})


def test_bad_containers_and_values() -> None:
    with pytest.raises(InputError, match="expected a model, a mapping"):
        TensorLayout.from_tensors(np.zeros(3))
    with pytest.raises(InputError, match="expected a model, a mapping"):
        TensorLayout.from_tensors(torch.zeros(3))
    with pytest.raises(InputError, match="expected \\(name, tensor\\) pairs"):
        TensorLayout.from_tensors([np.zeros(3)])
    with pytest.raises(InputError, match="'x' is a list"):
        TensorLayout.from_tensors({"x": [1.0, 2.0]})
    with pytest.raises(InputError, match="'x' is given twice"):
        TensorLayout.from_tensors([("x", np.zeros(1)), ("x", np.zeros(1))])
    with pytest.raises(LayoutError, match="repeated: \\['x'\\]"):
        TensorLayout.from_shapes([("x", (1,)), ("x", (2,))])
    with pytest.raises(LayoutError, match="must not be empty"):
        TensorLayout.from_shapes([("", (1,))])


def test_unflatten_checks_length() -> None:
    layout = TensorLayout.from_shapes([("x", (2, 2))])
    with pytest.raises(LayoutError, match=re.escape("vector of shape [5]")):
        layout.unflatten(np.zeros(5))
