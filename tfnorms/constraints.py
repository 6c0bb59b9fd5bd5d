"""Kernel constraints (docs/design.md, "Constraints"): the projected-gradient counterparts of
the weight-norm wrappers, with no extra variables.

Keras applies a variable's constraint after every optimizer step
(`variable.assign(constraint(variable))`), so after `fit` each output unit
of the kernel satisfies the projection exactly.

Which axes form one output unit:

- `axis` has Keras's `UnitNorm` meaning: the axes reduced within one unit.
  `axis=None` (default) reduces all but the last axis, right for Dense,
  EinsumDense (2-D kernel), Conv1D/2D/3D and the kernels of SimpleRNN, LSTM
  and GRU (each gate unit on its own).
- `unit_axes` names the other side: the axes that index the output units
  (counted from the end, so independent of the kernel's rank); every other
  axis is reduced. A transposed convolution, whose kernel is
  `(*k, out, in)`, needs `unit_axes=-2`; a depthwise convolution
  `unit_axes=(-2, -1)`.
- `for_layer(layer_class)` reads both from tfnorms' output-unit table
  (docs/design.md, "Output units", the table the wrappers use) and returns the constructor
  arguments, one per kernel of that layer kind:

      keras.layers.Conv2DTranspose(
          16, 3, **tfnorms.CenteredUnitNorm.for_layer(keras.layers.Conv2DTranspose)
      )
      # == Conv2DTranspose(16, 3, kernel_constraint=CenteredUnitNorm(unit_axes=(-2,)))
      keras.layers.LSTM(32, **tfnorms.FixedNorm.for_layer(keras.layers.LSTM, value=2.0))
      # sets kernel_constraint and recurrent_constraint

The epsilon sits inside the square root, as in the wrappers: an all-zero unit
stays zero (Keras's `UnitNorm` adds its epsilon to the norm instead).

A kernel on which no axis is left to reduce (the default on a 1-D kernel)
is refused, as is an `EinsumDense` kernel that is not 2-D under
`for_layer`: the wrappers refuse both.
"""

from __future__ import annotations

import numbers
from typing import Any

import keras

from tfnorms import _validation, axes
from tfnorms._math.kernel import unit_normalize
from tfnorms._math.reduce import statistics_dtype
from tfnorms._types import Axes, Tensor


