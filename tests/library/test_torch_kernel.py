"""(Centered) weight normalization's effective kernel as one PyTorch
autograd Function (`tfnorms._math.torch_kernel`): the same kernel and
gradients as the written-out path and a NumPy reference, for every way the
scale and the unit axes come."""

import keras
import numpy as np
import pytest

from tfnorms._math import kernel, torch_kernel

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's own weight-norm kernel"
)

EPSILON = 1e-12


def np_kernel_and_gradients(v, g, reduce_axes, center, upstream):
    """W, dL/dv and dL/dg (g's shape) for L = sum(W * upstream) in float64,
    from the CWN paper's eq. (3) (Salimans and Kingma's without centering),
    epsilon inside the square root."""
    n = np.prod([v.shape[a] for a in reduce_axes])
    v_hat = v - v.mean(axis=reduce_axes, keepdims=True) if center else v
    norm = np.sqrt((v_hat**2).sum(axis=reduce_axes, keepdims=True) + EPSILON)
    w_hat = v_hat / norm
    gain = 1.0 if g is None else (np.reshape(g, norm.shape) if g.ndim else g)
    projection = (w_hat * upstream).sum(axis=reduce_axes, keepdims=True)
    centered_upstream = upstream
    if center:
        centered_upstream = upstream - upstream.sum(axis=reduce_axes, keepdims=True) / n
    grad_v = gain / norm * (centered_upstream - w_hat * projection)
    grad_g = None
    if g is not None:
        grad_g = projection.sum() if g.ndim == 0 else projection.reshape(g.shape)
    return w_hat * gain, grad_v, grad_g


def kernel_and_gradients(v, g, reduce_axes, center, upstream):
    import torch

    vt = torch.tensor(v, requires_grad=True)
    gt = None if g is None else torch.tensor(g, requires_grad=True)
    broadcast_shape = tuple(1 if a in reduce_axes else d for a, d in enumerate(v.shape))
    w = kernel.weight_norm_kernel(vt, gt, reduce_axes, broadcast_shape, center, EPSILON)
    (w * torch.tensor(upstream)).sum().backward()
    np.testing.assert_array_equal(vt.detach().numpy(), v)
    return w.detach().numpy(), vt.grad.numpy(), None if g is None else gt.grad.numpy()


# (kernel shape, unit axes' reduce axes, scale shape or None): Dense, a
# convolution, and units spread over two axes (as EinsumDense's can be).
CASES = [
    ((7, 5), (0,), (5,)),
    ((3, 3, 2, 4), (0, 1, 2), (4,)),
    ((4, 3, 2, 5), (0, 1), (2, 5)),
    ((7, 5), (0,), ()),
    ((3, 3, 2, 4), (0, 1, 2), None),
]


def make_kernel(shape, reduce_axes, rng):
    """A kernel far from centered, with a unit of zeros and one of equal
    weights (for which v - mean is exactly 0 and the gradient of g is 0)."""
    v = rng.normal(size=shape) * 0.5 + 3.0
    units = tuple(slice(None) if a in reduce_axes else 0 for a in range(len(shape)))
    v[units] = 0.0
    last = tuple(slice(None) if a in reduce_axes else -1 for a in range(len(shape)))
    v[last] = 1.25
    return v


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize(("shape", "reduce_axes", "scale_shape"), CASES)
def test_torch_kernel_equals_the_written_out_one_and_numpy(
    shape, reduce_axes, scale_shape, center, rng, monkeypatch
):
    assert torch_kernel.applies()
    v = make_kernel(shape, reduce_axes, rng)
    g = None if scale_shape is None else rng.uniform(0.5, 2.0, size=scale_shape)
    upstream = rng.normal(size=shape)

    own = kernel_and_gradients(v, g, reduce_axes, center, upstream)
    reference = np_kernel_and_gradients(v, g, reduce_axes, center, upstream)
    monkeypatch.setattr(torch_kernel, "applies", lambda: False)
    written_out = kernel_and_gradients(v, g, reduce_axes, center, upstream)

    for mine, want, general in zip(own, reference, written_out, strict=True):
        if want is None:
            assert mine is None and general is None
            continue
        np.testing.assert_allclose(mine, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mine, general, rtol=1e-10, atol=1e-12)


def test_torch_kernel_is_one_function_whose_backward_can_run_twice(rng):
    """The path is taken (one autograd node), and its backward pass leaves
    what it saved as it was: a second backward (retain_graph) gives the
    same gradients."""
    import torch

    v = torch.tensor(make_kernel((6, 4), (0,), rng), requires_grad=True)
    g = torch.tensor(rng.uniform(0.5, 2.0, size=(4,)), requires_grad=True)
    w = kernel.weight_norm_kernel(v, g, (0,), (1, 4), True, EPSILON)
    assert type(w.grad_fn).__name__ == "WeightNormKernelBackward"
    loss = (w * torch.tensor(rng.normal(size=(6, 4)))).sum()
    loss.backward(retain_graph=True)
    first = v.grad.clone(), g.grad.clone()
    v.grad, g.grad = None, None
    loss.backward()
    np.testing.assert_array_equal(v.grad.numpy(), first[0].numpy())
    np.testing.assert_array_equal(g.grad.numpy(), first[1].numpy())
