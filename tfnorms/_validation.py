"""Argument checks shared by every public class: fail early, say what is allowed."""

from __future__ import annotations

import math
import numbers

import keras


def positive_float(name, value, *, allow_none=False):
    """A finite real number > 0 (or None when allowed), returned as float."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a finite number > 0"
            + (" or None" if allow_none else "")
            + f"; received {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a finite number > 0"
            + (" or None" if allow_none else "")
            + f"; received {value!r}."
        )
    return value


# The smallest normal float32. The statistics and kernels are computed in
# float32 (or wider): a smaller epsilon rounds to 0 there, or is a subnormal
# that XLA flushes to 0, and a constant channel or a zero kernel then divides
# 0 by 0.
SMALLEST_EPSILON = 1.1754943508222875e-38


def epsilon(name, value):
    """A finite number > 0 that is not zero in float32 (see SMALLEST_EPSILON)."""
    value = positive_float(name, value)
    if value < SMALLEST_EPSILON:
        raise ValueError(
            f"`{name}` must be at least {SMALLEST_EPSILON:.6g}, the smallest normal "
            "float32 (the layer computes in float32, where a smaller value is 0 and a "
            f"constant channel or zero kernel would give NaN); received {value!r}."
        )
    return value


def boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False; received {value!r}.")
    return value


def _lookup(kind, getter, name, value):
    try:
        return getter(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{name}` must be a Keras {kind} (an instance, a config dict or a "
            f"registered name); received {value!r}: {error}"
        ) from None


def initializer(name, value):
    return _lookup("initializer", keras.initializers.get, name, value)


def regularizer(name, value):
    return _lookup("regularizer", keras.regularizers.get, name, value)


def constraint(name, value):
    return _lookup("constraint", keras.constraints.get, name, value)


# ------------------------------------------------------------- batch norms
def norm_order(name, value):
    """The order p of an Lp norm: a real number >= 1, or infinity given as
    `float("inf")`, `numpy.inf` or the string `"inf"`. Returned as float."""
    allowed = 'a real number >= 1, or infinity (float("inf"), numpy.inf or "inf")'
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "infinity", "+inf"):
            return math.inf
        raise ValueError(f"`{name}` must be {allowed}; received the string {value!r}.")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be {allowed}; received {value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if math.isnan(value) or value < 1:
        raise ValueError(f"`{name}` must be {allowed}; received {value!r}.")
    return value


def positive_int(name, value, *, allow_none=False):
    """An integer >= 1 (bools and floats refused), or None when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`{name}` must be an integer >= 1"
            + (" or None" if allow_none else "")
            + f"; received {value!r} of type {type(value).__name__}."
        )
    return int(value)


def unit_interval(name, value):
    """A real number in [0, 1), returned as float (Keras's momentum range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a number in [0, 1); received {value!r} of type "
            f"{type(value).__name__}."
        )
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1); received {value!r}.")
    return value


def integer(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be an integer; received {value!r} of type {type(value).__name__}."
        )
    return int(value)


def axis_in_range(name, axis, ndim, layer_name):
    """`axis` as a non-negative index into an input of rank `ndim`."""
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`{name}`={axis} is out of range for the {ndim}-D input of layer "
            f"'{layer_name}': allowed values are {-ndim} to {ndim - 1}."
        )
    return axis % ndim


def top_k_for_order(top_k, p):
    """`top_k` (None or an integer >= 1) for an Lp scale of order `p` (already
    parsed by `norm_order`): the mean of the k largest deviations exists for
    p = inf only."""
    value = positive_int("top_k", top_k, allow_none=True)
    if value is not None and not math.isinf(p):
        raise ValueError(
            f"`top_k` applies to p=inf only (the mean of the k largest deviations); "
            f"received top_k={top_k!r} with p={p!r}."
        )
    return value
