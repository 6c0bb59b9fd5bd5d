"""Kernel reparameterization: the effective kernel of (centered) weight
normalization and of bounded weight norm, per output unit.

The output-unit axes come from `tfnorms.axes`; docs/design.md, "Output units",
says which axes those are for every kernel kind.
"""

from __future__ import annotations

from keras import ops

from tfnorms._math import compiled, fused_tf, torch_kernel


def _count(shape, axes):
    count = 1
    for axis in axes:
        count *= int(shape[axis])
    return count


def unit_means(v, reduce_axes):
    """Each output unit's mean of `v` (keeping the reduced axes), exact for
    a unit of equal weights: `sum(v) / count` is not, where the division
    becomes a product with a rounded `1 / count` (TensorFlow's graph
    optimizer and XLA both do that) or the sum rounds, and `v - mean` then
    holds rounding noise that the unit's `1 / sqrt(epsilon)` amplifies.

    Such a unit is found by its maximum equalling its minimum: two
    reductions that read `v` as it is, where an exact shifted mean,
    `first + sum(v - first) / count`, cost XLA's CPU backend a kernel-sized
    buffer for `v - first` (JAX step memory of the bench MLP: 1.11x the
    plain model's, against 1.00x).
    """
    reduce_axes = tuple(reduce_axes)
    # sum / count rather than ops.mean: Keras 3.15's JAX mean rounds float64
    # through float32, which breaks the exact zero-mean property in tests.
    mean = ops.sum(v, axis=reduce_axes, keepdims=True) / _count(v.shape, reduce_axes)
    largest = ops.max(v, axis=reduce_axes, keepdims=True)
    return ops.where(largest == ops.min(v, axis=reduce_axes, keepdims=True), largest, mean)


def center_kernel(v, reduce_axes):
    """`v - mean(v)` over each output unit's axes (exactly 0 for a unit of
    equal weights: `unit_means`)."""
    return v - unit_means(v, reduce_axes)


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


def unit_factors(v, scale, reduce_axes, broadcast_shape, center, epsilon):
    """`(mean, factor)` with `W = (v - mean) * factor`, each of
    `broadcast_shape`: the per-unit statistics of `weight_norm_kernel`
    (`mean` is None without centering), for computing `x @ W` without `W`.

    Autodiff, where XLA fuses it into a pass over `v` forward and one
    backward. The squared norm's centering is a constant to autodiff: its
    gradient through the mean is `-2 * sum(v - mean) = 0`, and without it
    autodiff would add a reduction pass over `v` to compute that zero.
    """
    reduce_axes = tuple(reduce_axes)
    mean = ops.sum(v, axis=reduce_axes, keepdims=True) / _count(v.shape, reduce_axes)
    centered = v - ops.stop_gradient(mean) if center else v
    factor = ops.rsqrt(ops.sum(ops.square(centered), axis=reduce_axes, keepdims=True) + epsilon)
    if scale is not None:
        factor = factor * (scale if len(scale.shape) == 0 else ops.reshape(scale, broadcast_shape))
    return (mean if center else None), factor


