"""Which kernel axes form one output unit: SPEC section 1 as one table.

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

# (layer classes, {kernel attribute: output-unit axes, counted from the end}).
# Order matters: the first matching row wins, so more specific classes come
# first (a transposed convolution is not a subclass of Conv, but user
# subclasses may mix things in).
OUTPUT_UNIT_TABLE: tuple[tuple[tuple[type, ...], dict[str, tuple[int, ...]]], ...] = (
    (_TRANSPOSED_CONVS, {"kernel": (-2,)}),
    (_DEPTHWISE_CONVS, {"depthwise_kernel": (-2, -1)}),
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
        """Axes summed over within one output unit (SPEC's `R`)."""
        return tuple(a for a in range(self.rank) if a not in self.unit_axes)

    def unit_shape(self, kernel_shape) -> tuple[int, ...]:
        """Shape of a per-unit quantity such as the scale `g`."""
        return tuple(int(kernel_shape[a]) for a in self.unit_axes)

    def broadcast_shape(self, kernel_shape) -> tuple[int, ...]:
        """Shape that broadcasts a per-unit quantity against the kernel."""
        return tuple(int(kernel_shape[a]) if a in self.unit_axes else 1 for a in range(self.rank))


def _row_for(layer):
    for classes, kernels in OUTPUT_UNIT_TABLE:
        if isinstance(layer, classes):
            return kernels
    return None


def is_supported(layer) -> bool:
    """Whether `layer` has a row in the output-unit table."""
    return _row_for(layer) is not None


def unit_axes_for(layer) -> dict[str, tuple[int, ...]]:
    """The table row for `layer` (kernel name -> unit axes from the end).

    Raises:
        ValueError: naming the layer's class and the kernels looked for, when
            the layer has no row in the table.
    """
    kernels = _row_for(layer)
    if kernels is None:
        raise ValueError(
            f"{type(layer).__name__} (layer '{layer.name}') has no kernel that tfnorms "
            f"can normalize: looked for {', '.join(SUPPORTED_KERNEL_NAMES)} on "
            "Dense, EinsumDense, Conv*/Conv*Transpose, DepthwiseConv*, SeparableConv*, "
            "SimpleRNN, LSTM and GRU layers (and their cells)."
        )
    return dict(kernels)


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
        if isinstance(layer, keras.layers.EinsumDense) and rank != 2:
            raise ValueError(
                f"EinsumDense layer '{layer.name}' has a {rank}-D kernel of shape "
                f"{tuple(variable.shape)}; only 2-D kernels (in, out) have a defined "
                "output unit."
            )
        found.append((variable, kernel_axes(name, rank, unit_axes)))
    return found
