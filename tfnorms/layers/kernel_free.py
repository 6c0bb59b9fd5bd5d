"""The weight-norm wrappers' kernel-free path for Dense and convolutions.

With `W = (V - mean) * factor` (per-unit `mean` and `factor`,
`tfnorms._math.kernel.unit_factors`), a linear layer's output is

    x @ W = (x @ V - (x @ 1) * mean) * factor

so the wrapper can run the inner layer's own product on `V` and scale its
output per unit, never forming `W` (docs/design.md, "Kernel-free weight
norm"). `x @ 1` is the sum of each input row (Dense) or a convolution of the
input with a one-channel kernel of ones (the box sum under each window);
only a centered kernel needs it.

It pays where a compiler fuses the per-unit statistics into the product
(XLA: JAX, TensorFlow with `jit_compile=True`); TensorFlow's unfused graph
is faster with `W` formed once (one kernel-sized op fewer on the backward
pass), and so is eager PyTorch; and even under XLA it pays only while the
output has fewer rows than the kernel. `pays` decides; both paths compute the
same function and gradients (tests/library/test_kernel_free.py).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnorms._math import compiled
from tfnorms._types import Tensor

# Exact classes only: a subclass may compute something else in `call`.
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DENSE = (keras.layers.Dense,)


def supports(layer: keras.layers.Layer) -> bool:
    """Whether `layer` computes `activation(x (*) kernel + bias)` with one
    kernel whose last axis is the output unit: plain `Dense` and `ConvND`
    (one group), without LoRA, quantization or an activity regularizer
    (which the layer's own `__call__` adds)."""
    if type(layer) not in _DENSE + _CONVOLUTIONS:
        return False
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return False
    return layer.activity_regularizer is None and getattr(layer, "groups", 1) == 1


def pays(layer: keras.layers.Layer, x: Tensor) -> bool:
    """Whether this call should take the kernel-free path: under XLA, not in
    float16 (`x @ V`, V unnormalized, its norm growing in training, could
    overflow where `x @ W` does not), and only where the layer's output has
    no more rows than its kernel (batch times output positions at most the
    fan-in): the path trades passes over the kernel for passes over the
    output, which cost more once the output is the larger (docs/design.md,
    "Kernel-free weight norm", has the measurements)."""
    if layer.compute_dtype == "float16" or not compiled.by_xla():
        return False
    output_shape = layer.compute_output_shape(tuple(x.shape))
    channel_axis = 1 if getattr(layer, "data_format", None) == "channels_first" else -1
    rows = [d for axis, d in enumerate(output_shape) if axis != channel_axis % len(output_shape)]
    if any(d is None for d in rows):
        return False  # unknown until run time: the path that is never far off
    fan_in = math.prod(layer.kernel.shape[:-1])
    return math.prod(rows) <= fan_in


def _linear(layer: keras.layers.Layer, x: Tensor, kernel: Tensor) -> Tensor:
    """The layer's product of `x` and `kernel`, as its `call` computes it
    (`x` already causally padded: `_padded`)."""
    if type(layer) in _DENSE:
        return ops.matmul(x, kernel)
    return ops.conv(
        x,
        kernel,
        strides=list(layer.strides),
        padding="valid" if layer.padding == "causal" else layer.padding,
        dilation_rate=layer.dilation_rate,
        data_format=layer.data_format,
    )


def _padded(layer: keras.layers.Layer, x: Tensor) -> Tensor:
    """`x` with Conv1D's causal padding (its `call` pads, then convolves
    with "valid"): `dilation * (kernel_size - 1)` steps before the start."""
    if getattr(layer, "padding", None) != "causal":
        return x
    steps = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    time_axis = 1 if layer.data_format == "channels_last" else 2
    return ops.pad(x, [[steps, 0] if axis == time_axis else [0, 0] for axis in range(3)])


def _input_sums(layer: keras.layers.Layer, x: Tensor, kernel_shape) -> Tensor:
    """`x @ 1`: each row's sum (Dense), the box sum under each window
    (a convolution), with one output channel."""
    if type(layer) in _DENSE:
        return ops.sum(x, axis=-1, keepdims=True)
    return _linear(layer, x, ops.ones((*kernel_shape[:-1], 1), dtype=x.dtype))


def _channel_shape(layer: keras.layers.Layer, rank: int, units: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-unit vector over the layer's output."""
    if getattr(layer, "data_format", None) == "channels_first":
        return (1, units) + (1,) * (rank - 2)
    return (units,)


def call(
    layer: keras.layers.Layer, x: Tensor, v: Tensor, mean: Tensor | None, factor: Tensor
) -> Tensor:
    """`layer(x)` with kernel `(v - mean) * factor`, without forming it.

    `x` is in the layer's compute dtype; `v`, `mean` and `factor` in the
    variable dtype (cast here, as the layer casts its kernel).
    """
    dtype = layer.compute_dtype
    x = _padded(layer, x)
    outputs = _linear(layer, x, ops.cast(v, dtype))
    shape = _channel_shape(layer, len(outputs.shape), int(v.shape[-1]))
    factor = ops.cast(ops.reshape(factor, shape), dtype)
    outputs = outputs * factor
    if mean is not None:  # minus (x @ 1) * mean * factor
        sums = _input_sums(layer, x, v.shape)  # one channel
        shift = ops.cast(ops.reshape(mean, shape), dtype) * factor
        if len(shape) == 1:
            # A rank-one product, not a broadcast multiply: XLA fuses the
            # latter into the main product's consumers badly (about 1.4x
            # the step of a Dense MLP on CPU, against 1.14x this way).
            outputs = outputs - ops.matmul(sums, ops.expand_dims(shift, 0))
        else:
            outputs = outputs - sums * shift
    if layer.use_bias:
        outputs = outputs + ops.reshape(ops.cast(layer.bias.value, dtype), shape)
    return layer.activation(outputs)
