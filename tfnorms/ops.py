"""Pure math shared by the layers, written with `keras.ops` only.

Each function takes and returns tensors and holds no state, so the tests
check it against NumPy directly and every layer stays a thin shell.
"""

from __future__ import annotations

import math

import keras
from keras import ops

# --------------------------------------------------------------------------
# Weight normalization (SPEC sections 2 and 3)
# --------------------------------------------------------------------------


def _count(shape, axes):
    count = 1
    for axis in axes:
        count *= int(shape[axis])
    return count


def center_kernel(v, reduce_axes):
    """`v - mean(v)` over each output unit's axes."""
    # sum / count rather than ops.mean: Keras 3.15's JAX mean rounds float64
    # through float32, which breaks the exact zero-mean property in tests.
    total = ops.sum(v, axis=reduce_axes, keepdims=True)
    return v - total / _count(v.shape, reduce_axes)


def unit_norms(v, reduce_axes, keepdims=False):
    """Euclidean norm of every output unit's slice of `v`."""
    return ops.sqrt(ops.sum(ops.square(v), axis=reduce_axes, keepdims=keepdims))


def unit_normalize(v, reduce_axes, center, epsilon):
    """Each output unit's slice, optionally centered, divided by its norm.

    `epsilon` sits inside the square root, so an all-zero unit gives zeros
    (not NaN) and a finite gradient.
    """
    if center:
        v = center_kernel(v, reduce_axes)
    squared_norm = ops.sum(ops.square(v), axis=reduce_axes, keepdims=True)
    return v * ops.rsqrt(squared_norm + epsilon)


def weight_norm_kernel(v, scale, reduce_axes, broadcast_shape, center, epsilon):
    """The effective kernel `W` of (centered) weight normalization.

    Args:
        v: the proxy kernel `V`.
        scale: per-unit scale `g` (shape of the unit axes), a scalar, or None
            for no scale.
        reduce_axes: the axes of one output unit (SPEC's `R`).
        broadcast_shape: `v`'s shape with 1 on the reduced axes.
        center: subtract each unit's mean first (CWN) or not (WN).
        epsilon: added to the squared norm.

    The gradient is the closed form of Huang et al.'s eq. (3) (with
    `center=False`, Salimans and Kingma's):

        dL/dv = g / ||v_hat|| * (dL/dw - mean(dL/dw) - w_hat * <w_hat, dL/dw>)
        dL/dg = <w_hat, dL/dw>

    written as a custom gradient because autodiff of the forward pass keeps
    several kernel-sized intermediates alive and runs a dozen small passes
    over the kernel; this keeps only per-unit statistics (w_hat is recomputed
    from `v`) and makes one reduction pass and one elementwise pass.
    """
    reduce_axes = tuple(reduce_axes)
    count = _count(v.shape, reduce_axes)

    def unit_shaped(value):  # a per-unit or scalar scale, broadcastable against v
        return value if len(value.shape) == 0 else ops.reshape(value, broadcast_shape)

    @ops.custom_gradient
    def normalized(v, *scale):
        mean = ops.sum(v, axis=reduce_axes, keepdims=True) / count if center else None
        centered = v - mean if center else v
        squared_norm = ops.sum(ops.square(centered), axis=reduce_axes, keepdims=True)
        inverse_norm = ops.rsqrt(squared_norm + epsilon)
        factor = inverse_norm * unit_shaped(scale[0]) if scale else inverse_norm
        w = centered * factor

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            unit = (v - mean if center else v) * inverse_norm  # w_hat, recomputed
            projection = ops.sum(upstream * unit, axis=reduce_axes, keepdims=True)
            residual = upstream - unit * projection
            if center:
                residual = residual - ops.sum(upstream, axis=reduce_axes, keepdims=True) / count
            grad_v = factor * residual
            if not scale:
                return grad_v
            if len(scale[0].shape) == 0:
                return grad_v, ops.sum(projection)
            return grad_v, ops.reshape(projection, scale[0].shape)

        return w, gradient

    # Read values, not variables: TensorFlow's custom_gradient refuses a
    # function that reads a variable it was not given as an input, and under
    # MirroredStrategy it sees the replica's component of a MirroredVariable.
    # (`ops.convert_to_tensor` returns a tf.Variable unchanged; `copy` reads it.)
    v = ops.copy(v)
    if scale is None:
        return normalized(v)
    return normalized(v, ops.cast(ops.copy(scale), v.dtype))


