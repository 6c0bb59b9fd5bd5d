"""NumPy references for the Lp batch norms, written from SPEC section 4 alone
(they share no code with tfnorms): the constants by numerical integration of
the Gaussian density rather than the Gamma formula, the statistics with
np.mean / np.abs / np.sort."""

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


def lp_statistics(x, axis, p, top_k=None, mask=None):
    """Per-channel (mean, sigma_p^2) over the valid elements. `mask` has x's
    shape with 1 on the channel axis (or None)."""
    x = np.asarray(x, np.float64)
    axis = axis % x.ndim
    moved = np.moveaxis(x, axis, -1)
    channels = moved.shape[-1]
    flat = moved.reshape(-1, channels)
    if mask is not None:
        keep = np.moveaxis(np.broadcast_to(mask, x.shape), axis, -1).reshape(-1, channels)[:, 0]
        flat = flat[keep]
    n = flat.shape[0]
    if n == 0:
        return np.zeros(channels), np.zeros(channels)
    mean = flat.mean(axis=0)
    dev = np.abs(flat - mean)
    if math.isinf(p):
        if top_k is None:
            scale = dev.max(axis=0)
        else:
            scale = np.sort(dev, axis=0)[::-1][:top_k].mean(axis=0)
        sigma = c_inf(n) * scale
    else:
        c_p = gaussian_abs_moment(p) ** (-1 / p)
        sigma = c_p * (dev**p).mean(axis=0) ** (1 / p)
    return mean, sigma**2


def normalize(x, mean, variance, axis, gamma, beta, epsilon):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    mean, variance = np.reshape(mean, shape), np.reshape(variance, shape)
    y = (x - mean) / np.sqrt(variance + epsilon)
    if gamma is not None:
        y = y * np.reshape(gamma, shape)
    if beta is not None:
        y = y + np.reshape(beta, shape)
    return y


def lp_batch_norm(x, axis, p, top_k, gamma, beta, epsilon, mask=None):
    """Training-mode output and the batch statistics."""
    mean, variance = lp_statistics(x, axis, p, top_k, mask)
    return normalize(np.asarray(x, np.float64), mean, variance, axis, gamma, beta, epsilon), (
        mean,
        variance,
    )


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
