"""Centered weight normalization's effective kernel as one TensorFlow op.

Each output unit's `g * (v - mean) / sqrt(||v - mean||^2 + epsilon)` is
batch normalization in training mode with the unit as the channel and its
`n` weights as the batch: `||v - mean||^2 = n * variance`, so

    W = (g / sqrt(n)) * (v - mean) / sqrt(variance + epsilon / n),

which `FusedBatchNormV3` computes in one op, and its registered gradient
(`FusedBatchNormGradV3`, the same closed form as the CWN paper's eq. 3)
in one more. A TensorFlow graph without XLA otherwise runs each of the
kernel's elementwise ops as a pass of its own (docs/design.md, "Centered
weight norm in TensorFlow graphs", has the measurements).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnorms._math import compiled

# Below this many weights the op's own cost (about 0.2-0.3 ms per training
# step on a 2-core CPU) exceeds the passes it saves: measured 0.26 ms slower
# on a (256, 256) kernel, 0.08 ms faster on (1024, 128), 0.3 ms on (512, 512).
MIN_FUSED_WEIGHTS = 2**17


def applies(v, reduce_axes, center):
    """Whether `centered_kernel` computes `v`'s effective kernel: TensorFlow
    without XLA on a CPU with oneDNN (whose fused batch norm this rests on;
    TensorFlow's own CPU kernel was slower than the separate ops), centered,
    a float32 kernel of at least `MIN_FUSED_WEIGHTS` whose unit axes are
    its last ones (a reshape, not a transpose, makes it (1, 1, n, units))."""
    if keras.backend.backend() != "tensorflow" or not center:
        return False
    if keras.backend.standardize_dtype(v.dtype) != "float32":
        return False
    if math.prod(v.shape) < MIN_FUSED_WEIGHTS:
        return False
    if tuple(reduce_axes) != tuple(range(len(reduce_axes))):
        return False
    return not compiled.by_xla() and _on_cpu_with_onednn()


def _on_cpu_with_onednn():
    import tensorflow as tf

    try:  # TensorFlow's own test for oneDNN, not a public API
        from tensorflow.python.util._pywrap_util_port import IsMklEnabled
    except ImportError:  # pragma: no cover - a TensorFlow without it
        return False
    return not tf.config.list_logical_devices("GPU") and IsMklEnabled()


def centered_kernel(v, scale, reduce_axes, epsilon):
    """`weight_norm_kernel(v, scale, reduce_axes, ..., center=True, epsilon)`
    where `applies`; `scale` per unit (the unit axes' shape), a scalar or
    None."""
    import tensorflow as tf

    n = math.prod(v.shape[a] for a in reduce_axes)
    units = math.prod(v.shape) // n
    if scale is None:
        gain = ops.full((units,), n**-0.5, dtype="float32")
    else:
        gain = ops.broadcast_to(ops.reshape(scale, (-1,)) * n**-0.5, (units,))
    normalized, *_ = tf.raw_ops.FusedBatchNormV3(
        x=ops.reshape(v, (1, 1, n, units)),
        scale=gain,
        offset=ops.zeros((units,), dtype="float32"),
        mean=ops.zeros((0,), dtype="float32"),
        variance=ops.zeros((0,), dtype="float32"),
        epsilon=epsilon / n,
        exponential_avg_factor=1.0,
        data_format="NHWC",
        is_training=True,
    )
    return ops.reshape(normalized, v.shape)
