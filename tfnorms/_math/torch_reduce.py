"""Maxima and minima over leading axes on PyTorch, at about the speed of a sum.

PyTorch's CPU kernel for `amax`/`amin` over an axis that is not the
innermost runs vectorized only where the contiguous width it keeps (the
product of the axes after the reduced ones) is a multiple of 32 elements;
any other width takes an element-by-element path. Over the rows of a
(131072, 16) float32 tensor (batch norm after a 16-channel convolution,
channels last) that took 5.4 ms against 0.16 ms for a sum (PyTorch 2.13,
2-core x86 CPU); widths 8, 24, 40 and 48 were as slow, 32, 64 and 96 fast.

Viewing `g` consecutive reduced rows as one row of `g * width`, with
`g * width` a multiple of 32, takes the fast path; a second reduction over
the `g` groups of the small result finishes it: 0.07 ms there. Both are
exact (an extreme is one of the entries). docs/design.md, "Lp batch
normalization", has the measurements in a training step.
"""

from __future__ import annotations

import math

import keras

# The kept width (in elements) that PyTorch's outer reduction vectorizes.
VECTOR_WIDTH = 32


def applies(values):
    """PyTorch, a tensor on the CPU (where the slow path was measured; a
    GPU's reductions have no such width rule to work around), not being
    differentiated through this reduction: autograd shares an extreme's
    gradient evenly among its ties, which two stages would not (the callers
    under a custom gradient do not need it)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    on_cpu = values.device.type == "cpu"
    return on_cpu and not (torch.is_grad_enabled() and values.requires_grad)


def outer_extreme(values, axes, largest):
    """`amax` (`largest`) or `amin` of `values` over `axes`, without keeping
    them; None where the grouped form does not apply or is not needed: no
    axes, or not one run of consecutive axes of a contiguous tensor, the
    innermost axes (a reduction PyTorch vectorizes along them), the kept
    width after them is already a multiple of `VECTOR_WIDTH`, or the
    rows do not split into whole groups (unless nothing comes before
    them, where the last rows are reduced on their own)."""
    axes = sorted(int(a) % values.dim() for a in axes)
    if not axes:
        return None
    first, stop = axes[0], axes[-1] + 1
    if axes != list(range(first, stop)) or not values.is_contiguous() or values.numel() == 0:
        return None
    shape = tuple(values.shape)
    outer, rows = math.prod(shape[:first]), math.prod(shape[first:stop])
    width = math.prod(shape[stop:])
    group = VECTOR_WIDTH // math.gcd(width, VECTOR_WIDTH)
    whole = rows - rows % group
    if width == 1 or group == 1 or whole == 0 or (whole < rows and outer > 1):
        return None
    columns = values.view(outer, rows, width)
    result = _grouped(columns[:, :whole], group, largest)
    if whole < rows:
        rest = _reduce(columns[:, whole:], 1, largest)
        result = _pairwise(result, rest, largest)
    return result.view(shape[:first] + shape[stop:])


def extreme(values, axes, largest):
    """`outer_extreme` where it `applies`, else PyTorch's own reduction."""
    result = outer_extreme(values, axes, largest) if applies(values) else None
    return _reduce(values, tuple(axes), largest) if result is None else result


def _grouped(columns, group, largest):
    """Extremes over axis 1 of a contiguous `(outer, rows, width)` view whose
    rows are a multiple of `group`, through rows of `group * width`."""
    outer, rows, width = columns.shape
    partial = _reduce(columns.reshape(outer, rows // group, group * width), 1, largest)
    return _reduce(partial.view(outer, group, width), 1, largest)


def _reduce(values, axis, largest):
    return values.amax(axis) if largest else values.amin(axis)


def _pairwise(a, b, largest):
    import torch

    return torch.maximum(a, b) if largest else torch.minimum(a, b)