def fixed_frobenius_gain(gain, frobenius_norm, epsilon):
    """Per-unit gains rescaled so that their joint norm is `frobenius_norm`.

    The `per_unit_gain` variant of bounded weight norm (SPEC section 3):
    `rho_F * g / ||g||`, so the units' relative sizes are learned while the
    layer's total norm stays fixed.
    """
    return gain * (frobenius_norm * ops.rsqrt(ops.sum(ops.square(gain)) + epsilon))


# --------------------------------------------------------------------------
# Lp statistics (SPEC section 4)
# --------------------------------------------------------------------------
#
# Everything is per channel: `axis` is the channel axis of `x` and the other
# axes are reduced. A mask, when given, has x's shape with size 1 on the
# channel axis; only its true elements enter the statistics.
#
# `axis` may also be a tuple of axes, all kept: the statistics are then taken
# per position of those axes over all the others (layer and group
# normalization keep the batch axis, and the group axis, this way), and come
# back with the kept axes' shape. A mask then broadcasts against x; where it
# varies along a kept axis (a padded sequence under layer normalization over
# time), every kept position counts its own valid elements.
#
# The cross-replica reduction is injected (`cross_replica`, see
# `tfnorms.distribute.cross_replica_reduce`) so that this module stays pure
# `keras.ops`. It takes `(sums, gathers)`, two lists of tensors, and returns
# the replicas' sums of `sums` and, for each of `gathers`, the replicas'
# values stacked on a new leading axis, all in one collective.

INFINITY = float("inf")

# (1 + sqrt(pi * ln 4)) / 2: the numerator of C_inf(n).
_LINF_NUMERATOR = (1.0 + math.sqrt(math.pi * math.log(4.0))) / 2.0


def statistics_dtype(dtype):
    """The dtype the statistics are accumulated in: float64 for float64,
    float32 for everything else (float16, bfloat16, integers).

    Not `keras.backend.result_type(dtype, "float32")`: on the JAX backend that
    maps float64 to float32.
    """
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def lp_constant(p):
    """C_p, the factor that makes the Lp scale estimate a Gaussian's standard
    deviation: `(sqrt(pi) / (2**(p/2) * Gamma((p+1)/2)))**(1/p)`.

    Computed through `lgamma` so that large p does not overflow. C_1 =
    sqrt(pi/2), C_2 = 1, C_3 = 0.8557.
    """
    p = float(p)
    if not p >= 1 or math.isinf(p):
        raise ValueError(f"lp_constant needs a finite p >= 1; received p={p!r}.")
    log_c = (0.5 * math.log(math.pi) - 0.5 * p * math.log(2.0) - math.lgamma((p + 1) / 2)) / p
    return math.exp(log_c)


def linf_constant(n):
    """C_inf(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n)) for n reduced elements.

    `n` is a Python number or a tensor (a count known only at run time, e.g.
    under a mask or across replicas). n < 2 is treated as n = 2: ln 1 = 0 would
    give an infinite constant, and a one-element batch then has a zero
    deviation, so 0 * inf would be NaN. With the guard the scale is 0 and the
    output finite.
    """
    if isinstance(n, (int, float)):
        return _LINF_NUMERATOR / math.sqrt(2.0 * math.log(max(float(n), 2.0)))
    n = ops.maximum(n, 2.0)
    return _LINF_NUMERATOR * ops.rsqrt(2.0 * ops.log(n))


def channel_broadcast_shape(ndim, axis, channels):
    """`[1, ..., channels, ..., 1]`: a per-channel vector's shape against x."""
    shape = [1] * ndim
    shape[axis] = channels
    return shape


def kept_axes(ndim, axis):
    """The kept axes as sorted non-negative indices: `axis` is one axis (the
    channel axis of batch norm) or a tuple/list of axes."""
    if isinstance(axis, (tuple, list)):
        return tuple(sorted({int(a) % ndim for a in axis}))
    return (int(axis) % ndim,)


def _reduction_axes(ndim, axis):
    kept = kept_axes(ndim, axis)
    return tuple(i for i in range(ndim) if i not in kept)


