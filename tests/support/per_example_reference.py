"""Independent NumPy references for the per-example Lp norms (layer, RMS and
group normalization), written from docs/design.md ("Lp batch normalization"):
every statistic is computed one example (and group) at a time by
`lp_reference.lp_statistics` or, around 0, by `uncentered_statistics`; plus
comparisons of two layers' outputs and gradients."""

import math

import lp_reference as ref
import numpy as np
from keras import ops
from layer_checks import call_gradients, loss_and_gradients, loss_and_input_gradient, to_numpy


def uncentered_statistics(v, p, top_k):
    """sigma_p**2 of a 1-D array around 0 (the Lp scale with mu = 0)."""
    a = np.abs(v)
    if math.isinf(p):
        scale = a.max() if top_k is None else np.sort(a)[::-1][:top_k].mean()
        return (ref.c_inf(a.size) * scale) ** 2
    c_p = ref.gaussian_abs_moment(p) ** (-1 / p)
    return (c_p * np.mean(a**p) ** (1 / p)) ** 2


def per_example_statistics(x, axes, p, top_k, mask=None, center=True):
    """(mean, sigma_p**2) of every position of the axes not in `axes`, over
    the (valid) elements of `axes`, one position at a time; both come back
    with size 1 on `axes`."""
    x = np.asarray(x, np.float64)
    axes = sorted(a % x.ndim for a in axes)
    kept = [i for i in range(x.ndim) if i not in axes]
    order = kept + axes
    moved = np.transpose(x, order)
    kept_shape = moved.shape[: len(kept)]
    rows = moved.reshape(int(np.prod(kept_shape)), -1)
    valid = np.ones_like(rows, bool)
    if mask is not None:
        valid = np.transpose(np.broadcast_to(mask, x.shape), order).reshape(rows.shape)
    means, variances = np.zeros(len(rows)), np.zeros(len(rows))
    for i, (row, keep) in enumerate(zip(rows, valid, strict=True)):
        v = row[keep]
        if center:
            mean, variance = ref.lp_statistics(v[:, None], -1, p, top_k)
            means[i], variances[i] = mean[0], variance[0]
        else:
            variances[i] = uncentered_statistics(v, p, top_k)
    shape = [1] * x.ndim
    for i, a in enumerate(kept):
        shape[a] = kept_shape[i]
    return means.reshape(shape), variances.reshape(shape)


def affine_shape(x, axes):
    shape = [1] * x.ndim
    for a in axes:
        shape[a % x.ndim] = x.shape[a]
    return shape


def reference_layer_norm(x, axes, p, top_k, gamma, beta, epsilon, mask=None, rms=False):
    x = np.asarray(x, np.float64)
    mean, variance = per_example_statistics(x, axes, p, top_k, mask, center=not rms)
    y = (x - mean) / np.sqrt(variance + epsilon)
    if gamma is not None:
        y = y * np.reshape(gamma, affine_shape(x, axes))
    if beta is not None:
        y = y + np.reshape(beta, affine_shape(x, axes))
    return y


def product_loss(w, w2):
    """sum(w * y + 0.1 * w2 * y**3), as tensors and in NumPy (products only:
    Keras's JAX ops.sin rounds float64 through float32)."""
    w_t, w2_t = ops.convert_to_tensor(w, "float64"), ops.convert_to_tensor(w2, "float64")
    return (
        lambda y: ops.sum(w_t * y + 0.1 * w2_t * y * y * y),
        lambda y: np.sum(w * y + 0.1 * w2 * y**3),
    )


def copy_random_weights(source, target, rng):
    source.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in source.weights])
    target.set_weights(source.get_weights())


def inference_gradients(layer, x, loss_fn):
    """Loss and its gradients with respect to the input and to the layer's
    trainable variables, calling the layer without a `training` argument
    (Keras's layer and group norms take none; the shared helper passes one
    to `stateless_call` on JAX)."""
    return call_gradients(layer, x, loss_fn)


def assert_same_outputs_and_gradients(mine, theirs, x, rng, atol=1e-5):
    """Equal outputs, loss, input gradients and variable gradients."""
    w = rng.normal(size=x.shape).astype(x.dtype)
    loss_fn = lambda y: ops.sum(ops.convert_to_tensor(w) * y * y)
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=atol)
    loss_a, dx_a, grads_a = inference_gradients(mine, x, loss_fn)
    loss_b, dx_b, grads_b = inference_gradients(theirs, x, loss_fn)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-4, atol=1e-4)
    assert len(grads_a) == len(grads_b) == len(mine.trainable_variables)
    for a, b in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # The shared helper (training=True) agrees: the layer takes `training`.
    _, dx_helper = loss_and_input_gradient(mine, x, loss_fn)
    np.testing.assert_allclose(dx_helper, dx_a, rtol=1e-5, atol=1e-5)
    _, grads_helper = loss_and_gradients(mine, x, loss_fn)
    for a, b in zip(grads_helper, grads_a, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def reference_group_norm(x, groups, axis, p, top_k, gamma, beta, epsilon, mask=None):
    """Group normalization of x (batch first, channels on `axis`); `mask` has
    the input's shape without the channel axis."""
    x = np.asarray(x, np.float64)
    moved = np.moveaxis(x, axis, -1)  # (batch, ..., channels)
    channels = moved.shape[-1]
    groups = channels if groups == -1 else groups
    grouped = moved.reshape(*moved.shape[:-1], groups, channels // groups)
    axes = [*range(1, grouped.ndim - 2), grouped.ndim - 1]  # all but batch and group
    if mask is not None:
        mask = np.asarray(mask)[..., None, None]
    mean, variance = per_example_statistics(grouped, axes, p, top_k, mask)
    y = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(moved.shape)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return np.moveaxis(y, -1, axis)
