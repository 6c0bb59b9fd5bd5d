"""Maxima and minima over leading axes on PyTorch (`tfnorms._math.torch_reduce`):
exactly NumPy's, for every way the kept width and the rows come, and taken
where PyTorch's own reduction would run element by element."""

import keras
import numpy as np
import pytest

from tfnorms._math import select, torch_reduce

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's own reductions"
)


def tensor(array):
    import torch

    return torch.as_tensor(array)


def reference(array, axes, largest):
    return (np.max if largest else np.min)(array, axis=tuple(axes))


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize(
    "shape, axes",
    [
        ((64, 16), (0,)),  # batch norm, 16 channels: groups of 2 rows
        ((8, 6, 6, 16), (0, 1, 2)),  # channels last
        ((7, 5, 3), (0, 1)),  # 35 rows of width 3: 32 in groups of 32, 3 left
        ((9, 24), (0,)),  # groups of 4 rows, 1 left
        ((50, 100), (0,)),  # groups of 8 rows, 2 left
        ((4, 10, 16), (1,)),  # rows within each of 4 outer blocks (top-k's block maxima)
        ((2, 4, 8, 5, 2), (1, 2)),  # kept axes before and after: groups of 16 rows
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_equals_numpy_where_it_applies(shape, axes, largest, dtype, rng):
    array = rng.normal(size=shape).astype(dtype)
    array.flat[rng.integers(0, array.size, size=3)] = array.flat[0]  # ties
    result = torch_reduce.outer_extreme(tensor(array), axes, largest)
    assert result is not None
    assert result.dtype == tensor(array).dtype
    np.testing.assert_array_equal(result.numpy(), reference(array, axes, largest))


@pytest.mark.parametrize(
    "shape, axes, why",
    [
        ((64, 32), (0,), "the width is already a multiple of 32"),
        ((8, 64, 3), (1, 2), "the innermost axes, which PyTorch vectorizes"),
        ((3, 4, 5), (0, 2), "the axes are not consecutive"),
        ((4, 9, 16), (1,), "9 rows in each of 4 blocks do not split into pairs"),
        ((1, 16), (0,), "fewer rows than one group"),
        ((0, 16), (0,), "empty"),
        ((16,), (), "nothing to reduce"),
    ],
)
def test_declines_where_it_does_not_apply(shape, axes, why, rng):
    assert torch_reduce.outer_extreme(tensor(rng.normal(size=shape)), axes, True) is None, why


def test_declines_a_tensor_that_is_not_contiguous(rng):
    columns = tensor(rng.normal(size=(16, 64))).t()  # (64, 16), transposed
    assert torch_reduce.outer_extreme(columns, (0,), True) is None
    expected = reference(columns.numpy(), (0,), True)
    np.testing.assert_array_equal(torch_reduce.extreme(columns, (0,), True).numpy(), expected)


def test_nan_and_infinities_come_through_as_in_numpy(rng):
    array = rng.normal(size=(40, 16)).astype("float32")
    array[3, 2], array[39, 5], array[7, 9] = np.nan, np.inf, -np.inf  # row 39 is left over
    for largest in (True, False):
        result = torch_reduce.outer_extreme(tensor(array), (0,), largest)
        np.testing.assert_array_equal(result.numpy(), reference(array, (0,), largest))


def test_autograd_and_other_devices_keep_pytorchs_own_reduction(rng):
    # Two stages would split a tied extreme's gradient unevenly; the slow
    # path this avoids is the CPU's.
    import torch

    x = tensor(rng.normal(size=(8, 16)).astype("float32"))
    assert torch_reduce.applies(x)
    assert not torch_reduce.applies(x.requires_grad_())
    with torch.no_grad():
        assert torch_reduce.applies(x)
        assert not torch_reduce.applies(torch.empty((8, 16), device="meta"))


def test_batch_norm_extremes_take_it_and_stay_exact(rng, monkeypatch):
    # L-inf batch norm after a 16-channel convolution, channels last.
    calls = []
    grouped = torch_reduce.outer_extreme
    monkeypatch.setattr(
        torch_reduce, "outer_extreme", lambda *args, **kw: calls.append(1) or grouped(*args, **kw)
    )
    x = rng.normal(size=(4, 6, 6, 16)).astype("float32")
    high, low = select.extremes(tensor(x), -1, None)
    np.testing.assert_array_equal(high.numpy(), x.max(axis=(0, 1, 2)))
    np.testing.assert_array_equal(low.numpy(), x.min(axis=(0, 1, 2)))
    assert len(calls) == 2