def weight_norm_kernel(v, scale, reduce_axes, broadcast_shape, center, epsilon):
    """The effective kernel `W` of (centered) weight normalization.

    Args:
        v: the proxy kernel `V`.
        scale: per-unit scale `g` (shape of the unit axes), a scalar, or None
            for no scale.
        reduce_axes: the axes of one output unit (`R` in docs/design.md, "Output units").
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

    Where `fused_tf.applies` (large centered kernels in TensorFlow graphs
    without XLA on a CPU), TensorFlow's fused batch norm op computes the
    same kernel, and its registered gradient the same closed form. On
    PyTorch, `torch_kernel` computes it as one autograd Function.
    """
    reduce_axes = tuple(reduce_axes)
    if fused_tf.applies(v, reduce_axes, center):
        scale = None if scale is None else ops.cast(scale, v.dtype)
        return fused_tf.centered_kernel(ops.convert_to_tensor(v), scale, reduce_axes, epsilon)
    if torch_kernel.applies():
        return torch_kernel.weight_norm_kernel(
            v, scale, reduce_axes, broadcast_shape, center, epsilon
        )
    normalized = _written_out(reduce_axes, broadcast_shape, center, epsilon, compiled.by_xla())

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

    The `per_unit_gain` variant of bounded weight norm (docs/design.md, "Bounded weight norm"):
    `rho_F * g / ||g||`, so the units' relative sizes are learned while the
    layer's total norm stays fixed.
    """
    return gain * (frobenius_norm * ops.rsqrt(ops.sum(ops.square(gain)) + epsilon))


def _unit_shaped(value, broadcast_shape):
    """A per-unit or scalar scale, broadcastable against v."""
    return value if len(value.shape) == 0 else ops.reshape(value, broadcast_shape)


def _kernel_statistics(v, scale, reduce_axes, broadcast_shape, center, epsilon):
    """`(mean, centered, inverse_norm, factor)`: `centered` is `v - mean`
    (`unit_means`; v and a None mean without centering), the rest per unit."""
    mean = unit_means(v, reduce_axes) if center else None
    centered = v - mean if center else v
    squared_norm = ops.sum(ops.square(centered), axis=reduce_axes, keepdims=True)
    inverse_norm = ops.rsqrt(squared_norm + epsilon)
    factor = inverse_norm * _unit_shaped(scale[0], broadcast_shape) if scale else inverse_norm
    return mean, centered, inverse_norm, factor


def _kernel_gradients(v, scale, upstream, statistics, reduce_axes, broadcast_shape, center, fused):
    """The closed-form gradients `(grad_v, *grad_scale)` of `weight_norm_kernel`
    from `_kernel_statistics`; `fused`: under XLA."""
    mean, centered, inverse_norm, factor = statistics
    # factor * (upstream - w_hat * projection - mean(upstream)), with
    # w_hat = centered * inverse_norm recomputed, written as
    # factor * upstream - centered * (per-unit) - (per-unit): the
    # fewest kernel-sized ops (TensorFlow's graph runs each unfused).
    if center:
        upstream_sum = ops.sum(upstream, axis=reduce_axes, keepdims=True)
        shift = factor * upstream_sum / _count(v.shape, reduce_axes)
        if fused:
            # <upstream, v - mean> as <upstream, v - r> - (mean - r) *
            # sum(upstream), with r each unit's first weight: the forward
            # pass's v - mean kept for the backward would be a kernel-sized
            # buffer under XLA, while v - r, read by the reduction alone,
            # fuses into it. Both terms keep the spread's magnitude (with v
            # itself they would cancel where the mean is large against the
            # spread) and are exactly 0 for a unit of equal weights.
            reference = ops.slice(v, (0,) * len(v.shape), broadcast_shape)
            inner = ops.sum(upstream * (v - reference), axis=reduce_axes, keepdims=True)
            projection = inverse_norm * (inner - (mean - reference) * upstream_sum)
            along = factor * inverse_norm * projection
            grad_v = factor * upstream - v * along - (shift - mean * along)
        else:
            projection = inverse_norm * ops.sum(
                upstream * centered, axis=reduce_axes, keepdims=True
            )
            along = factor * inverse_norm * projection
            grad_v = factor * upstream - centered * along - shift
    else:
        projection = inverse_norm * ops.sum(upstream * v, axis=reduce_axes, keepdims=True)
        grad_v = factor * upstream - v * (factor * inverse_norm * projection)
    if not scale:
        return (grad_v,)
    if len(scale[0].shape) == 0:
        return grad_v, ops.sum(projection)
    return grad_v, ops.reshape(projection, scale[0].shape)


def _written_out(reduce_axes, broadcast_shape, center, epsilon, fused):
    """`weight_norm_kernel` of `(v, *scale)` with its closed-form gradient."""

    @ops.custom_gradient
    def normalized(v, *scale):
        statistics = _kernel_statistics(v, scale, reduce_axes, broadcast_shape, center, epsilon)
        centered, factor = statistics[1], statistics[3]

        def gradient(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            grads = _kernel_gradients(
                v, scale, upstream, statistics, reduce_axes, broadcast_shape, center, fused
            )
            return grads if scale else grads[0]

        return centered * factor, gradient

    return normalized
