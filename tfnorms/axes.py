"""Which kernel axes form one output unit: the table of docs/design.md, "Output units".

Every wrapper and constraint asks this module, and nothing else, which
kernels of a layer are normalized and over which axes.
"""

from __future__ import annotations

import dataclasses

import keras

_TRANSPOSED_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_RECURRENT = (
    keras.layers.SimpleRNN,
    keras.layers.LSTM,
    keras.layers.GRU,
    keras.layers.SimpleRNNCell,
    keras.layers.LSTMCell,
    keras.layers.GRUCell,
)

# (layer classes, {kernel variable name: output-unit axes, counted from the end}).
# Keras 3 names a DepthwiseConv*'s kernel variable "kernel" (its constructor
# arguments say "depthwise_"); SeparableConv* has two kernels.
# Order matters: the first matching row wins, so more specific classes come
# first (a transposed convolution is not a subclass of Conv, but user
# subclasses may mix things in).
OUTPUT_UNIT_TABLE: tuple[tuple[tuple[type, ...], dict[str, tuple[int, ...]]], ...] = (
    (_TRANSPOSED_CONVS, {"kernel": (-2,)}),
    (_DEPTHWISE_CONVS, {"kernel": (-2, -1)}),
    (_SEPARABLE_CONVS, {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)}),
    ((keras.layers.Dense, keras.layers.EinsumDense), {"kernel": (-1,)}),
    (_CONVS, {"kernel": (-1,)}),
    (_RECURRENT, {"kernel": (-1,), "recurrent_kernel": (-1,)}),
)

SUPPORTED_KERNEL_NAMES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel")


@dataclasses.dataclass(frozen=True)
class KernelAxes:
    """One normalized kernel: its attribute name and its axes."""

    name: str
    rank: int
    unit_axes: tuple[int, ...]  # non-negative, ascending

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        """Axes summed over within one output unit (`R` in docs/design.md, "Output units")."""
        return tuple(a for a in range(self.rank) if a not in self.unit_axes)

    def unit_shape(self, kernel_shape) -> tuple[int, ...]:
        """Shape of a per-unit quantity such as the scale `g`."""
        return tuple(int(kernel_shape[a]) for a in self.unit_axes)

    def broadcast_shape(self, kernel_shape) -> tuple[int, ...]:
        """Shape that broadcasts a per-unit quantity against the kernel."""
        return tuple(int(kernel_shape[a]) if a in self.unit_axes else 1 for a in range(self.rank))


# The constructor argument that sets each kernel's constraint, where it is not
# `<kernel name minus "kernel">constraint` ("kernel" -> "kernel_constraint").
_CONSTRAINT_ARGUMENTS = {
    (_DEPTHWISE_CONVS, "kernel"): "depthwise_constraint",
}


def _as_class(layer_or_class):
    return layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)


def _row_for(layer):
    cls = _as_class(layer)
    for classes, kernels in OUTPUT_UNIT_TABLE:
        if issubclass(cls, classes):
            return kernels
    return None


def is_supported(layer) -> bool:
    """Whether `layer` has a row in the output-unit table."""
    return _row_for(layer) is not None


def unit_axes_for(layer) -> dict[str, tuple[int, ...]]:
    """The table row for `layer`, an instance or a class (kernel name -> unit
    axes counted from the end).

    Raises:
        ValueError: naming the layer's class and the kernels looked for, when
            the layer has no row in the table.
    """
    if not isinstance(layer, keras.layers.Layer) and not (
        isinstance(layer, type) and issubclass(layer, keras.layers.Layer)
    ):
        raise ValueError(f"Expected a Keras layer or layer class; received {layer!r}.")
    kernels = _row_for(layer)
    if kernels is None:
        what = (
            layer.__name__
            if isinstance(layer, type)
            else f"{type(layer).__name__} (layer '{layer.name}')"
        )
        raise ValueError(
            f"{what} has no kernel that tfnorms "
            f"can normalize: looked for {', '.join(SUPPORTED_KERNEL_NAMES)} on "
            "Dense, EinsumDense, Conv*/Conv*Transpose, DepthwiseConv*, SeparableConv*, "
            "SimpleRNN, LSTM and GRU layers (and their cells)."
            + (
                " For a Keras wrapper, put the tfnorms wrapper inside it, e.g. "
                "Bidirectional(CenteredWeightNorm(LSTM(8))) or "
                "TimeDistributed(CenteredWeightNorm(Dense(8)))."
                if issubclass(_as_class(layer), keras.layers.Wrapper)
                or issubclass(_as_class(layer), keras.layers.Bidirectional)
                else ""
            )
        )
    if isinstance(layer, keras.layers.EinsumDense):
        return _einsum_unit_axes(layer) or dict(kernels)
    return dict(kernels)


