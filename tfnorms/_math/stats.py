"""Lp statistics: per-channel mean and squared Lp scale, and the mean alone.

    mu        = mean(x)
    sigma_p   = C_p * mean(|x - mu|^p)^(1/p)        1 <= p < inf
    sigma_inf = C_inf(n) * max|x - mu|              p = inf
              = C_inf(n) * mean of the top_k largest |x - mu|

docs/design.md, "Lp batch normalization", gives the constants and why they are
what they are. `reduction` is `replicas.LOCAL` or a `replicas.Replicated`: the
functions here call it at each stage and never ask which it is.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import keras
from keras import ops

from tfnorms._math import compiled, replicas
from tfnorms._math.reduce import (
    as_dtype,
    expand_statistics,
    kept_shape,
    linf_constant,
    lp_constant,
    mask_count,
    masked_mean,
    power,
    reduced_count,
    reduction_axes,
    statistics_dtype,
    zero_if_empty,
)


def _counts(x, axis, mask, dtype):
    """`(count, total)`: valid and all elements per channel (see `mask_count`)."""
    total = reduced_count(x, axis)
    if mask is None:
        return as_dtype(total, dtype), total
    return mask_count(mask, x, axis, dtype), total


def _is_low(dtype):
    return keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")


class Statistics(NamedTuple):
    """What `statistics` returns: per channel (kept position), in the
    statistics dtype."""

    mean: Any  # zeros when uncentered
    variance: Any  # sigma_p**2 (for p = 2 the biased variance, as Keras)
    count: Any  # (valid) elements reduced, global when synchronized
    scale: Any  # sigma_p itself where it is computed without squares (p = 1,
    # inf, top-k), so that it stays finite where sigma_p**2 overflows; else None


def lp_statistics(x, axis, p=2.0, top_k=None, mask=None, reduction=replicas.LOCAL, center=True):
    """Per-channel mean and squared Lp scale `sigma_p**2` of `x`; see `statistics`."""
    result = statistics(x, axis, p, top_k, mask, reduction, center)
    return result.mean, result.variance


def statistics(x, axis, p=2.0, top_k=None, mask=None, reduction=replicas.LOCAL, center=True):
    """Per-channel mean and Lp scale of `x`, as a `Statistics`.

    Args:
        x: the activations, in the dtype the elementwise work runs in.
        axis: the channel axis; or a tuple of axes that are all kept (the
            statistics per position of those axes, over all the others).
        p: a float >= 1 or infinity.
        top_k: with p = inf, average the k largest deviations instead of the
            maximum (`None` or 1: the maximum).
        mask: boolean, x's shape with size 1 on the channel axis (with kept
            axes: any shape that broadcasts against x).
        reduction: `replicas.LOCAL` or a `replicas.Replicated` (which needs one
            channel axis and a mask, if any, that is the same for every channel).
        center: `False` takes the scale around 0 instead of around the mean
            (the uncentered, RMS-norm-like form); the returned mean is zeros.

    Returns:
        A `Statistics` of the kept axes' shape in `statistics_dtype`. `n` in
        `C_inf(n)` is the number of (valid) elements of each statistic. Where
        there is none (an empty batch, everything masked), mean and scale are 0.

    Cost: finite p and top-k make two passes over `x` (the mean, then the
    deviations) and, when synchronized, two collectives. The maximum needs no
    deviations: one pass and one collective. Uncentered, one pass.
    """
    p = float(p)
    x = ops.convert_to_tensor(x)
    ndim = len(x.shape)
    dtype = statistics_dtype(x.dtype)
    if mask is not None:
        mask = ops.cast(mask, "bool")
    count, total = _counts(x, axis, mask, dtype)
    reduction.check(ndim, axis, count)
    if not isinstance(axis, (tuple, list)):
        axis = axis % ndim

    if math.isinf(p) and (top_k is None or top_k == 1):
        return _max_statistics(x, axis, mask, reduction, count, total, center)
    if p == 2.0 and center and mask is None and not _is_low(x.dtype):
        mean, variance, count = reduction.moments(x, reduction_axes(ndim, axis), count)
        return Statistics(mean, variance, count, None)

    if math.isinf(p) and center:
        mean, count, top_mean = reduction.mean_and_top_k_mean(
            x, count, total, top_k, axis, mask, dtype
        )
        scale = linf_constant(count) * top_mean
        return Statistics(mean, ops.square(scale), count, scale)

    local_count = count
    if center:  # pass 1: the mean
        mean, count = reduction.mean(masked_mean(x, axis, mask, local_count, total), count)
        centered_mean = expand_statistics(ops.cast(mean, x.dtype), ndim, axis)
        if p == 2.0:
            # d(variance)/d(mean) = -2 mean(x - mean) = 0: as tf.nn.moments, stop
            # the gradient through the mean here (same result, less work).
            centered_mean = ops.stop_gradient(centered_mean)
    else:
        count = reduction.count(count, dtype)
        centered_mean = None

    # Pass 2: the deviations and the scale.
    scale = None
    if math.isinf(p):
        top_mean = reduction.top_k_mean(x, top_k, axis, mask, dtype)  # uncentered here
        scale = linf_constant(count) * top_mean
        variance = ops.square(scale)
    else:
        powered = _deviation_power(x, centered_mean, p)
        moment = reduction.moment(
            masked_mean(powered, axis, mask, local_count, total), local_count, count
        )
        variance = lp_variance(moment, p)
        if p == 1.0:
            scale = lp_constant(1.0) * moment
    return Statistics(mean if center else ops.zeros_like(variance), variance, count, scale)


def _deviation_power(x, mean, p):
    """`|x - mean|**p` (`mean` None: 0), with the cheap forms for p = 1 and 2."""
    if p == 2.0:
        return ops.square(x if mean is None else x - mean)
    absolute = _absolute_deviation(x, mean)
    return absolute if p == 1.0 else power(absolute, p)


def _absolute_deviation(x, mean):
    """`|x - mean|`; in a TensorFlow graph without XLA, with its gradient
    `upstream * sign(x - mean)` (and the mean's, minus its sum) as one XLA
    cluster that recomputes the deviation. Autodiff keeps `x - mean` for
    the backward pass and its `Abs` gradient takes the sign from forward
    tensors alone, so the graph computes that sign for every layer as soon
    as the backward pass starts and holds all of them: L1 batch norm's
    training step peaked at 1.30x Keras's batch norm's memory on the bench
    MLP (docs/design.md, "Lp batch normalization", top-k selection). A
    small `x` (`compiled.worth_a_cluster`) keeps autodiff's gradient."""
    if not (compiled.in_tf_graph() and compiled.worth_a_cluster(x)):
        return ops.abs(x if mean is None else x - mean)
    # The axes that `mean` (kept axes' statistics, expanded) broadcasts over.
    broadcast = () if mean is None else tuple(i for i, d in enumerate(mean.shape) if d == 1)

    def signed(upstream, x, *mean):
        grad_x = upstream * ops.sign(x - mean[0] if mean else x)
        if not mean:
            return grad_x
        return grad_x, -ops.sum(grad_x, axis=broadcast, keepdims=True)

    signed = compiled.as_xla_cluster(signed)

    @ops.custom_gradient
    def absolute(x, *mean):
        def gradient(*args, upstream=None):
            return signed(args[0] if upstream is None else upstream, x, *mean)

        return ops.abs(x - mean[0] if mean else x), gradient

    return absolute(x) if mean is None else absolute(x, mean)


def _max_statistics(x, axis, mask, reduction, count, total, center):
    """Mean and `(C_inf(n) * max|x - mu|)**2`: one pass and one collective,
    since `max|x - mu| = max(max(x) - mu, mu - min(x))` needs no deviations.
    Uncentered, mu = 0."""
    dtype = statistics_dtype(x.dtype)
    if center:
        mean = masked_mean(x, axis, mask, count, total)
    else:
        mean = ops.zeros(kept_shape(x, axis), dtype=dtype)
    mean, count, scale = reduction.mean_and_max_deviation(x, mean, count, axis, mask)
    scale = zero_if_empty(scale, count)  # nothing valid: the fill values, not a scale
    scale = linf_constant(count) * scale
    return Statistics(mean, ops.square(scale), count, scale)


def lp_variance(moment, p):
    """`sigma_p**2 = C_p**2 * moment**(2/p)` from `moment = mean(|x - mu|^p)`.

    p = 2 returns the moment itself and p = 1 a square, both smooth at 0. For
    other p the power is guarded at 0, where `moment**(2/p)` has an infinite
    derivative for p > 2 (a constant channel would give a NaN gradient).
    """
    p = float(p)
    if p == 2.0:
        return moment
    c2 = lp_constant(p) ** 2
    if p == 1.0:
        return c2 * ops.square(moment)
    positive = moment > 0
    safe = ops.where(positive, moment, ops.ones_like(moment))
    # `moment * 0` is 0 at 0 and NaN at NaN: a NaN input stays visible.
    return ops.where(positive, c2 * power(safe, 2.0 / p), moment * 0.0)


def mean_statistics(x, axis, mask=None, reduction=replicas.LOCAL, with_count=False):
    """Per-channel mean only (mean-only batch norm): one pass, one collective.
    With `with_count`, also the number of valid elements (see `Statistics`)."""
    axis = axis % len(x.shape)
    dtype = statistics_dtype(x.dtype)
    if mask is not None:
        mask = ops.cast(mask, "bool")
    count, total = _counts(x, axis, mask, dtype)
    mean, count = reduction.mean(masked_mean(x, axis, mask, count, total), count)
    return (mean, count) if with_count else mean