def _kept_shape(x, axis):
    """The kept axes' sizes (run-time sizes where the static ones are None)."""
    kept = kept_axes(len(x.shape), axis)
    if all(x.shape[a] is not None for a in kept):
        return tuple(x.shape[a] for a in kept)
    dynamic = ops.shape(x)
    return tuple(dynamic[a] if x.shape[a] is None else x.shape[a] for a in kept)


def expand_statistics(statistic, ndim, axis):
    """A statistic of the kept axes' shape (what `lp_statistics` returns),
    with size-1 axes inserted at the reduced axes so that it broadcasts
    against the rank-`ndim` input (works with unknown batch sizes too)."""
    for i in _reduction_axes(ndim, axis):
        statistic = ops.expand_dims(statistic, i)
    return statistic


def _mask_count(mask, x, axis, dtype):
    """Valid elements per kept position under `mask` (boolean, broadcasting
    against x). A mask that is the same along every kept axis (size 1 there,
    batch norm's case) gives one scalar count, as the cross-replica reduction
    needs; otherwise the counts have the mask's size on the kept axes."""
    ndim = len(x.shape)
    reduced = _reduction_axes(ndim, axis)
    valid = ops.cast(mask, dtype)
    if all(mask.shape[a] == 1 for a in kept_axes(ndim, axis)):
        count = ops.sum(valid)
    else:
        count = ops.sum(valid, axis=reduced)
    # Axes the mask broadcasts along: every element there repeats the mask.
    for a in reduced:
        if mask.shape[a] == 1 and x.shape[a] != 1:
            size = x.shape[a] if x.shape[a] is not None else ops.shape(x)[a]
            count = count * _as_dtype(size, dtype)
    return count


def reduced_count(x, axis):
    """Elements per channel of `x`: a Python int when the shape is static, an
    int tensor otherwise (e.g. a batch dimension of None in a traced graph)."""
    static = [x.shape[i] for i in _reduction_axes(len(x.shape), axis)]
    if all(d is not None for d in static):
        return math.prod(static)
    shape = ops.shape(x)
    count = 1
    for i in _reduction_axes(len(x.shape), axis):
        count = count * shape[i]
    return count


def _as_dtype(value, dtype):
    if isinstance(value, (int, float)):
        return float(value)
    return ops.cast(value, dtype)


def masked_mean(v, axis, mask=None, count=None, total=None):
    """Per-channel mean of `v` over its valid elements, in the statistics dtype.

    Without a mask this is the plain mean over all but `axis`. With a mask,
    `count` is the number of valid elements per channel and `total` the number
    of all elements per channel; masked elements count as zero.

    float16/bfloat16 go through `ops.mean`, which accumulates in float32 on
    every backend (a float16 sum would overflow long before the mean does);
    float32 and float64 divide a sum by the count, which is exact where Keras's
    JAX `ops.mean` rounds float64 through float32.
    """
    axes = _reduction_axes(len(v.shape), axis)
    dtype = statistics_dtype(v.dtype)
    low = keras.backend.standardize_dtype(v.dtype) in ("float16", "bfloat16")
    if mask is not None:
        v = ops.where(mask, v, ops.zeros_like(v))
    if total is None:
        total = reduced_count(v, axis)
    if low:
        mean = ops.cast(ops.mean(v, axis=axes), dtype)
        if mask is None:
            return mean
        return mean * (_as_dtype(total, dtype) / ops.maximum(count, 1.0))
    total_sum = ops.cast(ops.sum(v, axis=axes), dtype)
    divisor = _as_dtype(total, dtype) if mask is None else ops.maximum(count, 1.0)
    return total_sum / divisor


