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
