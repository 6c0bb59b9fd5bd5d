"""How per-replica statistics become the statistics of the global batch.

The statistics functions (`tfnorms._math.stats`) take one of these objects and
call it at each stage that a synchronized computation must share (the mean and
its count, the scale); they never test whether they run distributed.

- `LOCAL`: no other replicas; every stage returns its input, and the two
  selection stages use the single-device kernels of `tfnorms._math.select`
  and `tfnorms._math.top_k`, whose gradients are written out.
- `Replicated(merge)`: `merge(sums, gathers)` is one collective that sums
  `sums` over the replicas and stacks each of `gathers` on a new leading
  replica axis (`tfnorms.distribute.cross_replica_reduce` on TensorFlow).
  Each stage makes one call: the mean with the count; then the scale. The
  maximum needs no deviations, so its extremes ride in the mean's collective;
  p = 2 without a mask gathers each replica's moments in one collective.

docs/distributed.md describes the collectives and their cost.
"""

from __future__ import annotations

from keras import ops

from tfnorms._math import select, top_k
from tfnorms._math.reduce import (
    expand_statistics,
    kept_axes,
    masked_mean,
    maximum,
    statistics_dtype,
    zero_if_empty,
)


def _local_moments(x, axes, count):
    """This batch's mean and biased variance in the statistics dtype; zeros
    where it has no elements (`ops.moments` gives 0/0 there)."""
    dtype = statistics_dtype(x.dtype)
    if not axes:
        # Nothing to reduce (a 1-D input, each entry its own channel): Keras's
        # PyTorch `moments` reads an empty tuple of axes as all of them.
        mean = ops.cast(x, dtype)
        return mean, ops.zeros_like(mean)
    mean, variance = ops.moments(x, axes)
    return (zero_if_empty(ops.cast(m, dtype), count) for m in (mean, variance))


class LocalReduction:
    """The statistics of the batch this call sees."""

    def check(self, ndim, axis, count):
        """Nothing to check: local statistics take any kept axes and masks."""

    def moments(self, x, axes, count):
        """`(mean, variance, count)`: the biased moments in one fused op
        (`tf.nn.moments` on TensorFlow), the cost of Keras's own batch norm."""
        mean, variance = _local_moments(x, axes, count)
        return mean, variance, count

    def mean(self, mean, count):
        return mean, count

    def count(self, count, dtype):
        return count

    def moment(self, moment, local_count, count):
        return moment

    def mean_and_max_deviation(self, x, mean, count, axis, mask):
        """`(mean, count, max|x - mean|)` per channel."""
        return mean, count, select.max_abs_deviation(x, mean, axis, mask)

    def top_k_mean(self, x, k, axis, mask, dtype):
        """The mean of the k largest `|x|` per channel (uncentered)."""
        return ops.cast(top_k.top_k_deviation_mean(x, None, k, axis, mask), dtype)

    def mean_and_top_k_mean(self, x, count, total, k, axis, mask, dtype):
        """`(mean, count, mean of the k largest |x - mean|)` per channel."""
        mean = masked_mean(x, axis, mask, count, total)
        centered = expand_statistics(ops.cast(mean, x.dtype), len(x.shape), axis)
        top_mean = top_k.top_k_deviation_mean(x, centered, k, axis, mask)
        return mean, count, ops.cast(top_mean, dtype)


LOCAL = LocalReduction()


def _global_mean(sums, count):
    """The global mean from the replicas' summed `mean * count`."""
    return sums / maximum(count, 1.0)


class Replicated:
    """The statistics of the global batch, gathered with `merge` (see the
    module docstring): one channel axis, a count shared by every channel."""

    def __init__(self, merge):
        self._merge = merge

    def check(self, ndim, axis, count):
        if len(kept_axes(ndim, axis)) != 1 or len(getattr(count, "shape", ())) != 0:
            raise ValueError(
                "Synchronized statistics need one channel axis and a mask shared by all "
                f"channels; received axis={axis!r} and a count of shape "
                f"{tuple(getattr(count, 'shape', ()))}."
            )

    def moments(self, x, axes, count):
        """`(mean, variance, count)` of the global batch in one collective.

        Each replica takes its own moments in one fused op and the replicas'
        `(count, mean, variance)` are gathered; every replica then combines
        them exactly (Chan et al.'s pairwise formula, summed):
        `mu = sum(n_r mu_r) / N`, `var = sum(n_r (var_r + (mu_r - mu)**2)) / N`.
        Unlike sums of squares, no term cancels, so it is as accurate as one
        device's two passes. A replica with no rows contributes zeros.
        """
        mean, variance = _local_moments(x, axes, count)
        count = ops.convert_to_tensor(count, dtype=mean.dtype)
        _, (counts, means, variances) = self._merge(
            [], [ops.reshape(count, (1,)), mean, variance]
        )  # (replicas, 1), (replicas, channels) twice
        total = ops.sum(counts)
        weights = counts / maximum(total, 1.0)
        global_mean = ops.sum(weights * means, axis=0)
        spread = variances + ops.square(means - global_mean)
        return global_mean, ops.sum(weights * spread, axis=0), total

    def _sums_with_count(self, sums, count, gathers=()):
        summed, gathered = self._merge([*sums, ops.reshape(count, (1,))], list(gathers))
        return summed[:-1], summed[-1][0], gathered

    def mean(self, mean, count):
        count = ops.convert_to_tensor(count, dtype=mean.dtype)
        (sums,), count, _ = self._sums_with_count([mean * count], count)
        return _global_mean(sums, count), count

    def count(self, count, dtype):
        _, count, _ = self._sums_with_count([], ops.convert_to_tensor(count, dtype=dtype))
        return count

    def moment(self, moment, local_count, count):
        (summed,), _ = self._merge([moment * local_count], [])
        return _global_mean(summed, count)

    def mean_and_max_deviation(self, x, mean, count, axis, mask):
        high, low = select.replica_extremes(x, axis, mask)
        count = ops.convert_to_tensor(count, dtype=mean.dtype)
        (sums,), count, (highs, lows) = self._sums_with_count([mean * count], count, [high, low])
        mean = _global_mean(sums, count)
        high, low = ops.max(highs, axis=0), ops.min(lows, axis=0)
        return mean, count, maximum(ops.maximum(high - mean, mean - low), 0.0)

    def mean_and_top_k_mean(self, x, count, total, k, axis, mask, dtype):
        # One op: the backward pass then makes one collective, not two.
        return top_k.merged_mean_and_top_k_mean(x, count, total, k, axis, mask, self._merge, dtype)

    def top_k_mean(self, x, k, axis, mask, dtype):
        return top_k.merged_top_k_magnitude_mean(x, k, axis, mask, self._merge, dtype)
