"""The bottom of the statistics: constants, dtypes, axes, element counts and
masked means.

Every statistic is per channel: `axis` is the channel axis of `x` and the other
axes are reduced. A mask, when given, has x's shape with size 1 on the channel
axis; only its true elements enter the statistics.

`axis` may also be a tuple of axes, all kept: the statistics are then taken per
position of those axes over all the others (layer and group normalization keep
the batch axis, and the group axis, this way), and come back with the kept
axes' shape. A mask then broadcasts against x; where it varies along a kept axis
(a padded sequence under layer normalization over time), every kept position
counts its own valid elements.
"""

from __future__ import annotations

import math

import keras
from keras import ops

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


def _like(number, tensor):
    """A Python `number` as a tensor of `tensor`'s float dtype (else as is)."""
    if isinstance(number, (int, float)) and keras.backend.is_float_dtype(
        getattr(tensor, "dtype", None) or "int32"
    ):
        return ops.convert_to_tensor(number, dtype=tensor.dtype)
    return number


def maximum(x, y):
    """`ops.maximum(x, y)` for a Python number `y`, in x's dtype.

    For float64, `where(x < y, y, x)` (NaN stays NaN): Keras's torch backend
    computes `ops.maximum` of float64 tensors in float32 (its result_type
    maps 64-bit dtypes to 32-bit ones).
    """
    y = _like(y, x)
    if _is_float64(x):
        return ops.where(x < y, y, x)
    return ops.maximum(x, y)


def minimum(x, y):
    """`ops.minimum(x, y)` for a Python number `y`, in x's dtype (see `maximum`)."""
    y = _like(y, x)
    if _is_float64(x):
        return ops.where(x > y, y, x)
    return ops.minimum(x, y)


def power(x, exponent):
    """`ops.power(x, exponent)` with a Python exponent in x's dtype: Keras's
    torch backend would round it to float32 (1/3 to 0.33333334)."""
    return ops.power(x, _like(exponent, x))


def _is_float64(x):
    return keras.backend.standardize_dtype(getattr(x, "dtype", "float32")) == "float64"


def lp_constant(p):
    """C_p, the factor that makes the Lp scale estimate a Gaussian's standard
    deviation: `(sqrt(pi) / (2**(p/2) * Gamma((p+1)/2)))**(1/p)`.

    Computed through `lgamma` so that large p does not overflow. C_1 =
    sqrt(pi/2), C_2 = 1, C_3 = 0.8557.
    """
    original = p
    p = _as_float(p)
    if p is None or not p >= 1 or math.isinf(p):
        raise ValueError(f"lp_constant needs a finite number p >= 1; received p={original!r}.")
    log_c = (0.5 * math.log(math.pi) - 0.5 * p * math.log(2.0) - math.lgamma((p + 1) / 2)) / p
    return math.exp(log_c)


def _as_float(value):
    """`float(value)`, or None where it is not a number (a string, None)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def linf_constant(n):
    """C_inf(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n)) for n reduced elements.

    `n` is a Python number or a tensor (a count known only at run time, e.g.
    under a mask or across replicas). n < 2 is treated as n = 2: ln 1 = 0 would
    give an infinite constant, and a one-element batch then has a zero
    deviation, so 0 * inf would be NaN. With the guard the scale is 0 and the
    output finite.
    """
    if isinstance(n, (str, bytes, bool)) or n is None:
        raise ValueError(
            f"linf_constant needs an element count n (a number or a tensor); received n={n!r}."
        )
    if isinstance(n, (int, float)):
        return _LINF_NUMERATOR / math.sqrt(2.0 * math.log(max(float(n), 2.0)))
    n = maximum(n, 2.0)
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


def reduction_axes(ndim, axis):
    kept = kept_axes(ndim, axis)
    return tuple(i for i in range(ndim) if i not in kept)


def kept_shape(x, axis):
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
    for i in reduction_axes(ndim, axis):
        statistic = ops.expand_dims(statistic, i)
    return statistic


def mask_count(mask, x, axis, dtype):
    """Valid elements per kept position under `mask` (boolean, broadcasting
    against x). A mask that is the same along every kept axis (size 1 there,
    batch norm's case) gives one scalar count, as the cross-replica reduction
    needs; otherwise the counts have the mask's size on the kept axes."""
    ndim = len(x.shape)
    reduced = reduction_axes(ndim, axis)
    valid = ops.cast(mask, dtype)
    if all(mask.shape[a] == 1 for a in kept_axes(ndim, axis)):
        count = ops.sum(valid)
    else:
        count = ops.sum(valid, axis=reduced)
    # Axes the mask broadcasts along: every element there repeats the mask.
    for a in reduced:
        if mask.shape[a] == 1 and x.shape[a] != 1:
            size = x.shape[a] if x.shape[a] is not None else ops.shape(x)[a]
            count = count * as_dtype(size, dtype)
    return count


def reduced_count(x, axis):
    """Elements per channel of `x`: a Python int when the shape is static, an
    int tensor otherwise (e.g. a batch dimension of None in a traced graph)."""
    static = [x.shape[i] for i in reduction_axes(len(x.shape), axis)]
    if all(d is not None for d in static):
        return math.prod(static)
    shape = ops.shape(x)
    count = 1
    for i in reduction_axes(len(x.shape), axis):
        count = count * shape[i]
    return count


def as_dtype(value, dtype):
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
    axes = reduction_axes(len(v.shape), axis)
    dtype = statistics_dtype(v.dtype)
    low = keras.backend.standardize_dtype(v.dtype) in ("float16", "bfloat16")
    if mask is not None:
        v = ops.where(mask, v, ops.zeros_like(v))
    if total is None:
        total = reduced_count(v, axis)
    if low:
        mean = ops.cast(ops.mean(v, axis=axes), dtype)
        if mask is not None:
            mean = mean * (as_dtype(total, dtype) / maximum(count, 1.0))
        return zero_if_empty(mean, total)
    total_sum = ops.cast(ops.sum(v, axis=axes), dtype)
    divisor = as_dtype(total, dtype) if mask is None else count
    if isinstance(divisor, float):
        return total_sum / max(divisor, 1.0)
    return total_sum / maximum(divisor, 1.0)


def zero_if_empty(statistic, count):
    """`statistic`, or 0 where `count` (Python number or tensor) is 0: a batch
    or replica with no (valid) elements contributes zeros, not the NaN of 0/0,
    which would reach every replica through the collective's sum."""
    if isinstance(count, (int, float)) and count > 0:
        return statistic
    # A `where`, even for a count known to be 0: the result stays connected to
    # the inputs, so every replica differentiates the same collectives.
    return ops.where(ops.convert_to_tensor(count) > 0, statistic, ops.zeros_like(statistic))


# The largest finite value of each float dtype: masked positions and empty
# reductions are filled with -/+ these (not infinities, which the slot-wise
# cross-replica gather would turn into 0 * inf = NaN).
FLOAT_MAX = {
    "float16": 65504.0,
    "bfloat16": 3.3895313892515355e38,
    "float32": 3.4028234663852886e38,
    "float64": 1.7976931348623157e308,
}