def _top_k_block_size(n, k):
    """A divisor `b` of `n` near sqrt(n / k) with at least k blocks of b, or
    None when `n` has no divisor that helps (see `_blockwise_top_k`)."""
    target = math.sqrt(n / k)
    best = None
    for divisor in range(1, math.isqrt(n) + 1):
        if n % divisor:
            continue
        for size in (divisor, n // divisor):
            if size >= 2 and n // size >= k:
                if best is None or abs(math.log(size / target)) < abs(math.log(best / target)):
                    best = size
    return best


def _blockwise_top_k(values, k, block):
    """The k largest entries of each column of the (n, channels) `values`,
    as a (channels, k) tensor, without sorting whole columns.

    Split each column into n / block contiguous blocks and take each block's
    maximum (one channels-last pass). The k blocks with the largest maxima
    hold the column's k largest values (any value above the k-th largest
    block maximum lies in a block whose maximum is above it too, and those
    k maxima are themselves k values at least that large), so a top_k over
    those k * block gathered entries gives the same values. On a CIFAR-sized
    activation this costs a fraction of a transpose plus a full per-channel
    top_k, and its gradient is a small scatter instead of a transpose back.
    """
    n, channels = values.shape
    blocks = n // block
    maxima = ops.max(ops.reshape(ops.stop_gradient(values), (blocks, block, channels)), axis=1)
    _, best = ops.top_k(ops.transpose(maxima), k, sorted=False)  # (channels, k) block indices
    # Flat index of row i of block best[c, j] in channel c: (best * block + i) * channels + c.
    rows = ops.expand_dims(best, -1) * block + ops.arange(block, dtype=best.dtype)
    column = ops.reshape(ops.arange(channels, dtype=best.dtype), (channels, 1, 1))
    indices = ops.reshape(rows * channels + column, (channels, k * block))
    candidates = ops.take(ops.reshape(values, (-1,)), indices)
    top, _ = ops.top_k(candidates, k, sorted=False)
    return top


def top_k_values(values, k, axis, pad_to_k=False):
    """The k largest entries of `values` per channel, as a (channels, k) tensor
    (with a tuple of kept axes: a (*kept sizes, k) tensor).

    `values` must be >= 0 where valid and negative (a sentinel) where masked.
    When a channel has fewer than k elements, the missing entries are the
    sentinel -1, so that `valid_mean` can tell them apart; with `pad_to_k`
    the result always has exactly k columns (equal shapes on every replica).
    """
    ndim = len(values.shape)
    kept, reduced = kept_axes(ndim, axis), _reduction_axes(ndim, axis)
    order = kept + reduced
    moved = values if order == tuple(range(ndim)) else ops.transpose(values, order)
    kept_shape = _kept_shape(values, axis)  # run-time sizes for e.g. a traced batch axis
    sizes = [values.shape[a] for a in reduced]
    n = math.prod(sizes) if all(d is not None for d in sizes) else None
    if kept == (ndim - 1,) and n is not None and n >= k and kept_shape[0] is not None:
        # Channels last with a static element count: the blockwise top-k.
        block = _top_k_block_size(n, k)
        if block is not None:
            return _blockwise_top_k(ops.reshape(values, (n, kept_shape[0])), k, block)
    flat = ops.reshape(moved, (*kept_shape, -1 if n is None else n))

    def sentinels(columns):
        return -ops.ones((*kept_shape, columns), dtype=flat.dtype)

    if n is None:
        # Length known only at run time: pad with k sentinels so top_k always
        # has at least k entries to choose from.
        flat = ops.concatenate([flat, sentinels(k)], axis=-1)
    elif n < k:
        top = flat
        if pad_to_k:
            top = ops.concatenate([top, sentinels(k - n)], axis=-1)
        return top
    top, _ = ops.top_k(flat, k, sorted=False)
    return top


def valid_mean(top):
    """Mean over the last axis of the entries >= 0 (the sentinels excluded)."""
    valid = top >= 0
    total = ops.sum(ops.where(valid, top, ops.zeros_like(top)), axis=-1)
    count = ops.sum(ops.cast(valid, top.dtype), axis=-1)
    return total / ops.maximum(count, 1.0)


def top_k_deviation_mean(x, mean, k, axis, mask=None):
    """Per channel (per kept position), the mean of the k largest `|x - mean|`
    (of all of them where fewer than k are valid).

    `mean` broadcasts against `x` (None: 0); `mask` as in `lp_statistics`.
    The values come from `top_k_values`; the gradient is written out, so that
    it is elementwise on `x`'s own layout: 1/k on the k largest deviations
    (ties at the k-th largest share what is left), times the sign of
    `x - mean`. Autodiff through top_k would scatter into a zero tensor of
    x's size and keep the deviations alive until the backward pass; this
    keeps per-channel numbers only and recomputes the deviations from `x`.
    """
    ndim = len(x.shape)
    reduced = _reduction_axes(ndim, axis)
    sentinel = -ops.ones((), dtype=x.dtype)
    count_dtype = statistics_dtype(x.dtype)  # counts can pass float16's range

    def magnitude(x, mean):
        deviation = x if mean is None else x - mean
        absolute = ops.abs(deviation)
        return deviation, absolute if mask is None else ops.where(mask, absolute, sentinel)

    def top_mean(x, *mean):
        mean = mean[0] if mean else None
        _, absolute = magnitude(x, mean)
        top = top_k_values(absolute, k, axis, pad_to_k=True)
        threshold = ops.min(top, axis=-1)  # the k-th largest; the sentinel if fewer are valid
        value = valid_mean(top)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            deviation, absolute = magnitude(x, mean)
            cut = expand_statistics(threshold, ndim, axis)
            above = absolute > cut
            tied = ops.logical_and(absolute == cut, cut >= 0)
            above_count = ops.sum(ops.cast(above, count_dtype), axis=reduced)
            tied_count = ops.sum(ops.cast(tied, count_dtype), axis=reduced)
            upstream = ops.cast(upstream, count_dtype)
            full = threshold >= 0
            # With k valid entries or more: 1/k each above the threshold, and the
            # remaining k - above_count shared by the tied ones. With fewer: 1/count each.
            selected = ops.where(full, float(k), above_count)
            per_above = upstream / ops.maximum(selected, 1.0)
            per_tied = ops.where(
                full, per_above * (k - above_count) / ops.maximum(tied_count, 1.0), 0.0
            )
            weight = ops.where(
                above,
                expand_statistics(ops.cast(per_above, x.dtype), ndim, axis),
                ops.where(tied, expand_statistics(ops.cast(per_tied, x.dtype), ndim, axis), 0),
            )
            grad_x = weight * ops.sign(deviation)
            if mean is None:
                return grad_x
            grad_mean = -ops.sum(grad_x, axis=reduced, keepdims=True)
            # mean's static shape may hold None (the batch axis of a layer norm
            # in a traced graph): reshape to its run-time shape then.
            mean_shape = mean.shape if None not in mean.shape else ops.shape(mean)
            return grad_x, ops.reshape(grad_mean, mean_shape)

        return value, gradient

    top_mean = ops.custom_gradient(top_mean)
    return top_mean(x) if mean is None else top_mean(x, mean)


def lp_statistics(x, axis, p=2.0, top_k=None, mask=None, cross_replica=None, center=True):
    """Per-channel mean and squared Lp scale `sigma_p**2` of `x` (SPEC section 4).

        mu        = mean(x)
        sigma_p   = C_p * mean(|x - mu|^p)^(1/p)        1 <= p < inf
        sigma_inf = C_inf(n) * max|x - mu|              p = inf
                  = C_inf(n) * mean of the top_k largest |x - mu|

    Args:
        x: the activations, in the dtype the elementwise work runs in.
        axis: the channel axis; or a tuple of axes that are all kept (the
            statistics per position of those axes, over all the others).
        p: a float >= 1 or `INFINITY`.
        top_k: with p = inf, average the k largest deviations instead of the
            maximum (`None` or 1: the maximum).
        mask: boolean, x's shape with size 1 on the channel axis (with kept
            axes: any shape that broadcasts against x).
        cross_replica: `None` (local statistics) or the reduction that makes
            them global (see the section comment). Needs one channel axis and
            a mask, if any, that is the same for every channel.
        center: `False` takes the scale around 0 instead of around the mean
            (`mu = 0`: the uncentered, RMS-norm-like form); the returned mean
            is then zeros.

    Returns:
        `(mean, variance)`, two (channels,) tensors (the kept axes' shape) in
        `statistics_dtype`; `variance` is `sigma_p**2` (for p = 2 the biased
        variance, as Keras). `n` in `C_inf(n)` is the number of (valid)
        elements each statistic is taken over.

    Cost: finite p and top-k make two passes over `x` (the mean, then the
    deviations) and, when synchronized, two collectives (the sums and count;
    then the scale). The maximum needs no deviations: one pass for the mean,
    the maximum and the minimum, and one collective. Uncentered, one pass.
    """
    p = float(p)
    ndim = len(x.shape)
    dtype = statistics_dtype(x.dtype)
    total = reduced_count(x, axis)
    if mask is None:
        count = _as_dtype(total, dtype)
    else:
        mask = ops.cast(mask, "bool")
        count = _mask_count(mask, x, axis, dtype)
    if cross_replica is not None:
        if len(kept_axes(ndim, axis)) != 1 or len(getattr(count, "shape", ())) != 0:
            raise ValueError(
                "lp_statistics synchronizes across replicas with one channel axis and a "
                f"mask shared by all channels only; received axis={axis!r}"
                + ("" if mask is None else f", mask.shape={tuple(mask.shape)}")
                + "."
            )
        axis = axis % ndim if not isinstance(axis, (tuple, list)) else axis[0] % ndim

    if math.isinf(p) and (top_k is None or top_k == 1):
        return _max_statistics(x, axis, mask, cross_replica, count, total, center)
    low = keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16")
    if p == 2.0 and center and mask is None and cross_replica is None and not low:
        # Keras's own moments (tf.nn.moments on TensorFlow: one fused
        # squared-difference pass), so that p=2 costs what Keras's layer costs.
        mean, variance = ops.moments(x, _reduction_axes(ndim, axis))
        return ops.cast(mean, dtype), ops.cast(variance, dtype)

    # Pass 1: the mean (global when synchronized: one collective with the count).
    local_count = count
    if center:
        mean = masked_mean(x, axis, mask, local_count, total)
        if cross_replica is not None:
            local_count = ops.convert_to_tensor(local_count, dtype=dtype)
            (sums, count), _ = cross_replica(
                [mean * local_count, ops.reshape(local_count, (1,))], []
            )
            count = count[0]  # global from here on
            mean = sums / ops.maximum(count, 1.0)

        # Pass 2: the deviations and the scale.
        centered_mean = expand_statistics(ops.cast(mean, x.dtype), ndim, axis)
        if p == 2.0:
            # d(variance)/d(mean) = -2 mean(x - mean) = 0: as tf.nn.moments, stop
            # the gradient through the mean here (same result, less work).
            centered_mean = ops.stop_gradient(centered_mean)
    else:
        centered_mean = None
        if cross_replica is not None:
            local_count = ops.convert_to_tensor(local_count, dtype=dtype)
            (count,), _ = cross_replica([ops.reshape(local_count, (1,))], [])
            count = count[0]

    if math.isinf(p) and cross_replica is None:  # the top-k mean, local
        top_mean = top_k_deviation_mean(x, centered_mean, top_k, axis, mask)
        variance = ops.square(linf_constant(count) * ops.cast(top_mean, dtype))
        return (mean if center else ops.zeros_like(variance)), variance

    deviation = x if centered_mean is None else x - centered_mean
    if math.isinf(p):  # the top-k mean, synchronized (the maximum is _max_statistics)
        magnitude = ops.abs(deviation)
        if mask is not None:
            magnitude = ops.where(mask, magnitude, -ops.ones_like(magnitude))
        top = ops.cast(
            top_k_values(magnitude, top_k, axis, pad_to_k=cross_replica is not None), dtype
        )
        if cross_replica is not None:
            channels = x.shape[axis]
            _, (gathered,) = cross_replica([], [top])  # (replicas, channels, k)
            merged = ops.reshape(ops.moveaxis(gathered, 0, 1), (channels, -1))
            top, _ = ops.top_k(merged, top_k, sorted=False)
        scale = linf_constant(count) * valid_mean(top)
        variance = ops.square(scale)
        return (mean if center else ops.zeros_like(variance)), variance

    if p == 2.0:
        powered = ops.square(deviation)
    elif p == 1.0:
        powered = ops.abs(deviation)
    else:
        powered = ops.power(ops.abs(deviation), p)
    moment = masked_mean(powered, axis, mask, local_count, total)
    if cross_replica is not None:
        (moment,), _ = cross_replica([moment * local_count], [])
        moment = moment / ops.maximum(count, 1.0)
    variance = lp_variance(moment, p)
    return (mean if center else ops.zeros_like(variance)), variance


# The largest finite value of each float dtype: masked positions are filled
# with -/+ these (not infinities, which the slot-wise cross-replica gather
# would turn into 0 * inf = NaN).
_FLOAT_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}


