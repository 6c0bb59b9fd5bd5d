"""Applying the statistics, and the dtype the elementwise work runs in."""

from __future__ import annotations

import keras
from keras import ops

from tfnorms._math.reduce import (
    FLOAT_MAX,
    channel_broadcast_shape,
    maximum,
    statistics_dtype,
)


def working_dtype(dtype, low_precision=False):
    """The dtype the elementwise work of a normalization runs in: float32
    (float64 for float64), as Keras's normalization layers, or with
    `low_precision` a float input's own dtype (float16/bfloat16)."""
    dtype = keras.backend.standardize_dtype(dtype)
    if low_precision and keras.backend.is_float_dtype(dtype):
        return dtype
    return statistics_dtype(dtype)


def per_channel(vector, ndim, axis):
    """A per-channel vector (or None) reshaped to broadcast against a rank-`ndim`
    input whose channels lie on `axis`."""
    if vector is None:
        return None
    axis = axis % ndim
    return ops.reshape(vector, channel_broadcast_shape(ndim, axis, vector.shape[0]))


def inverse_scale(variance, epsilon, scale=None):
    """`1 / sqrt(variance + epsilon)`; from `scale` (sigma) itself when given,
    as `rsqrt((sigma/s)**2 + epsilon/s**2) / s` with `s = max(sigma, 1)`, which
    stays finite and exact where `sigma**2` overflows (and is the plain formula
    for sigma <= 1)."""
    if scale is None:
        return ops.rsqrt(variance + epsilon)
    s = maximum(scale, 1.0)
    return ops.rsqrt(ops.square(scale / s) + epsilon / ops.square(s)) / s


def saturated(variance):
    """`variance` with an overflow to infinity held at the dtype's largest
    finite value (NaN stays NaN): what a moving variance keeps when sigma**2
    leaves the float range."""
    limit = FLOAT_MAX[keras.backend.standardize_dtype(variance.dtype)]
    return ops.where(variance > limit, ops.full_like(variance, limit), variance)


def normalize(x, mean, variance, gamma=None, beta=None, epsilon=1e-3, scale=None):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta`, where every
    argument broadcasts against x (`mean=None`: the uncentered form); with
    `scale` (sigma, see `inverse_scale`) in place of `variance`'s square root.

    The arithmetic of `tf.nn.batch_normalization` and Keras's
    `ops.layer_normalization`: `inv = gamma * rsqrt(variance + epsilon)`, then
    `x * inv + (beta - mean * inv)`. `inv` and the offset are formed in the
    statistics' dtype and cast to x's at the end, so a float16 `x` never sees
    `sigma**2`, which may not fit in float16.
    """
    inv = inverse_scale(variance, epsilon, scale)
    if gamma is not None:
        inv = inv * ops.cast(gamma, inv.dtype)
    offset = None if mean is None else -mean * inv
    if beta is not None:
        beta = ops.cast(beta, inv.dtype)
        offset = beta if offset is None else beta + offset
    outputs = x * ops.cast(inv, x.dtype)
    return outputs if offset is None else _add(outputs, ops.cast(offset, x.dtype))


def _add(fresh, y):
    """`fresh + y` for a `fresh` tensor that nothing else holds: on PyTorch,
    in place where the sum keeps `fresh`'s shape and dtype. Eager PyTorch
    allocates every result, and a new x-sized buffer costs more to touch
    than the addition (the bench ResNet-20's step with p=2 batch norm:
    0.987x -> 0.946x of Keras's layer, whose own torch batch norm adds in
    place too). An addition's gradient needs neither operand, so autograd
    allows it."""
    if keras.backend.backend() == "torch" and fresh.dtype == y.dtype:
        import torch

        if torch.broadcast_shapes(fresh.shape, y.shape) == fresh.shape:
            return fresh.add_(y)
    return fresh + y


def subtract_mean(x, mean, beta=None):
    """`x - mean + beta` (mean-only batch norm), one pass over x: the offset
    `beta - mean` is formed first, in its own dtype; both broadcast against x."""
    offset = -mean if beta is None else ops.cast(beta, mean.dtype) - mean
    return x + ops.cast(offset, x.dtype)
