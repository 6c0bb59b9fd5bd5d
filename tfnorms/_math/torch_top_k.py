"""Top-k batch norm's statistic on PyTorch, as one autograd Function.

In eager PyTorch each Keras op is a Python call with its own conversions,
and each op over x allocates a tensor of x's size, whose first touch costs
more than the arithmetic (a `where` over 1024x512 float32 took about
0.9 ms, a product 0.04 ms). The general `top_k.top_k_deviation_mean` makes
dozens of Keras calls per training step. Here the same values come from:

- forward: the deviations, made absolute in place, and the blockwise
  selection of `select._blockwise_top_k` with `torch.topk` over contiguous
  candidates (over a transposed view it was about 2x slower);
- backward: two buffers overwritten in place. Each entry's level is
  `sign(|x - mean| - t) + 1` (2 above the cut t, 1 at it, 0 below); the
  count of tied entries is the sum of the levels minus twice the count
  above t, which the forward pass kept; the weights `1/k` above, `tied`
  at and 0 below are `a * level - (a - tied)` clamped to `[0, a]`, with
  `a = 1/k >= tied >= 0`.

docs/design.md, "Top-k statistic on PyTorch", has the measurements.
"""

from __future__ import annotations

import math

import keras

from tfnorms._math import torch_reduce
from tfnorms._math.reduce import kept_axes, statistics_dtype
from tfnorms._math.select import top_k_block_size


def applies(x, k, axis, mask):
    """PyTorch, no mask, and at least k entries per channel (the general
    path pads short channels with sentinels)."""
    if keras.backend.backend() != "torch" or mask is not None:
        return False
    kept = kept_axes(len(x.shape), axis)
    return math.prod(x.shape) // max(math.prod(x.shape[a] for a in kept), 1) >= k


def top_k_deviation_mean(x, mean, k, axis):
    """`top_k.top_k_deviation_mean(x, mean, k, axis)` where `applies`: x
    laid out as (entries, channels), the channels being the kept axes."""
    ndim = len(x.shape)
    kept = kept_axes(ndim, axis)
    order = tuple(a for a in range(ndim) if a not in kept) + kept
    kept_sizes = tuple(x.shape[a] for a in kept)
    channels = math.prod(kept_sizes)
    centered = None
    if mean is not None:
        # Size 1 on the reduced axes: (1, channels) without a copy of x's size.
        shape = [x.shape[a] if a in kept else 1 for a in range(ndim)]
        padded = mean.reshape((1,) * (ndim - mean.dim()) + tuple(mean.shape))
        centered = padded.expand(shape).permute(order).reshape(1, channels)
    columns = x.permute(order).reshape(-1, channels)
    return _function().apply(columns, centered, k).reshape(kept_sizes)


def _k_largest(magnitudes, k):
    """(channels, k): the k largest of each column of (n, channels)."""
    import torch

    n, channels = magnitudes.shape
    block = top_k_block_size(n, k)
    if block is None:
        return torch.topk(magnitudes.t().contiguous(), k, dim=1, sorted=False).values
    maxima = torch_reduce.extreme(magnitudes.view(n // block, block, channels), (1,), True)
    best = torch.topk(maxima.t().contiguous(), k, dim=1, sorted=False).indices  # (channels, k)
    # Gathered from the transposed view, the candidates come out contiguous
    # per channel, and the expanded index is a view: no index arithmetic
    # and no transposing copy (the selection took 15-20% less time).
    by_channel = magnitudes.t().view(channels, n // block, block)
    candidates = torch.gather(by_channel, 1, best.unsqueeze(2).expand(channels, k, block))
    return torch.topk(candidates.reshape(channels, k * block), k, dim=1, sorted=False).values


def _deviations(x, mean):
    """A fresh tensor of `x - mean` (mean None: a copy of x)."""
    return x.clone() if mean is None else x - mean


_FUNCTION = []  # the autograd Function, once made


def _function():
    """The autograd Function, made on first use: torch is imported only on
    the PyTorch backend. (A plain global, not functools.cache, which
    torch.compile would trace through.)"""
    if not _FUNCTION:
        _FUNCTION.append(_make_function())
    return _FUNCTION[0]


def _make_function():
    import torch

    class TopKDeviationMean(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, mean, k):
            top = _k_largest(_deviations(x, mean).abs_(), k)
            dtype = getattr(torch, statistics_dtype(keras.backend.standardize_dtype(x.dtype)))
            threshold = top.amin(1)
            above = (top > threshold[:, None]).sum(1, dtype=dtype)
            ctx.save_for_backward(x, mean, threshold, above)
            ctx.k = k
            return top.to(dtype).mean(1)

        @staticmethod
        def backward(ctx, upstream):
            x, mean, threshold, above = ctx.saved_tensors
            k, dtype = ctx.k, above.dtype
            deviation = _deviations(x, mean)
            # side + 1: 2 above the cut, 1 at it, 0 below.
            level = torch.abs(deviation).sub_(threshold).sign_().add_(1.0)
            # The `above` entries at level 2 are those counted in the forward pass.
            tied = level.sum(0, dtype=dtype) - 2.0 * above
            per_above = 1.0 / k
            per_tied = (k - above) / torch.clamp(tied, min=1.0) / k  # in [0, per_above]
            # Per level 0, 1, 2: 0, per_tied, per_above, as per_above * level
            # - (per_above - per_tied) clamped to [0, per_above], in place.
            offset = (per_above - per_tied).to(x.dtype)
            weights = level.mul_(per_above).sub_(offset).clamp_(min=0.0, max=per_above)
            grad_x = weights.mul_(deviation.sign_().mul_(upstream.to(x.dtype)))
            grad_mean = None
            if mean is not None and ctx.needs_input_grad[1]:
                grad_mean = -grad_x.sum(0, keepdim=True).to(mean.dtype)
            return grad_x, grad_mean, None

    return TopKDeviationMean