def _axes_argument(name, value):
    """None, an int, or a non-empty list/tuple of distinct ints -> tuple or None."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    ok = bool(items) and all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in items
    )
    if not ok or len(set(items)) != len(items):
        raise ValueError(
            f"`{name}` must be None, an integer or a non-empty list of distinct "
            f"integers; received {value!r}."
        )
    return tuple(int(a) for a in items)


class _UnitConstraint(keras.constraints.Constraint):
    """Shared axis handling: which axes of a kernel form one output unit."""

    _center = False

    def __init__(
        self,
        axis: Axes | None = None,
        value: float = 1.0,
        unit_axes: Axes | None = None,
        epsilon: float = 1e-12,
        kernel_rank: int | None = None,
    ) -> None:
        axis = _axes_argument("axis", axis)
        unit_axes = _axes_argument("unit_axes", unit_axes)
        if axis is not None and unit_axes is not None:
            raise ValueError(
                f"Give either `axis` (the reduced axes, as in keras UnitNorm) or "
                f"`unit_axes` (the output-unit axes), not both; received axis={axis!r} "
                f"and unit_axes={unit_axes!r}."
            )
        self.axis = axis
        self.unit_axes = unit_axes
        self.value = _validation.positive_float("value", value)
        self.epsilon = _validation.epsilon("epsilon", epsilon)
        self.kernel_rank = _validation.positive_int("kernel_rank", kernel_rank, allow_none=True)

    def kernel_axes(self, shape: tuple[int, ...]) -> axes.KernelAxes:
        """The `KernelAxes` of a kernel of this shape under this constraint.

        Raises:
            ValueError: for axes out of range, a rank other than
                `kernel_rank`, or no axis left to reduce.
        """
        shape = tuple(shape)
        rank = len(shape)
        name = type(self).__name__
        if self.kernel_rank is not None and rank != self.kernel_rank:
            raise ValueError(
                f"{name} (kernel_rank={self.kernel_rank}) takes a {self.kernel_rank}-D "
                f"kernel; received a {rank}-D kernel of shape {shape}. `for_layer` sets "
                "kernel_rank=2 for EinsumDense: only a 2-D EinsumDense kernel has a defined "
                "output unit, as in the weight-norm wrappers."
            )
        for given in (self.axis, self.unit_axes):
            if given is not None and not all(-rank <= a < rank for a in given):
                raise ValueError(f"{name}: axes {given} are out of range for a {rank}-D kernel.")
        if self.unit_axes is not None:
            unit = self.unit_axes
        elif self.axis is not None:
            reduced = {a % rank for a in self.axis}
            unit = tuple(a for a in range(rank) if a not in reduced)
        else:
            unit = (-1,)
        if rank == 0 or len({a % rank for a in unit}) == rank:
            # Each weight would be a unit of its own: FixedNorm would set it
            # to +-value and CenteredUnitNorm to 0, whatever it was.
            if self.axis is not None:
                given = f"axis={list(self.axis)}"
            elif self.unit_axes is not None:
                given = f"unit_axes={list(self.unit_axes)}"
            else:
                given = "the default axes (all but the last reduced)"
            raise ValueError(
                f"{name} with {given} leaves no axis to reduce on a {rank}-D kernel of "
                f"shape {shape}, so every weight would be a unit of its own. It needs a "
                "kernel with at least one axis besides the output-unit axes (a 1-D "
                "kernel takes `axis=0`, one unit of all its weights)."
            )
        return axes.kernel_axes("kernel", rank, unit)

    def __call__(self, w: Tensor) -> Tensor:
        w = keras.ops.convert_to_tensor(w)
        kernel_axes = self.kernel_axes(w.shape)
        # float16 holds neither the default epsilon (it rounds to 0: a zero
        # or constant unit becomes NaN) nor the squared norm of large
        # weights: project in float32 (float64 for float64) and round once.
        dtype = keras.backend.standardize_dtype(w.dtype)
        work = statistics_dtype(dtype)
        projected = unit_normalize(
            keras.ops.cast(w, work),
            kernel_axes.reduce_axes,
            center=self._center,
            epsilon=self.epsilon,
        )
        projected = projected * keras.ops.cast(self.value, work)
        return (
            keras.ops.cast(projected, dtype) if keras.backend.is_float_dtype(dtype) else projected
        )

    @classmethod
    def for_layer(
        cls, layer: keras.layers.Layer | type[keras.layers.Layer], **kwargs: Any
    ) -> dict[str, _UnitConstraint]:
        """Constructor arguments that constrain every kernel of `layer`.

        Args:
            layer: a layer class (or instance) with a row in tfnorms'
                output-unit table.
            **kwargs: passed to this constraint (`value`, `epsilon`).

        Returns:
            `{argument name: constraint}`, for example
                `{"kernel_constraint": ..., "recurrent_constraint": ...}` for an
                LSTM; pass it on with `**`.

        Raises:
            ValueError: for a layer without a row in the table, or an
                EinsumDense whose equation gives a kernel that is not 2-D
                (from the class alone, the constraint refuses such a kernel
                when it is first applied).
        """
        if "axis" in kwargs or "unit_axes" in kwargs or "kernel_rank" in kwargs:
            raise ValueError(
                f"{cls.__name__}.for_layer takes the axes from tfnorms' output-unit "
                "table; do not pass `axis`, `unit_axes` or `kernel_rank`."
            )
        row = axes.unit_axes_for(layer)
        rank = axes.required_kernel_rank(layer)
        if rank is not None and isinstance(layer, keras.layers.EinsumDense):
            kernel = axes.einsum_terms(layer)[1]
            if len(kernel) != rank:
                raise ValueError(
                    f"{cls.__name__}.for_layer: EinsumDense layer '{layer.name}' has the "
                    f"equation '{layer.equation}', whose kernel '{''.join(kernel)}' is "
                    f"{len(kernel)}-D; only {rank}-D EinsumDense kernels have a defined "
                    "output unit (one letter the output keeps and one only the input has, "
                    "as 'c' and 'b' in 'ab,bc->ac')."
                )
        return {
            axes.constraint_argument(layer, name): cls(unit_axes=unit, kernel_rank=rank, **kwargs)
            for name, unit in row.items()
        }

    def get_config(self) -> dict[str, Any]:
        return {
            "axis": None if self.axis is None else list(self.axis),
            "value": self.value,
            "unit_axes": None if self.unit_axes is None else list(self.unit_axes),
            "epsilon": self.epsilon,
            "kernel_rank": self.kernel_rank,
        }


@keras.saving.register_keras_serializable(package="tfnorms")
class CenteredUnitNorm(_UnitConstraint):
    """Every output unit with zero mean and norm `value` (the projection of
    centered weight normalization).

        w_i <- value * (v_i - mean(v_i)) / sqrt(sum((v_i - mean(v_i))**2) + epsilon)

    Args:
        axis: the reduced axes, as in `keras.constraints.UnitNorm`; `None`
            means all but the last.
        value: the norm of every unit.
        unit_axes: alternatively, the output-unit axes (all others are
            reduced), e.g. `-2` for a transposed convolution. See
            `CenteredUnitNorm.for_layer` to take them from the layer kind.
        epsilon: added to each squared norm.
        kernel_rank: the rank the kernel must have, or None for any;
            `for_layer(EinsumDense)` sets 2.

    A float16 or bfloat16 kernel is projected in float32 and rounded back.

    Example:

    >>> import keras, tfnorms
    >>> dense = keras.layers.Dense(4, kernel_constraint=tfnorms.CenteredUnitNorm())
    """

    _center = True

    def __init__(
        self,
        axis: Axes | None = None,
        value: float = 1.0,
        unit_axes: Axes | None = None,
        epsilon: float = 1e-12,
        kernel_rank: int | None = None,
    ) -> None:
        super().__init__(
            axis=axis, value=value, unit_axes=unit_axes, epsilon=epsilon, kernel_rank=kernel_rank
        )


@keras.saving.register_keras_serializable(package="tfnorms")
class FixedNorm(_UnitConstraint):
    """Every output unit with norm `value` (the bounded-weight-norm
    projection of Hoffer et al., 2018).

        w_i <- value * v_i / sqrt(sum(v_i**2) + epsilon)

    Args:
        value: the norm of every unit (required).
        axis: the reduced axes, as in `keras.constraints.UnitNorm`; `None`
            means all but the last.
        unit_axes: alternatively, the output-unit axes (all others are
            reduced). See `FixedNorm.for_layer`.
        epsilon: added to each squared norm.
        kernel_rank: the rank the kernel must have, or None for any;
            `for_layer(EinsumDense)` sets 2.

    A float16 or bfloat16 kernel is projected in float32 and rounded back.

    Example:

    >>> import keras, tfnorms
    >>> conv = keras.layers.Conv2D(8, 3, kernel_constraint=tfnorms.FixedNorm(2.0))
    """

    def __init__(
        self,
        value: float,
        axis: Axes | None = None,
        unit_axes: Axes | None = None,
        epsilon: float = 1e-12,
        kernel_rank: int | None = None,
    ) -> None:
        super().__init__(
            axis=axis, value=value, unit_axes=unit_axes, epsilon=epsilon, kernel_rank=kernel_rank
        )
