"""(Centered) weight normalization's effective kernel on PyTorch, as one
autograd Function.

Eager PyTorch runs each Keras op as a Python call that allocates a tensor
of its result's size, and in a training step a fresh kernel-sized buffer
costs more to touch than the arithmetic on it (as for the top-k statistic,
`torch_top_k`). The closed form of `kernel.weight_norm_kernel` written with
Keras ops makes three kernel-sized tensors forward and five backward; here:

- forward: `v - mean` (kept for the backward pass) and one buffer holding
  the squares, then `W`;
- backward: one buffer, `upstream * (v - mean)` for the projections, then
  overwritten in place with `factor * upstream - (v - mean) * along - shift`.

docs/design.md, "Weight norm on PyTorch", has the measurements.
"""

from __future__ import annotations

import keras

_FUNCTION = []  # the autograd Function, once made


def applies():
    """Whether `weight_norm_kernel` computes the effective kernel: on PyTorch."""
    return keras.backend.backend() == "torch"


def weight_norm_kernel(v, scale, reduce_axes, broadcast_shape, center, epsilon):
    """`kernel.weight_norm_kernel`'s value and gradients, where `applies`:
    `scale` is per unit (the unit axes' shape), a scalar or None."""
    if not _FUNCTION:
        # Made on first use, so that torch is imported on PyTorch only (a plain
        # global, not functools.cache, which torch.compile would trace through).
        _FUNCTION.append(_make_function())
    v = keras.ops.convert_to_tensor(v)
    if scale is not None:
        scale = keras.ops.convert_to_tensor(scale).to(v.dtype)
    return _FUNCTION[0].apply(v, scale, tuple(reduce_axes), broadcast_shape, center, epsilon)


def _make_function():
    import torch

    class WeightNormKernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v, scale, axes, broadcast_shape, center, epsilon):
            centered = v - v.mean(axes, keepdim=True) if center else v
            # One buffer for the squares, then for W. (torch.linalg.vector_norm
            # over a kernel's leading axis took 6x as long as this.)
            buffer = torch.square(centered)
            inverse_norm = torch.rsqrt(buffer.sum(axes, keepdim=True).add_(epsilon))
            factor = (
                inverse_norm
                if scale is None
                else inverse_norm * scale.reshape(broadcast_shape if scale.dim() else ())
            )
            ctx.save_for_backward(centered, inverse_norm, factor)
            ctx.axes, ctx.center = axes, center
            ctx.scale_shape = None if scale is None else scale.shape
            return torch.mul(centered, factor, out=buffer)

        @staticmethod
        def backward(ctx, upstream):
            centered, inverse_norm, factor = ctx.saved_tensors
            axes = ctx.axes
            buffer = torch.mul(upstream, centered)
            projection = inverse_norm * buffer.sum(axes, keepdim=True)
            along = factor * inverse_norm * projection
            grad_v = torch.mul(upstream, factor, out=buffer)
            grad_v.addcmul_(centered, along, value=-1.0)
            if ctx.center:
                count = centered.numel() // factor.numel()
                grad_v.sub_(upstream.sum(axes, keepdim=True).mul_(factor).div_(count))
            grad_scale = None
            if ctx.scale_shape is not None and ctx.needs_input_grad[1]:
                grad_scale = (
                    projection.sum() if not ctx.scale_shape else projection.reshape(ctx.scale_shape)
                )
            return grad_v, grad_scale, None, None, None, None

    return WeightNormKernel
