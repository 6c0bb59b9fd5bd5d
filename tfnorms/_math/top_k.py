"""The mean of the k largest `|x - mean|` per channel (top-k batch norm's
scale), on one device and merged over replicas, each with a written-out
gradient that stays elementwise on x's own layout.

Autodiff through top_k would scatter into a zero tensor of x's size and keep
the deviations alive until the backward pass; the gradients here keep
per-channel numbers only (the k-th largest deviation, how many lie above
it) and recompute the deviations from `x`. docs/design.md, "Lp batch
normalization", has the derivation and the measurements.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
from keras import ops

from tfnorms._math import compiled, torch_top_k
from tfnorms._math.reduce import (
    FLOAT_MAX,
    expand_statistics,
    masked_mean,
    maximum,
    reduction_axes,
    statistics_dtype,
)
from tfnorms._math.select import bounded, top_k_values


def valid_mean(top):
    """Mean over the last axis of the entries that are not sentinels (< 0), in
    the statistics dtype: k float16 values can sum past float16's range. A NaN
    entry counts, so that a NaN input shows in the result."""
    top = ops.cast(top, statistics_dtype(top.dtype))
    valid = ops.logical_not(top < 0)
    total = ops.sum(ops.where(valid, top, ops.zeros_like(top)), axis=-1)
    count = ops.sum(ops.cast(valid, top.dtype), axis=-1)
    return total / maximum(count, 1.0)


def deviation_magnitudes(x, mean, mask):
    """`(x - mean, |x - mean|)`, the latter with the sentinel -1 where `mask`
    is False (what `top_k_values` reads as not valid); `mean` None: 0."""
    deviation = x if mean is None else x - mean
    absolute = ops.abs(deviation)
    if mask is not None:
        absolute = ops.where(mask, absolute, -ops.ones((), dtype=x.dtype))
    return deviation, absolute


class Cut(NamedTuple):
    """Where the k largest of a channel end, from those k (sentinels
    included, as `top_k_values` pads them)."""

    threshold: object  # the k-th largest; the sentinel -1 where fewer are valid
    above: object  # how many of the k lie strictly above it (statistics dtype)

    @classmethod
    def of(cls, top):
        threshold = bounded(
            ops.min,
            top,
            (len(top.shape) - 1,),
            FLOAT_MAX[keras.backend.standardize_dtype(top.dtype)],
        )
        above = ops.sum(
            ops.cast(top > ops.expand_dims(threshold, -1), statistics_dtype(top.dtype)), axis=-1
        )
        return cls(threshold, above)


def _reaching(x, mean, mask, threshold, axis):
    """`(deviation, absolute, cut, reached)`: reached where `|x - mean|` is at
    least the threshold `cut` (broadcast against x in x's dtype)."""
    deviation, absolute = deviation_magnitudes(x, mean, mask)
    cut = expand_statistics(ops.cast(threshold, x.dtype), len(x.shape), axis)
    return deviation, absolute, cut, absolute >= cut


def _reached_count(reached, axis, dtype):
    """Per channel, how many entries reach the cut, in `dtype` (the
    statistics dtype: counts can pass float16's range).

    Summed from a select of 1 and 0, not a cast of the booleans: XLA's CPU
    code reduces the cast more slowly, 4-5% of a ResNet-20 training step on
    TensorFlow (docs/design.md, "Counting under XLA"). On PyTorch without a
    mask `torch_top_k` counts instead.
    """
    one, zero = ops.ones((), dtype), ops.zeros((), dtype)
    return ops.sum(ops.where(reached, one, zero), axis=reduction_axes(len(reached.shape), axis))


def _tie_weights(k, cut, reached_count):
    """Per channel, `(per_above, per_tied)`: the weight of each entry above
    the cut and of each tied at it in the mean of the k largest (see
    `_unit_weights`)."""
    full = cut.threshold >= 0
    per_above = 1.0 / maximum(ops.where(full, float(k), cut.above), 1.0)
    tied = reached_count - cut.above
    per_tied = ops.where(full, per_above * (k - cut.above) / maximum(tied, 1.0), 0.0)
    return per_above, per_tied


def _unit_weights(x, mean, mask, axis, k, cut, reached_count):
    """d(mean of the k largest |x - mean|) / dx at a fixed mean, x's shape and
    dtype; the k taken from every entry that `reached_count` counted (one
    device's or all replicas').

    With k valid entries or more: 1/k to each above the threshold and the
    remaining `k - above` shared by the tied ones; with fewer, 1/count to
    each valid entry (the cut is then the sentinel, which masked entries
    reach: 0 there). Times the sign of `x - mean`.
    """
    ndim = len(x.shape)
    deviation, absolute, cut_x, reached = _reaching(x, mean, mask, cut.threshold, axis)
    per_above, per_tied = _tie_weights(k, cut, reached_count)
    weight = ops.where(
        reached,
        ops.where(
            absolute > cut_x,
            expand_statistics(ops.cast(per_above, x.dtype), ndim, axis),
            expand_statistics(ops.cast(per_tied, x.dtype), ndim, axis),
        ),
        0,
    )
    return weight * ops.sign(deviation)


def _scaled(upstream, weights, axis):
    """`upstream` (per channel) times `weights` (x's shape)."""
    ndim = len(weights.shape)
    return expand_statistics(ops.cast(upstream, weights.dtype), ndim, axis) * weights


def _gradient(x, mean, mask, axis, k, cut, reached_count, upstream):
    """`grad_x`, and `grad_mean` when `mean` is given (minus grad_x's sum:
    the deviations are `x - mean`), for the per-channel `upstream`."""
    grad_x = _scaled(upstream, _unit_weights(x, mean, mask, axis, k, cut, reached_count), axis)
    return _with_mean_gradient(grad_x, mean, axis)


def _with_mean_gradient(grad_x, mean, axis):
    """`grad_x`, and with `mean` given also its gradient, minus grad_x's sum."""
    if mean is None:
        return grad_x
    grad_mean = -ops.sum(grad_x, axis=reduction_axes(len(grad_x.shape), axis), keepdims=True)
    # mean's static shape may hold None (the batch axis of a layer norm in a
    # traced graph): reshape to its run-time shape then.
    mean_shape = mean.shape if None not in mean.shape else ops.shape(mean)
    return grad_x, ops.reshape(grad_mean, mean_shape)


def _upstream_only(args, upstream):
    """Keras's custom gradients pass the upstream gradient positionally on
    some backends and by keyword on others."""
    return args[0] if upstream is None else upstream


def top_k_deviation_mean(x, mean, k, axis, mask=None):
    """Per channel (per kept position), the mean of the k largest `|x - mean|`
    (of all of them where fewer than k are valid).

    `mean` broadcasts against `x` (None: 0); `mask` as in `lp_statistics`.
    The gradient (see `_gradient`) gives 1/k to the k largest deviations,
    ties at the k-th largest sharing what is left, times the sign of
    `x - mean`. In a TensorFlow graph without XLA the whole function runs
    as one XLA cluster, so its elementwise passes fuse; on PyTorch without
    a mask it is one autograd Function (`torch_top_k`).
    """
    if torch_top_k.applies(x, k, axis, mask):
        return torch_top_k.top_k_deviation_mean(x, mean, k, axis)

    def select(x, *mean):
        """The statistic and where its k largest end (no gradient)."""
        _, absolute = deviation_magnitudes(x, mean[0] if mean else None, mask)
        top = top_k_values(absolute, k, axis, pad_to_k=True)
        cut = Cut.of(top)
        return valid_mean(top), cut.threshold, cut.above

    def differentiate(x, threshold, above, upstream, *mean):
        mean = mean[0] if mean else None
        cut = Cut(threshold, above)
        _, _, _, reached = _reaching(x, mean, mask, threshold, axis)
        count = _reached_count(reached, axis, above.dtype)
        return _gradient(x, mean, mask, axis, k, cut, count, upstream)

    # Each pass its own XLA cluster, the custom gradient outside them: a
    # differentiated cluster returned two x-sized tensors per layer for its
    # backward pass, held until then (docs/design.md, "Lp batch normalization",
    # top-k selection).
    select = compiled.as_xla_cluster(select)
    differentiate = compiled.as_xla_cluster(differentiate)

    def top_mean(x, *mean):
        value, threshold, above = select(x, *mean)

        def gradient(*args, upstream=None):
            upstream = _upstream_only(args, upstream)
            return differentiate(x, threshold, above, upstream, *mean)

        return value, gradient

    top_mean = ops.custom_gradient(top_mean)
    return top_mean(x) if mean is None else top_mean(x, mean)


class _Merged:
    """The global k largest deviations from replicas' shares, with one
    collective forward: each replica's k largest deviations are gathered by
    one call of `merge(sums, gathers)` (see `replicas.Replicated`) and the k
    largest of those are the global ones (a replica's entries above the
    global k-th largest are fewer than k, so all are among its own k
    largest).

    The gradients are written out as on one device, from the global
    threshold t and the global count of entries reaching it. Each replica
    counts, in the same pass as its selection, its entries reaching its own
    k-th largest t_r and sends that count with its k values. t >= t_r (else
    the replica alone would hold k entries above t); where t > t_r, the
    replica's entries reaching t are among its gathered k, and where
    t = t_r, they are the count it sent. So ties beyond a replica's own k
    cost no second collective.
    """

    def __init__(self, k, axis, mask, merge, dtype):
        self.k, self.axis, self.mask, self.merge, self.dtype = k, axis, mask, merge, dtype
        # In a TensorFlow graph without XLA, the local work on each side of a
        # collective runs as an XLA cluster.
        self.local_top = compiled.as_xla_cluster(self._local_top)

    def _local_top(self, x, *mean):
        """This replica's k largest deviations and how many of its entries
        reach the k-th largest of them."""
        _, magnitude = deviation_magnitudes(x, mean[0] if mean else None, self.mask)
        top = top_k_values(magnitude, self.k, self.axis, pad_to_k=True)
        own = expand_statistics(Cut.of(top).threshold, len(x.shape), self.axis)
        return ops.cast(top, self.dtype), _reached_count(magnitude >= own, self.axis, self.dtype)

    def weights(self, x, threshold, above, reached, *mean):
        """`_unit_weights` at the global cut (tensors only: XLA clusters take these)."""
        mean = mean[0] if mean else None
        return _unit_weights(x, mean, self.mask, self.axis, self.k, Cut(threshold, above), reached)

    def top(self, x, *mean):
        """`(value, cut, reached)`: the mean of the global k largest, where
        they end, and how many entries of all replicas reach the k-th."""
        top, reaching = self.local_top(x, *mean)
        # (replicas, channels, k) and (replicas, channels):
        _, (tops, counts) = self.merge([], [top, reaching])
        merged = ops.reshape(ops.moveaxis(tops, 0, 1), (x.shape[self.axis], -1))
        top, _ = ops.top_k(merged, self.k, sorted=False)
        cut = Cut.of(top)
        own = ops.min(tops, axis=-1)
        in_top = ops.sum(ops.cast(tops >= cut.threshold[:, None], self.dtype), axis=-1)
        reached = ops.sum(ops.where(cut.threshold > own, in_top, counts), axis=0)
        return valid_mean(top), cut, reached


def merged_top_k_magnitude_mean(x, k, axis, mask, merge, dtype):
    """The mean of the global batch's k largest `|x|` per channel (uncentered
    statistics), x being this replica's share: one collective forward
    (`_Merged.top`), one backward that sums the replicas' upstream
    gradients (each replica's loss depends on the shared statistic)."""
    merged = _Merged(k, axis, mask, merge, dtype)
    weights_at_cut = compiled.as_xla_cluster(merged.weights)

    def top_mean(x):
        value, cut, reached = merged.top(x)

        def gradient(*args, upstream=None):
            upstream = ops.cast(_upstream_only(args, upstream), dtype)
            (upstream,), _ = merge([upstream], [])
            weights = weights_at_cut(x, cut.threshold, cut.above, reached)
            return _scaled(upstream, weights, axis)

        return value, gradient

    return ops.custom_gradient(top_mean)(x)


def merged_mean_and_top_k_mean(x, count, total, k, axis, mask, merge, dtype):
    """`(mean, count, top_mean)` of the global batch, x being this replica's
    share: the mean with the global count by one collective, then the mean
    of the k largest `|x - mean|` as `_Merged.top` does.

    One op with a written-out gradient, so that the backward pass makes one
    collective where autodiff would make two (the mean's and the top-k
    mean's): it sums the replicas' upstream gradients of both with their
    sums `A_r` of the top-k mean's weights `u_i` at a fixed mean, and then
    `d/dx_i = valid_i (G_mean - G_top A) / N + G_top u_i` (the top-k mean
    depends on x through the mean too: `-A valid_i / N`).
    """
    ndim = len(x.shape)
    reduced = reduction_axes(ndim, axis)
    merged = _Merged(k, axis, mask, merge, dtype)
    count = ops.convert_to_tensor(count, dtype=dtype)

    def local_weights_sum(x, threshold, above, reached, mean):
        weights = merged.weights(x, threshold, above, reached, mean)
        return ops.sum(ops.cast(weights, dtype), axis=reduced)

    def input_gradient(x, threshold, above, reached, mean, shared, per_top):
        weights = merged.weights(x, threshold, above, reached, mean)
        valid = ops.ones((), x.dtype) if mask is None else ops.cast(mask, x.dtype)
        return valid * expand_statistics(ops.cast(shared, x.dtype), ndim, axis) + _scaled(
            per_top, weights, axis
        )

    local_weights_sum = compiled.as_xla_cluster(local_weights_sum)
    input_gradient = compiled.as_xla_cluster(input_gradient)

    def statistics(x):
        local_mean = masked_mean(x, axis, mask, count, total)
        (sums, global_count), _ = merge([local_mean * count, ops.reshape(count, (1,))], [])
        global_count = global_count[0]
        mean = sums / maximum(global_count, 1.0)
        centered = expand_statistics(ops.cast(mean, x.dtype), ndim, axis)
        value, cut, reached = merged.top(x, centered)

        def gradient(*args, upstream=None):
            upstream = ops.cast(_upstream_only(args, upstream), dtype)  # (3, channels)
            local_sum = local_weights_sum(x, cut.threshold, cut.above, reached, centered)
            (grad_mean, grad_top, weights_sum), _ = merge([upstream[0], upstream[1], local_sum], [])
            shared = (grad_mean - grad_top * weights_sum) / maximum(global_count, 1.0)
            return input_gradient(x, cut.threshold, cut.above, reached, centered, shared, grad_top)

        stacked = ops.stack([mean, value, ops.broadcast_to(global_count, ops.shape(mean))])
        return stacked, gradient

    mean, value, global_count = ops.unstack(ops.custom_gradient(statistics)(x))
    return mean, global_count[0], value