def _extremes(x, axis, mask):
    """Per channel (per kept position), the maximum and minimum of the valid
    entries of `x`, in the statistics dtype (exact: they are entries of x)."""
    axes = _reduction_axes(len(x.shape), axis)
    if mask is None:
        high, low = ops.max(x, axis=axes), ops.min(x, axis=axes)
    else:
        limit = _FLOAT_MAX[keras.backend.standardize_dtype(x.dtype)]
        high = ops.max(ops.where(mask, x, ops.full_like(x, -limit)), axis=axes)
        low = ops.min(ops.where(mask, x, ops.full_like(x, limit)), axis=axes)
    dtype = statistics_dtype(x.dtype)
    return ops.cast(high, dtype), ops.cast(low, dtype)


def max_abs_deviation(x, mean, axis, mask=None):
    """Per channel (per kept position), `max |x - mean|` over the valid entries,
    as `max(max(x) - mean, mean - min(x))` (no deviation tensor).

    `mean` has the kept axes' shape, in the statistics dtype. The gradient is
    written out: of the maximum and the minimum, only the one that is the
    extreme deviation gets it, shared by its ties, with the sign of `x - mean`;
    the mean's is minus its sum, which is `-sign` per channel in closed form.
    Autodiff differentiates both reductions in full (an equality mask, a tie
    count and a scatter over x for each), though one of them is discarded
    per channel: that was most of L-inf batch norm's extra cost in a training
    step (docs/performance.md).
    """
    ndim = len(x.shape)
    axes = _reduction_axes(ndim, axis)
    dtype = statistics_dtype(x.dtype)

    @ops.custom_gradient
    def deviation(x, mean):
        high, low = _extremes(x, axis, mask)
        above, below = high - mean, mean - low
        upper = above >= below
        largest = ops.where(upper, above, below)
        scale = ops.maximum(largest, 0.0)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            target = expand_statistics(ops.cast(ops.where(upper, high, low), x.dtype), ndim, axis)
            hit = x == target
            if mask is not None:
                hit = ops.logical_and(hit, mask)
            ties = ops.sum(ops.cast(hit, dtype), axis=axes)
            # d scale / d target: +1 for the maximum, -1 for the minimum; none
            # where rounding in the mean made the extreme deviation negative.
            sign = ops.cast(ops.where(upper, 1, -1), dtype) * ops.cast(largest >= 0, dtype)
            signed = ops.cast(upstream, dtype) * sign
            per_tie = expand_statistics(signed / ops.maximum(ties, 1.0), ndim, axis)
            grad_x = ops.where(hit, ops.cast(per_tie, x.dtype), ops.zeros((), x.dtype))
            grad_mean = -ops.where(ties > 0, signed, ops.zeros_like(signed))
            return grad_x, ops.cast(grad_mean, mean.dtype)

        return scale, gradient

    return deviation(x, ops.cast(mean, dtype))


