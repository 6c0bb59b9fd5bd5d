"""Pure math shared by the layers, written with `keras.ops` only.

Each function takes and returns tensors and holds no state, so the tests
check it against NumPy directly and every layer stays a thin shell.
"""

from __future__ import annotations

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
    """
    w = unit_normalize(v, reduce_axes, center, epsilon)
    if scale is None:
        return w
    if len(scale.shape) == 0:
        return w * scale
    return w * ops.reshape(scale, broadcast_shape)


def fixed_frobenius_gain(gain, frobenius_norm, epsilon):
    """Per-unit gains rescaled so that their joint norm is `frobenius_norm`.

    The `per_unit_gain` variant of bounded weight norm (SPEC section 3):
    `rho_F * g / ||g||`, so the units' relative sizes are learned while the
    layer's total norm stays fixed.
    """
    return gain * (frobenius_norm * ops.rsqrt(ops.sum(ops.square(gain)) + epsilon))
