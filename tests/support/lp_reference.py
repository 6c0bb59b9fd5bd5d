"""NumPy references for the Lp batch norms, written from the formulas of
docs/design.md ("Lp batch normalization") and Ioffe's Batch Renormalization
paper alone (they share no code with tfnorms): the constants by numerical
integration of the Gaussian density rather than the Gamma formula, the
statistics one channel at a time with np.mean / np.abs / np.sort."""

import functools
import math

import numpy as np


@functools.cache
def gaussian_abs_moment(p):
    """E|X|^p for X ~ N(0, 1), by the trapezoid rule on [-40, 40]."""
    t = np.linspace(-40.0, 40.0, 800_001)
    density = np.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)
    return np.trapezoid(np.abs(t) ** p * density, t)


def c_inf(n):
    n = max(n, 2)
    return (1 + math.sqrt(math.pi * math.log(4))) / (2 * math.sqrt(2 * math.log(n)))


def scale_statistics(v, p, top_k=None):
    """(mean, sigma_p^2) of the 1-D array v; (0, 0) when it is empty."""
    n = v.size
    if n == 0:
        return 0.0, 0.0
    mean = v.mean()
    dev = np.abs(v - mean)
    if math.isinf(p):
        scale = dev.max() if top_k is None else np.sort(dev)[::-1][:top_k].mean()
        sigma = c_inf(n) * scale
    else:
        c_p = gaussian_abs_moment(p) ** (-1 / p)
        sigma = c_p * (dev**p).mean() ** (1 / p)
    return mean, sigma**2


def lp_statistics(x, axis, p, top_k=None, mask=None):
    """Per-channel (mean, sigma_p^2) over the valid elements of each channel.
    `mask` broadcasts against x (None: all valid); it may differ between
    channels."""
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    flat = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    valid = np.ones(flat.shape, bool)
    if mask is not None:
        valid = np.moveaxis(np.broadcast_to(mask, x.shape), axis, -1).reshape(flat.shape)
    columns = [scale_statistics(flat[valid[:, c], c], p, top_k) for c in range(flat.shape[1])]
    mean, variance = (np.array(values) for values in zip(*columns, strict=True))
    return mean, variance


def affine(y, scale, offset, axis):
    """`y * scale + offset`, per channel on `axis` (None: left out)."""
    shape = [1] * y.ndim
    shape[axis] = y.shape[axis]
    if scale is not None:
        y = y * np.reshape(scale, shape)
    return y if offset is None else y + np.reshape(offset, shape)


def normalize(x, mean, variance, axis, gamma, beta, epsilon):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mean, variance = np.reshape(mean, shape), np.reshape(variance, shape)
    return affine((x - mean) / np.sqrt(variance + epsilon), gamma, beta, axis)


def lp_batch_norm(x, axis, p, top_k, gamma, beta, epsilon, mask=None):
    """Training-mode output and the batch statistics."""
    mean, variance = lp_statistics(x, axis, p, top_k, mask)
    return normalize(np.asarray(x, np.float64), mean, variance, axis, gamma, beta, epsilon), (
        mean,
        variance,
    )


def renorm_correction(mean, variance, renorm_mean, renorm_stddev, epsilon, clipping):
    """Batch Renormalization's (r, d): the batch statistics against the
    moving renorm ones (sigma_R floored at sqrt(epsilon), as Keras), clipped."""
    sigma_r = np.maximum(renorm_stddev, math.sqrt(epsilon))
    r = np.sqrt(variance + epsilon) / sigma_r
    d = (mean - renorm_mean) / sigma_r
    r = np.clip(r, clipping.get("rmin", -np.inf), clipping.get("rmax", np.inf))
    d = np.clip(d, -clipping.get("dmax", np.inf), clipping.get("dmax", np.inf))
    return r, d


def renorm_batch_norm(x, axis, p, top_k, gamma, beta, epsilon, r, d, mask=None):
    """Training-mode output of Batch Renormalization for a given (r, d), held
    fixed (they carry no gradient): gamma * (x_hat * r + d) + beta."""
    x = np.asarray(x, np.float64)
    mean, variance = lp_statistics(x, axis, p, top_k, mask)
    x_hat = normalize(x, mean, variance, axis, None, None, epsilon)
    return affine(affine(x_hat, r, d, axis), gamma, beta, axis)


def central_differences(f, x, eps=1e-6):
    """Gradient of the scalar f at every entry of x."""
    x = np.array(x, np.float64)
    grad = np.zeros_like(x)
    flat, out = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        up = f(x)
        flat[i] = keep - eps
        down = f(x)
        flat[i] = keep
        out[i] = (up - down) / (2 * eps)
    return grad