def _max_statistics(x, axis, mask, cross_replica, count, total, center=True):
    """Mean and `(C_inf(n) * max|x - mu|)**2` in one pass and one collective.

    `max|x - mu| = max(max(x) - mu, mu - min(x))`: the maximum and minimum of
    x need no deviations, so they are reduced alongside the mean (no
    `x - mu` or `|.|` tensors) and, when synchronized, gathered in the same
    collective as the sums. Uncentered (`center=False`), mu = 0.
    """
    dtype = statistics_dtype(x.dtype)
    local_count = count
    if center:
        mean = masked_mean(x, axis, mask, local_count, total)
    if cross_replica is None:
        if not center:
            mean = ops.zeros(_kept_shape(x, axis), dtype=dtype)
        scale = max_abs_deviation(x, mean, axis, mask)
        if mask is not None:  # nothing valid: the fill values, not a scale
            scale = ops.where(count > 0, scale, ops.zeros_like(scale))
        return mean, ops.square(linf_constant(count) * scale)
    # Synchronized: the local extremes are gathered with the sums, and autodiff
    # differentiates through the collective.
    high, low = _extremes(x, axis, mask)
    if not center:
        mean = ops.zeros_like(high)
    local_count = ops.convert_to_tensor(local_count, dtype=dtype)
    (sums, count), (highs, lows) = cross_replica(
        [mean * local_count, ops.reshape(local_count, (1,))], [high, low]
    )
    count = count[0]
    if center:
        mean = sums / ops.maximum(count, 1.0)
    high, low = ops.max(highs, axis=0), ops.min(lows, axis=0)
    scale = ops.maximum(ops.maximum(high - mean, mean - low), 0.0)
    if mask is not None:  # nothing valid: the fill values, not a scale
        scale = ops.where(count > 0, scale, ops.zeros_like(scale))
    return mean, ops.square(linf_constant(count) * scale)


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
    return ops.where(positive, c2 * ops.power(safe, 2.0 / p), ops.zeros_like(moment))


