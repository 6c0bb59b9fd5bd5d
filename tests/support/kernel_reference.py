"""A NumPy reference for the centered weight-norm kernel and its gradients,
written from the CWN paper's eq. (3) (docs/design.md, "Centered weight
normalization"); it shares no code with tfnorms."""

import numpy as np


def cwn_and_gradients(v, g, upstream, epsilon):
    """W, dL/dv and dL/dg for L = sum(W * upstream), in float64, with the
    output units on the last axis and epsilon inside the square root; `g`
    per unit, a scalar (its gradient then per unit, to be summed) or None."""
    v, upstream = np.asarray(v, "float64"), np.asarray(upstream, "float64")
    axes = tuple(range(v.ndim - 1))
    n = np.prod([v.shape[a] for a in axes])
    v_hat = v - v.mean(axis=axes, keepdims=True)
    norm = np.sqrt((v_hat**2).sum(axis=axes, keepdims=True) + epsilon)
    w_hat = v_hat / norm
    gain = 1.0 if g is None else np.asarray(g, "float64")
    projection = (w_hat * upstream).sum(axis=axes, keepdims=True)
    grad_v = gain / norm * (upstream - upstream.sum(axis=axes, keepdims=True) / n)
    grad_v = grad_v - gain / norm * w_hat * projection
    return w_hat * gain, grad_v, projection.reshape(v.shape[-1])


def kernel_with_degenerate_units(shape, rng):
    """A float32 kernel with a zero unit, a constant unit and a unit whose
    mean is ten times its spread, the rest Gaussian."""
    v = rng.normal(size=shape) * 0.05
    v[..., 0] = 0.0
    v[..., 1] = 3.0
    v[..., 2] = rng.normal(size=shape[:-1]) + 10.0
    return v.astype("float32")


def assert_close_per_unit(got, expected, tolerance, name=""):
    """`got` within `tolerance` of `expected` relative to each unit's (last
    axis') largest expected magnitude: a zero or constant unit's gradients
    are 1/sqrt(epsilon) times the others'."""
    units = np.shape(expected)[-1] if np.ndim(expected) else 1
    got, expected = (np.reshape(a, (-1, units)) for a in (got, expected))
    error = np.abs(got - expected).max(axis=0) / (np.abs(expected).max(axis=0) + 1e-30)
    assert error.max() < tolerance, (name, int(np.argmax(error)), float(error.max()))