def _einsum_unit_axes(layer) -> dict[str, tuple[int, ...]] | None:
    """The unit axis of an EinsumDense's 2-D kernel, from its equation: the
    kernel letter that the output keeps is the unit, the one that only the
    input has is summed over (`"ab,bc->ac"`: the last axis; `"ab,cb->ac"`:
    the first). None for another kernel rank (`find_kernels` refuses it once
    the layer is built).

    Raises:
        ValueError: for a 2-D kernel without exactly one of each.
    """
    inputs, kernel, output = einsum_terms(layer)
    if len(kernel) != 2:
        return None
    unit = [i for i, letter in enumerate(kernel) if letter in output]
    summed = [i for i, letter in enumerate(kernel) if letter in inputs and letter not in output]
    if len(unit) != 1 or len(summed) != 1:
        raise ValueError(
            f"EinsumDense layer '{layer.name}' has the equation '{layer.equation}': "
            "tfnorms normalizes a 2-D kernel whose one letter the output keeps (the "
            "output unit) and whose other letter only the input has (summed over, as "
            f"'b' in 'ab,bc->ac'); its kernel's letters '{''.join(kernel)}' are not that."
        )
    return {"kernel": (unit[0] - 2,)}


def einsum_terms(layer) -> tuple[list[str], list[str], list[str]]:
    """An EinsumDense equation's input, kernel and output terms, each a list
    of its letters, with "..." as one entry."""
    operands, output = layer.equation.replace(" ", "").split("->")
    inputs, kernel = operands.split(",")
    return tuple(_letters(term) for term in (inputs, kernel, output))


def _letters(term: str) -> list[str]:
    head, dots, tail = term.partition("...")
    return [*head, *([dots] if dots else []), *tail]


def required_kernel_rank(layer) -> int | None:
    """The rank a kernel of `layer` (instance or class) must have for its
    table row to name output units: 2 for an EinsumDense, whose kernel has
    whatever rank its equation gives; None for the other kinds, whose kernel
    rank follows from the layer kind."""
    return 2 if issubclass(_as_class(layer), keras.layers.EinsumDense) else None


def is_recurrent(layer) -> bool:
    """Whether `layer` (instance or class) is a SimpleRNN/LSTM/GRU layer or cell."""
    return issubclass(_as_class(layer), _RECURRENT)


def output_kernel_name(layer):
    """The kernel whose output units are the layer's output channels.

    That is the kernel a data-dependent initialization rescales: the
    pointwise kernel of a SeparableConv*, the only kernel of the other
    convolutions and dense layers. `None` for recurrent layers, whose
    kernels feed gates inside a recurrence rather than the output.
    """
    row = unit_axes_for(layer)
    if is_recurrent(layer):
        return None
    return list(row)[-1]


def constraint_argument(layer, kernel_name: str) -> str:
    """The constructor argument of `layer` (instance or class) that sets the
    constraint of kernel `kernel_name`: "kernel" -> "kernel_constraint",
    "recurrent_kernel" -> "recurrent_constraint", a DepthwiseConv*'s
    "kernel" -> "depthwise_constraint", and so on."""
    cls = _as_class(layer)
    for (classes, name), argument in _CONSTRAINT_ARGUMENTS.items():
        if name == kernel_name and issubclass(cls, classes):
            return argument
    if kernel_name == "kernel":
        return "kernel_constraint"
    return kernel_name.replace("kernel", "constraint")


def kernel_axes(name: str, rank: int, unit_axes_from_end: tuple[int, ...]) -> KernelAxes:
    """Resolve negative unit axes against a kernel's rank."""
    unit = tuple(sorted(a % rank for a in unit_axes_from_end))
    return KernelAxes(name=name, rank=rank, unit_axes=unit)


def kernel_owner(layer):
    """The object that holds the kernel variables (the cell of an RNN layer)."""
    if isinstance(layer, keras.layers.RNN):
        return layer.cell
    return layer


def find_kernels(layer) -> list[tuple[keras.Variable, KernelAxes]]:
    """The built layer's normalized kernel variables, each with its axes.

    Looks the variables up by name among the owner's weights, so it finds the
    variable object itself (not a property that may compute a tensor).
    """
    row = unit_axes_for(layer)
    owner = kernel_owner(layer)
    by_name = {}
    for variable in owner.weights:
        by_name.setdefault(variable.name, variable)
    found = []
    for name, unit_axes in row.items():
        variable = by_name.get(name)
        if variable is None:
            raise ValueError(
                f"{type(layer).__name__} (layer '{layer.name}') has no variable named "
                f"'{name}' after build; found {sorted(by_name)}."
            )
        rank = len(variable.shape)
        required = required_kernel_rank(layer)
        if required is not None and rank != required:
            raise ValueError(
                f"EinsumDense layer '{layer.name}' has a {rank}-D kernel of shape "
                f"{tuple(variable.shape)}; only {required}-D kernels have a defined output unit."
            )
        found.append((variable, kernel_axes(name, rank, unit_axes)))
    return found
