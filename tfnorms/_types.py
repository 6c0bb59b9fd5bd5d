"""Type aliases shared by the public signatures of tfnorms.

Only for annotations: nothing here is checked at run time (the argument
checks are `tfnorms._validation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import keras

Tensor: TypeAlias = Any
"""A backend tensor (TensorFlow, JAX, NumPy, ...): what `keras.ops` takes and returns.
`Any`, since the type depends on the backend."""

Shape: TypeAlias = tuple[int | None, ...]
"""A tensor shape, `None` for a size not known yet (e.g. the batch size)."""

Axes: TypeAlias = int | list[int] | tuple[int, ...]
"""One axis, or several as a list or tuple (negative values count from the end)."""

InitializerLike: TypeAlias = (
    str | keras.initializers.Initializer | dict[str, Any] | Callable[..., Any] | None
)
"""What `keras.initializers.get` takes: a registered name (`"zeros"`), an
instance, a serialized config dict, a plain callable `(shape, dtype) -> tensor`,
or `None`."""

RegularizerLike: TypeAlias = (
    str | keras.regularizers.Regularizer | dict[str, Any] | Callable[..., Any] | None
)
"""What `keras.regularizers.get` takes: a registered name (`"l2"`), an
instance, a serialized config dict, a plain callable `weights -> loss`, or
`None` (no regularizer)."""

ConstraintLike: TypeAlias = (
    str | keras.constraints.Constraint | dict[str, Any] | Callable[..., Any] | None
)
"""What `keras.constraints.get` takes: a registered name (`"non_neg"`), an
instance, a serialized config dict, a plain callable `weights -> weights`,
or `None` (no constraint)."""

NormReplacement: TypeAlias = (
    str | dict[str, Any] | Callable[[keras.layers.Layer], keras.layers.Layer] | None
)
"""What `tfnorms.convert_model` puts in place of each Keras batch or layer
normalization: a preset name (`"l1"`, `"l2"`, ...), a dict of arguments of the
Lp class, a callable taking the Keras layer and returning its replacement, or
`None` (keep the Keras layer)."""
