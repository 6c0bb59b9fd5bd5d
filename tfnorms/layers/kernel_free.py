"""The weight-norm wrappers' kernel-free path for Dense, EinsumDense and
convolutions.

With `W = (V - mean) * factor` (per-unit `mean` and `factor`,
`tfnorms._math.kernel.unit_factors`), a linear layer's output is

    x @ W = (x @ V - (x @ 1) * mean) * factor

so the wrapper can run the inner layer's own product on `V` and scale its
output per unit, never forming `W` (docs/design.md, "Kernel-free weight
norm"). `x @ 1` is the sum of each input row (Dense), the layer's einsum
with a one-unit kernel of ones (EinsumDense), or a convolution of the input
with a one-channel kernel of ones (the box sum under each window); only a
centered kernel needs it.

It pays where a compiler fuses the per-unit statistics into the product
(XLA: JAX, TensorFlow with `jit_compile=True`); TensorFlow's unfused graph
is faster with `W` formed once (one kernel-sized op fewer on the backward
pass), and so is eager PyTorch; and even under XLA it pays only while the
output has fewer rows than the kernel. `pays` decides; both paths compute the
same function and gradients (tests/library/test_kernel_free.py).

Where the wrapper's Python runs at every step (PyTorch, TensorFlow eager),
it forms `W` and computes the layer's product here too (`formed_call`),
without the inner layer's `__call__`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfnorms import axes
from tfnorms._math import compiled
from tfnorms._types import Tensor

# Exact classes only: a subclass may compute something else in `call`.
_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DENSE = (keras.layers.Dense,)
_EINSUM = (keras.layers.EinsumDense,)


def supports(layer: keras.layers.Layer) -> bool:
    """Whether `layer` computes `activation(x (*) kernel + bias)` with one
    kernel whose last axis is the output unit: plain `Dense`, `ConvND` (one
    group) and `EinsumDense` with a 2-D kernel whose last letter is its unit
    and not one of the input's (so that `x @ 1` is the einsum with a
    one-unit kernel), without LoRA, quantization or an activity regularizer
    (which the layer's own `__call__` adds)."""
    if type(layer) not in _DENSE + _CONVOLUTIONS + _EINSUM:
        return False
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return False
    if type(layer) in _EINSUM:
        inputs, kernel, output = axes.einsum_terms(layer)
        if len(kernel) != 2 or kernel[1] in inputs or kernel[1] not in output:
            return False
    return layer.activity_regularizer is None and getattr(layer, "groups", 1) == 1


def _unit_axis(layer: keras.layers.Layer, rank: int) -> int:
    """The output axis of the units (non-negative) in an output of `rank`."""
    if type(layer) in _EINSUM:
        _, kernel, output = axes.einsum_terms(layer)
        position = output.index(kernel[1])
        if "..." in output and output.index("...") < position:
            return rank - (len(output) - position)  # counted from the end
        return position
    return 1 if getattr(layer, "data_format", None) == "channels_first" else rank - 1


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
    rows = _output_rows(layer, tuple(x.shape))
    if not all(isinstance(d, int) for d in rows):
        # Unknown until run time (None, or a symbolic dimension of JAX's
        # shape inference, which cannot be compared): the path that is
        # never far off.
        return False
    fan_in = math.prod(layer.kernel.shape[:-1])
    return math.prod(rows) <= fan_in


def _output_rows(layer: keras.layers.Layer, input_shape: tuple) -> list:
    """The sizes of the output's axes other than the units'. EinsumDense's
    come from the input's axes that its equation keeps (its
    `compute_output_shape` leaves free axes unknown)."""
    if type(layer) in _EINSUM:
        inputs, _, output = axes.einsum_terms(layer)
        dots = len(input_shape) - (len(inputs) - ("..." in inputs))
        sizes, axis = [], 0
        for letter in inputs:
            width = dots if letter == "..." else 1
            if letter in output:
                sizes.extend(input_shape[axis : axis + width])
            axis += width
        return sizes
    output_shape = layer.compute_output_shape(input_shape)
    unit_axis = _unit_axis(layer, len(output_shape))
    return [d for axis, d in enumerate(output_shape) if axis != unit_axis]


def _linear(layer: keras.layers.Layer, x: Tensor, kernel: Tensor) -> Tensor:
    """The layer's product of `x` and `kernel`, as its `call` computes it
    (`x` already causally padded: `_padded`)."""
    if type(layer) in _DENSE:
        return ops.matmul(x, kernel)
    if type(layer) in _EINSUM:
        return ops.einsum(layer.equation, x, kernel)
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
    """`x @ 1`: each row's sum (Dense), the einsum with a one-unit kernel of
    ones (EinsumDense), the box sum under each window (a convolution), with
    one output channel."""
    if type(layer) in _DENSE:
        return ops.sum(x, axis=-1, keepdims=True)
    return _linear(layer, x, ops.ones((*kernel_shape[:-1], 1), dtype=x.dtype))


def _channel_shape(layer: keras.layers.Layer, rank: int, units: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-unit vector over the layer's output."""
    axis = _unit_axis(layer, rank)
    if axis == rank - 1:
        return (units,)
    return (1,) * axis + (units,) + (1,) * (rank - 1 - axis)


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
    return _biased_and_activated(layer, outputs, shape)


def formed_call(layer: keras.layers.Layer, x: Tensor, kernel: Tensor) -> Tensor:
    """`layer(x)` with its kernel replaced by `kernel` (the effective kernel
    W, in the variable dtype): what the layer's `call` computes, without
    its `__call__` and the wrapper's variable substitution, whose Python
    runs at every eager step (PyTorch)."""
    outputs = _linear(layer, _padded(layer, x), ops.cast(kernel, layer.compute_dtype))
    shape = _channel_shape(layer, len(outputs.shape), int(kernel.shape[-1]))
    return _biased_and_activated(layer, outputs, shape)


def _biased_and_activated(layer, outputs, shape):
    """The layer's bias (broadcast by `shape` where the layer does not shape
    it itself) and activation on its product."""
    dtype = layer.compute_dtype
    if type(layer) in _EINSUM:
        if layer.bias is not None:  # shaped by the layer to broadcast
            outputs = outputs + ops.cast(layer.bias.value, dtype)
        return outputs if layer.activation is None else layer.activation(outputs)
    if layer.use_bias:
        outputs = outputs + ops.reshape(ops.cast(layer.bias.value, dtype), shape)
    return layer.activation(outputs)
