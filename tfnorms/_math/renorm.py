"""Batch Renormalization (Ioffe, NeurIPS 2017), as `keras.layers.BatchNormalization`
computes it, for any scale: `variance` is the batch's `sigma_p**2` (the biased
variance at p = 2).

In training the batch statistics normalize as usual, then the correction

    r = clip(sigma_B / sigma_R, rmin, rmax)        sigma_B = sqrt(variance + epsilon)
    d = clip((mu_B - mu_R) / sigma_R, -dmax, dmax)

(gradient stopped) maps the result onto what the moving renorm statistics
`mu_R`, `sigma_R` would give: `y = gamma * (x_hat * r + d) + beta`.
docs/batch_norm.md, "Batch Renormalization", has the layer's side.
"""

from __future__ import annotations

import math
import numbers

from keras import ops

from tfnorms._math.reduce import maximum, minimum

CLIPPING_KEYS = ("rmax", "rmin", "dmax")


def clipping(value):
    """`renorm_clipping` checked: None, or a dict whose keys are among
    "rmax", "rmin", "dmax" and whose values are numbers (or None: no bound),
    with rmin <= rmax and dmax >= 0 (Keras's rules). Returned as a new dict of
    floats, or None."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - set(CLIPPING_KEYS):
        raise ValueError(
            f'`renorm_clipping` must be None or a dict with keys among "rmax", "rmin", '
            f'"dmax"; received {value!r}.'
        )
    checked = {}
    for key, bound in value.items():
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or math.isnan(bound):
            raise ValueError(
                f"`renorm_clipping[{key!r}]` must be a number or None; received {bound!r}."
            )
        checked[key] = float(bound)
    rmin, rmax = checked.get("rmin"), checked.get("rmax")
    if rmin is not None and rmax is not None and rmax < rmin:
        raise ValueError(
            f"`renorm_clipping` needs rmin <= rmax; received rmin={rmin}, rmax={rmax}."
        )
    if checked.get("dmax", 0.0) < 0:
        raise ValueError(f"`renorm_clipping` needs dmax >= 0; received dmax={checked['dmax']}.")
    return checked


def correction(mean, variance, renorm_mean, renorm_stddev, epsilon, bounds):
    """`(r, d)` of the batch statistics against the renorm ones, clipped by
    `bounds` (a checked `clipping` dict) and without gradient: the gradient
    flows through the batch statistics only, as in the paper.

    `renorm_stddev` is floored at sqrt(epsilon), as Keras does, so that a
    zero-initialized renorm scale does not divide by zero early in training.
    """
    stddev = ops.sqrt(variance + epsilon)
    floor = math.sqrt(epsilon)
    renorm_stddev = maximum(ops.cast(renorm_stddev, stddev.dtype), floor)
    r = stddev / renorm_stddev
    d = (mean - ops.cast(renorm_mean, mean.dtype)) / renorm_stddev
    if bounds.get("rmin") is not None:
        r = maximum(r, bounds["rmin"])
    if bounds.get("rmax") is not None:
        r = minimum(r, bounds["rmax"])
    if bounds.get("dmax") is not None:
        d = ops.clip(d, -bounds["dmax"], bounds["dmax"])
    return ops.stop_gradient(r), ops.stop_gradient(d)


def compose(r, d, gamma=None, beta=None):
    """The affine weights that apply the correction after normalizing:
    `gamma * (x_hat * r + d) + beta = x_hat * (r * gamma) + (d * gamma + beta)`.
    Without `gamma`, `(r, d [+ beta])`."""
    if gamma is not None:
        r, d = r * gamma, d * gamma
    return r, d if beta is None else d + beta
