"""Selection kernels: the k largest entries per channel (the values that
top-k batch norm averages, `tfnorms._math.top_k`), and the extremes per
channel with L-inf batch norm's closed-form gradient.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnorms._math import compiled, jax_shards, torch_reduce
from tfnorms._math.reduce import (
    FLOAT_MAX,
    expand_statistics,
    kept_axes,
    kept_shape,
    maximum,
    reduction_axes,
    statistics_dtype,
)

# XLA on a CPU sorts for top_k; k rounds of a max and a first index of the
# max, each one fused pass down the columns, cost less there for small k and
# many channels. On a GPU XLA's top_k is faster (docs/design.md, "Lp batch
# normalization", top-k selection, has the measurements).
MAX_ROUNDS_K = 16
MIN_ROUNDS_CHANNELS = 128
MIN_NESTED_ROWS = 100
MIN_NESTED_CHANNELS = 256


def k_largest_columns(values, k):
    """(values, row indices), each (k, columns), of the k largest entries of
    each column of the 2-D `values`, in no particular order; `values` must
    have at least k rows. Not differentiated (see `top_k_values`)."""
    values = ops.stop_gradient(values)
    if not _takes_rounds(values, k):
        top, at = ops.top_k(ops.transpose(values), k, sorted=False)
        return ops.transpose(top), ops.transpose(at)
    original = values
    # A NaN ranks as the largest: as +inf for the rounds, whose max need not
    # propagate NaN under XLA; the values are read back from `original`.
    values = ops.where(ops.isnan(values), float("inf"), values)
    rows = values.shape[0]
    positions = ops.expand_dims(ops.arange(rows, dtype="int32"), -1)
    taken = -FLOAT_MAX[keras.backend.standardize_dtype(values.dtype)]
    picked_at = []
    for _ in range(k):
        top = ops.max(values, axis=0, keepdims=True)
        # The first row holding the maximum: exactly one entry leaves per round.
        at = ops.min(ops.where(values == top, positions, rows), axis=0, keepdims=True)
        picked_at.append(at[0])
        values = ops.where(positions == at, taken, values)
    picked_at = ops.stack(picked_at)
    return ops.take_along_axis(original, picked_at, axis=0), picked_at


def top_k_block_size(n, k):
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


def _takes_rounds(values, k):
    """Whether `k_largest_columns` takes the rounds of maxima for `values`."""
    rounds = k <= MAX_ROUNDS_K and values.shape[1] >= MIN_ROUNDS_CHANNELS
    return rounds and compiled.by_xla_on_cpu()


def _blockwise_top_k(values, k, block):
    """(values, row indices), each (k, channels), of the k largest entries of
    each column of the (n, channels) `values`, without sorting whole columns.

    Split each column into n / block contiguous blocks and take each block's
    maximum (one channels-last pass). The k blocks with the largest maxima
    hold the column's k largest values (any value above the k-th largest
    block maximum lies in a block whose maximum is above it too, and those
    k maxima are themselves k values at least that large), so the k largest
    of those k * block gathered entries are the same values. On a
    CIFAR-sized activation this costs a fraction of a transpose plus a full
    per-channel top_k.

    Where the rounds of maxima pick, the k largest block maxima come the
    same way from blocks of the maxima once there are at least
    `MIN_NESTED_ROWS` of them and `MIN_NESTED_CHANNELS` channels: fewer
    rows for the rounds to pass over (docs/design.md has the measurements).
    """
    n, channels = values.shape
    blocks = n // block
    maxima = ops.max(ops.reshape(values, (blocks, block, channels)), axis=1)
    inner = top_k_block_size(blocks, k)
    nested = blocks >= MIN_NESTED_ROWS and channels >= MIN_NESTED_CHANNELS
    if inner is not None and nested and _takes_rounds(maxima, k):
        _, best = _blockwise_top_k(maxima, k, inner)
    else:
        _, best = k_largest_columns(maxima, k)  # (k, channels) block indices
    offsets = ops.reshape(ops.arange(block, dtype=best.dtype), (1, block, 1))
    rows = ops.reshape(ops.expand_dims(best, 1) * block + offsets, (k * block, channels))
    top, at = k_largest_columns(ops.take_along_axis(values, rows, axis=0), k)
    return top, ops.take_along_axis(rows, at, axis=0)


def top_k_values(values, k, axis, pad_to_k=False):
    """The k largest entries of `values` per channel, as a (channels, k) tensor
    (with a tuple of kept axes: a (*kept sizes, k) tensor).

    `values` must be >= 0 where valid and negative (a sentinel) where masked.
    When a channel has fewer than k elements, the missing entries are the
    sentinel -1, so that `top_k.valid_mean` can tell them apart; with `pad_to_k`
    the result always has exactly k columns (equal shapes on every replica).

    Not differentiated: its callers (`tfnorms._math.top_k`) write out their
    gradients, so the selection keeps no autodiff bookkeeping, and each
    round of `k_largest_columns` returns its maximum as it is. Over a batch
    that JAX shards across devices, each device selects among its share
    (`jax_shards`).
    """
    values = ops.stop_gradient(values)
    sharded = jax_shards.batch_mesh(values, axis, k)
    if sharded is not None:

        def local_top_k(share):
            return _top_k_values(share, k, axis, pad_to_k=True)

        return jax_shards.top_k_values(values, k, local_top_k, *sharded)
    return _top_k_values(values, k, axis, pad_to_k)


def _top_k_values(values, k, axis, pad_to_k):
    """`top_k_values` of the values this device holds."""
    ndim = len(values.shape)
    kept, reduced = kept_axes(ndim, axis), reduction_axes(ndim, axis)
    order = kept + reduced
    moved = values if order == tuple(range(ndim)) else ops.transpose(values, order)
    sizes_kept = kept_shape(values, axis)  # run-time sizes for e.g. a traced batch axis
    sizes = [values.shape[a] for a in reduced]
    n = math.prod(sizes) if all(d is not None for d in sizes) else None
    if kept == (ndim - 1,) and n is not None and n >= k and sizes_kept[0] is not None:
        # Channels last with a static element count: the blockwise top-k.
        block = top_k_block_size(n, k)
        if block is not None:
            top, _ = _blockwise_top_k(ops.reshape(values, (n, sizes_kept[0])), k, block)
            return ops.transpose(top)
    flat = ops.reshape(moved, (*sizes_kept, -1 if n is None else n))

    def sentinels(columns):
        return -ops.ones((*sizes_kept, columns), dtype=flat.dtype)

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


def bounded(reduce, values, axes, bound):
    """`reduce` (ops.max or ops.min) over `axes`, `bound` where the reduction
    is empty. Keras's PyTorch max and min refuse an empty tensor without
    `initial`, return a scalar with it, and make it a CPU tensor (a device
    mismatch on a GPU); so a tensor known to be empty gets `bound` from a
    sum (which keeps `values` in the graph), and `initial` is passed only
    where some size is unknown until run time (traced TensorFlow or JAX).
    On PyTorch, outside autograd, `torch_reduce` takes the reductions whose
    kept width PyTorch would reduce element by element."""
    if any(d == 0 for d in values.shape):
        return ops.sum(values, axis=axes) + bound
    if all(d is not None for d in values.shape):
        if torch_reduce.applies(values):
            fast = torch_reduce.outer_extreme(values, axes, largest=reduce is ops.max)
            if fast is not None:
                return fast
        return reduce(values, axis=axes)
    return reduce(values, axis=axes, initial=bound)


def extremes(x, axis, mask):
    """Per channel (per kept position), the maximum and minimum of the valid
    entries of `x`, in the statistics dtype (exact: they are entries of x)."""
    axes = reduction_axes(len(x.shape), axis)
    # An empty reduction (no rows, or all masked) gives -/+ the largest finite
    # value, which every caller reads as "no extreme" (a scale of 0).
    limit = FLOAT_MAX[keras.backend.standardize_dtype(x.dtype)]
    high_values, low_values = x, x
    if mask is not None:
        high_values = ops.where(mask, x, ops.full_like(x, -limit))
        low_values = ops.where(mask, x, ops.full_like(x, limit))
    high = bounded(ops.max, high_values, axes, -limit)
    low = bounded(ops.min, low_values, axes, limit)
    dtype = statistics_dtype(x.dtype)
    return ops.cast(high, dtype), ops.cast(low, dtype)


def _tie_shared(x, target, share, axis, mask):
    """`(grad_x, ties)`: per channel, `share` split equally among the valid
    entries of `x` equal to `target` (what autodiff gives a maximum or a
    minimum), and how many those are."""
    ndim = len(x.shape)
    hit = x == expand_statistics(ops.cast(target, x.dtype), ndim, axis)
    if mask is not None:
        hit = ops.logical_and(hit, mask)
    ties = ops.sum(ops.cast(hit, share.dtype), axis=reduction_axes(ndim, axis))
    per_tie = expand_statistics(share / maximum(ties, 1.0), ndim, axis)
    return ops.where(hit, ops.cast(per_tie, x.dtype), ops.zeros((), x.dtype)), ties


def replica_extremes(x, axis, mask):
    """`extremes` of this replica's share, before the collective that merges
    them; differentiable (each extreme's upstream gradient shared by its
    ties, as autodiff shares it).

    In a TensorFlow graph without XLA, the forward pass and the gradient are
    two XLA clusters under a custom gradient: one fused pass for both
    extremes, and no differentiated cluster, whose gradient made it return
    x-sized tensors for the backward pass that the step held until then
    (docs/design.md, "Lp batch normalization", top-k selection)."""
    if not compiled.in_tf_graph():
        return extremes(x, axis, mask)
    dtype = statistics_dtype(x.dtype)

    def forward(x):
        return ops.stack(extremes(x, axis, mask))

    def spread(x, both, upstream):
        (high, low), (to_high, to_low) = ops.unstack(both), ops.unstack(upstream)
        from_high, _ = _tie_shared(x, high, to_high, axis, mask)
        from_low, _ = _tie_shared(x, low, to_low, axis, mask)
        return from_high + from_low

    forward = compiled.as_xla_cluster(forward)
    spread = compiled.as_xla_cluster(spread)

    @ops.custom_gradient
    def both_extremes(x):
        both = forward(x)

        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            return spread(x, both, ops.cast(upstream, dtype))

        return both, gradient

    high, low = ops.unstack(both_extremes(x))
    return high, low


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
    dtype = statistics_dtype(x.dtype)

    def spread(x, target, signed):
        """`(grad_x, grad_mean)`: `signed` shared by the entries at `target`."""
        grad_x, ties = _tie_shared(x, target, signed, axis, mask)
        return grad_x, -ops.where(ties > 0, signed, ops.zeros_like(signed))

    # In a TensorFlow graph, one XLA cluster that takes the upstream gradient:
    # the graph runs an op as soon as its inputs exist, and the tie mask,
    # which reads forward tensors only, was computed for every layer at the
    # start of the backward pass and held (docs/design.md, "Lp batch
    # normalization", top-k selection).
    spread = compiled.as_xla_cluster(spread)

    @ops.custom_gradient
    def deviation(x, mean):
        high, low = extremes(x, axis, mask)
        above, below = high - mean, mean - low
        upper = above >= below
        largest = ops.where(upper, above, below)
        scale = maximum(largest, 0.0)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            # d scale / d target: +1 for the maximum, -1 for the minimum; none
            # where rounding in the mean made the extreme deviation negative.
            sign = ops.cast(ops.where(upper, 1, -1), dtype) * ops.cast(largest >= 0, dtype)
            signed = ops.cast(upstream, dtype) * sign
            grad_x, grad_mean = spread(x, ops.where(upper, high, low), signed)
            return grad_x, ops.cast(grad_mean, mean.dtype)

        return scale, gradient

    return deviation(x, ops.cast(mean, dtype))