def mean_statistics(x, axis, mask=None, cross_replica=None):
    """Per-channel mean only (mean-only batch norm): one pass, one collective."""
    axis = axis % len(x.shape)
    dtype = statistics_dtype(x.dtype)
    total = reduced_count(x, axis)
    if mask is None:
        count = _as_dtype(total, dtype)
    else:
        mask = ops.cast(mask, "bool")
        count = ops.sum(ops.cast(mask, dtype))
    mean = masked_mean(x, axis, mask, count, total)
    if cross_replica is not None:
        count = ops.convert_to_tensor(count, dtype=dtype)
        (sums, count), _ = cross_replica([mean * count, ops.reshape(count, (1,))], [])
        mean = sums / ops.maximum(count[0], 1.0)
    return mean


def normalize(x, mean, variance, axis, gamma=None, beta=None, epsilon=1e-3):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta`, per channel.

    The same arithmetic, in the same order, as `tf.nn.batch_normalization`
    (which Keras's `BatchNormalization` calls): `x * inv + (beta - mean * inv)`
    with `inv = gamma * rsqrt(variance + epsilon)`. The per-channel vectors are
    combined in their own (statistics) dtype and cast to x's dtype at the end,
    so a float16 `x` never sees `sigma**2`, which may not fit in float16.
    """
    bshape = channel_broadcast_shape(len(x.shape), axis % len(x.shape), x.shape[axis])
    inv = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        inv = inv * gamma
    offset = -mean * inv if beta is None else beta - mean * inv
    return x * ops.cast(ops.reshape(inv, bshape), x.dtype) + ops.cast(
        ops.reshape(offset, bshape), x.dtype
    )


def working_dtype(dtype, low_precision=False):
    """The dtype the elementwise work of a normalization runs in: float32
    (float64 for float64), as Keras's normalization layers, or with
    `low_precision` a float input's own dtype (float16/bfloat16)."""
    dtype = keras.backend.standardize_dtype(dtype)
    if low_precision and keras.backend.is_float_dtype(dtype):
        return dtype
    return statistics_dtype(dtype)


def normalize_broadcast(x, mean, variance, gamma=None, beta=None, epsilon=1e-3):
    """`gamma * (x - mean) / sqrt(variance + epsilon) + beta` where every
    argument already broadcasts against x: statistics per example (from
    `expand_statistics`), `gamma` and `beta` per feature (layer and group
    normalization). `mean=None` is the uncentered form `gamma * x / sqrt(...)`.

    The arithmetic of Keras's `ops.layer_normalization`: `inv = gamma *
    rsqrt(variance + epsilon)`, then `x * inv + (beta - mean * inv)`. The
    rsqrt is taken in the statistics' dtype and cast to x's, so a float16 `x`
    never sees `sigma**2`, which may not fit in float16.
    """
    inv = ops.cast(ops.rsqrt(variance + epsilon), x.dtype)
    if gamma is not None:
        inv = inv * ops.cast(gamma, x.dtype)
    outputs = x * inv
    offset = None if mean is None else -ops.cast(mean, x.dtype) * inv
    if beta is not None:
        beta = ops.cast(beta, x.dtype)
        offset = beta if offset is None else offset + beta
    return outputs if offset is None else outputs + offset


def subtract_mean(x, mean, axis, beta=None):
    """`x - mean + beta` per channel (mean-only batch norm), one pass over x:
    the per-channel offset `beta - mean` is formed first, in its own dtype."""
    bshape = channel_broadcast_shape(len(x.shape), axis % len(x.shape), x.shape[axis])
    offset = -mean if beta is None else beta - mean
    return x + ops.cast(ops.reshape(offset, bshape), x.dtype)
