"""The data-dependent initialization of Salimans & Kingma (2016, section 3.1)
as a pure function: from one batch of a layer's pre-activations, the scale
`g` and bias that give every output unit mean 0 and variance 1 on that batch
(docs/weight_norm.md, "Data-dependent initialization")."""

from __future__ import annotations

from keras import ops

from tfnorms._types import Tensor

# A unit whose standard deviation is below this share of its mean's size is
# constant on the batch, up to float32 rounding: it keeps its scale.
_CONSTANT_UNIT = 1e-6


def unit_moments(
    pre_activation: Tensor, channel_axis: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and variance of each unit (the channel axis) over every other
    axis, in float32 (two passes, so an offset does not eat the variance).
    `mask` (the other axes' shape, True where valid) leaves padded positions
    out, as every statistic of the package does."""
    z = ops.cast(pre_activation, "float32")
    z = ops.moveaxis(z, channel_axis, -1)
    z = ops.reshape(z, (-1, z.shape[-1]))
    if mask is None:
        mean = ops.mean(z, axis=0)
        return mean, ops.mean(ops.square(z - mean), axis=0)
    valid = ops.reshape(ops.cast(mask, "float32"), (-1, 1))
    count = ops.maximum(ops.sum(valid), 1.0)
    mean = ops.sum(z * valid, axis=0) / count
    return mean, ops.sum(ops.square(z - mean) * valid, axis=0) / count


def standardizing_update(
    scale: Tensor, bias: Tensor | None, mean: Tensor, variance: Tensor
) -> tuple[Tensor, Tensor | None]:
    """`(g', b')` such that `z' = (z - b) * g'/g + b'` has mean 0 and variance
    1 per unit, where `z = x . (g v/|v|) + b` had `mean` and `variance`:
    `g' = g / std` and `b' = (b - mean) / std`. `scale` may have any shape
    holding the units in order (a DepthwiseConv's `(channels, multiplier)`);
    `bias` is flat or `None` (then only the variance is set)."""
    constant = variance <= ops.square(_CONSTANT_UNIT * mean)
    factor = ops.where(constant, 1.0, ops.rsqrt(ops.where(constant, 1.0, variance)))
    g = ops.cast(scale, "float32") * ops.reshape(factor, ops.shape(scale))
    if bias is None:
        return g, None
    b = ops.reshape(ops.cast(bias, "float32"), (-1,))
    return g, (b - mean) * factor
