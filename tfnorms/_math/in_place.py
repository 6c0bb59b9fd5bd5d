"""The top-k mean's backward pass on PyTorch, in place.

In PyTorch's eager mode every op over x allocates a tensor of x's size,
and in a training step allocating and first touching that memory costs
more than the arithmetic: the backward pass of one top-k batch norm
layer on 1024x512 float32 made about twelve such tensors. Here the same
values (`top_k._unit_weights` and the count of entries reaching the cut)
come from three buffers that the later steps overwrite. Under XLA
(TensorFlow's graphs and JAX) the passes fuse and none of this applies.
"""

from __future__ import annotations

import keras


def applies(mask):
    """Whether `top_k`'s one-device gradient takes this path: PyTorch,
    without a mask (a masked entry's sentinel keeps the general path)."""
    return keras.backend.backend() == "torch" and mask is None


def sides(x, mean, cut):
    """`(sign, side, squared)`: the sign of `x - mean`, the sign of
    `|x - mean| - cut` (1 above the cut, 0 at it, -1 below) and its square."""
    import torch

    deviation = x.clone() if mean is None else x - mean
    sign = torch.sign(deviation)
    side = deviation.abs_().sub_(cut).sign_()
    return sign, side, side * side


def signed_weights(sign, side, squared, tied, half):
    """`(tied - tied side^2 + half (side^2 + side)) * sign`: the top-k
    weights (`top_k._unit_weights`) times the upstream gradient, exactly
    `2 half`, `tied` and 0 at side 1, 0 and -1; over the buffers of
    `sides`, which it consumes."""
    above = side.add_(squared).mul_(half)
    return squared.mul_(tied).neg_().add_(tied).add_(above).mul_(sign)
