"""The output-unit table (docs/design.md, "Output units") and its helpers, checked against
the table as docs/design.md writes it and against the layers' own kernel shapes."""

import inspect

import keras
import numpy as np
import pytest

from tfnorms import axes

L = keras.layers

# docs/design.md, "Output units", written out again:
# class -> {kernel variable: unit axes from the end}.
EXPECTED_TABLE = {
    L.Dense: {"kernel": (-1,)},
    L.EinsumDense: {"kernel": (-1,)},
    L.Conv1D: {"kernel": (-1,)},
    L.Conv2D: {"kernel": (-1,)},
    L.Conv3D: {"kernel": (-1,)},
    L.Conv1DTranspose: {"kernel": (-2,)},
    L.Conv2DTranspose: {"kernel": (-2,)},
    L.Conv3DTranspose: {"kernel": (-2,)},
    L.DepthwiseConv1D: {"kernel": (-2, -1)},
    L.DepthwiseConv2D: {"kernel": (-2, -1)},
    L.SeparableConv1D: {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
    L.SeparableConv2D: {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
    L.SimpleRNN: {"kernel": (-1,), "recurrent_kernel": (-1,)},
    L.LSTM: {"kernel": (-1,), "recurrent_kernel": (-1,)},
    L.GRU: {"kernel": (-1,), "recurrent_kernel": (-1,)},
    L.SimpleRNNCell: {"kernel": (-1,), "recurrent_kernel": (-1,)},
    L.LSTMCell: {"kernel": (-1,), "recurrent_kernel": (-1,)},
    L.GRUCell: {"kernel": (-1,), "recurrent_kernel": (-1,)},
}

# Built instances with their input shapes, and the kernel shapes Keras gives
# them (so the test sees which axis is "out" in each kernel).
BUILT = {
    "dense": (lambda: L.Dense(5), (2, 3), {"kernel": (3, 5)}),
    "conv1d": (lambda: L.Conv1D(5, 2), (2, 6, 3), {"kernel": (2, 3, 5)}),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(5, 2), (2, 4, 4, 3), {"kernel": (2, 2, 5, 3)}),
    "conv3d_transpose": (
        lambda: L.Conv3DTranspose(5, 2),
        (2, 3, 3, 3, 3),
        {"kernel": (2, 2, 2, 5, 3)},
    ),
    "depthwise2d": (
        lambda: L.DepthwiseConv2D(2, depth_multiplier=4),
        (2, 4, 4, 3),
        {"kernel": (2, 2, 3, 4)},
    ),
    "separable1d": (
        lambda: L.SeparableConv1D(5, 2, depth_multiplier=2),
        (2, 6, 3),
        {"depthwise_kernel": (2, 3, 2), "pointwise_kernel": (1, 6, 5)},
    ),
    "lstm": (
        lambda: L.LSTM(4),
        (2, 5, 3),
        {"kernel": (3, 16), "recurrent_kernel": (4, 16)},
    ),
    "gru_cell": (
        lambda: L.GRUCell(4),
        (2, 3),
        {"kernel": (3, 12), "recurrent_kernel": (4, 12)},
    ),
}


@pytest.mark.parametrize("cls", list(EXPECTED_TABLE), ids=lambda c: c.__name__)
def test_table_matches_spec_for_classes_and_instances(cls):
    assert axes.unit_axes_for(cls) == EXPECTED_TABLE[cls]
    assert axes.is_supported(cls)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_find_kernels_on_built_layers(name):
    make, shape, kernel_shapes = BUILT[name]
    layer = make()
    layer.build(shape)
    found = axes.find_kernels(layer)
    assert [a.name for _, a in found] == list(kernel_shapes)
    unit_table = EXPECTED_TABLE[type(layer)]
    for variable, kernel_axes in found:
        assert tuple(variable.shape) == kernel_shapes[kernel_axes.name]
        rank = len(variable.shape)
        unit = tuple(sorted(a % rank for a in unit_table[kernel_axes.name]))
        assert kernel_axes.unit_axes == unit
        assert kernel_axes.reduce_axes == tuple(a for a in range(rank) if a not in unit)
        assert kernel_axes.unit_shape(variable.shape) == tuple(variable.shape[a] for a in unit)
        broadcast = kernel_axes.broadcast_shape(variable.shape)
        assert np.broadcast_shapes(broadcast, tuple(variable.shape)) == tuple(variable.shape)
        # The variable object itself, not a copy computed by a property.
        assert any(variable is w for w in axes.kernel_owner(layer).weights)


def test_transposed_units_are_output_channels_and_depthwise_units_are_pairs():
    conv_t = L.Conv2DTranspose(5, 2)
    conv_t.build((1, 4, 4, 3))
    ((variable, kernel_axes),) = axes.find_kernels(conv_t)
    assert kernel_axes.unit_shape(variable.shape) == (5,)  # filters, not the 3 inputs
    depthwise = L.DepthwiseConv1D(2, depth_multiplier=4)
    depthwise.build((1, 6, 3))
    ((variable, kernel_axes),) = axes.find_kernels(depthwise)
    assert kernel_axes.unit_shape(variable.shape) == (3, 4)  # (channel, multiplier)
    assert kernel_axes.reduce_axes == (0,)


def test_subclasses_use_their_parents_row():
    class MyTransposed(L.Conv2DTranspose):
        pass

    assert axes.unit_axes_for(MyTransposed) == {"kernel": (-2,)}


@pytest.mark.parametrize(
    "layer",
    [L.Flatten(), L.BatchNormalization(), L.Embedding(4, 2), L.Bidirectional(L.LSTM(2))],
    ids=lambda layer: type(layer).__name__,
)
def test_unsupported_layers_are_refused_naming_class_and_kernels(layer):
    assert not axes.is_supported(layer)
    with pytest.raises(ValueError, match=type(layer).__name__) as info:
        axes.unit_axes_for(layer)
    assert "recurrent_kernel" in str(info.value)
    with pytest.raises(ValueError, match=type(layer).__name__):
        axes.unit_axes_for(type(layer))


def test_keras_wrappers_are_refused_with_a_hint_to_wrap_inside():
    for layer in (L.Bidirectional(L.LSTM(2)), L.TimeDistributed(L.Dense(2))):
        with pytest.raises(ValueError, match=r"Bidirectional\(CenteredWeightNorm\(LSTM"):
            axes.unit_axes_for(layer)


def test_einsum_dense_needs_a_2d_kernel():
    layer = L.EinsumDense("ab,bcd->acd", (3, 4))
    layer.build((2, 5))
    with pytest.raises(ValueError, match="2-D kernels"):
        axes.find_kernels(layer)


@pytest.mark.parametrize(
    "equation, output_shape, unit_axes",
    [
        ("ab,bc->ac", 4, (-1,)),  # kernel (in, out)
        ("ab,cb->ac", 4, (-2,)),  # kernel (out, in)
        ("abc,cd->abd", (3, 4), (-1,)),
        ("abc,dc->adb", (4, 3), (-2,)),  # units inside the output
        ("abc,bc->ac", 3, (-1,)),  # c runs along the input and the output: still the unit
    ],
)
def test_einsum_dense_unit_axis_is_the_kernel_letter_the_output_keeps(
    equation, output_shape, unit_axes
):
    layer = L.EinsumDense(equation, output_shape)
    assert axes.unit_axes_for(layer) == {"kernel": unit_axes}
    assert axes.unit_axes_for(L.EinsumDense) == {"kernel": (-1,)}  # the class alone: its row


@pytest.mark.parametrize("equation", ["ab,bc->abc", "ab,bc->a", "ab,cd->acd"])
def test_einsum_dense_2d_kernel_without_one_unit_and_one_summed_letter_is_refused(equation):
    layer = L.EinsumDense(equation, 3)  # refused before build: output_shape unchecked
    with pytest.raises(ValueError, match=f"'{equation}'.*one letter the output keeps"):
        axes.unit_axes_for(layer)


def test_output_kernel_name():
    assert axes.output_kernel_name(L.Dense(2)) == "kernel"
    assert axes.output_kernel_name(L.Conv2DTranspose(2, 2)) == "kernel"
    assert axes.output_kernel_name(L.DepthwiseConv2D(2)) == "kernel"
    assert axes.output_kernel_name(L.SeparableConv2D(2, 2)) == "pointwise_kernel"
    assert axes.output_kernel_name(L.LSTM(2)) is None
    assert axes.output_kernel_name(L.GRUCell(2)) is None


@pytest.mark.parametrize("cls", list(EXPECTED_TABLE), ids=lambda c: c.__name__)
def test_constraint_arguments_are_real_constructor_arguments(cls):
    parameters = set()
    for klass in cls.__mro__:
        if "__init__" in klass.__dict__:
            parameters |= set(inspect.signature(klass.__dict__["__init__"]).parameters)
    for kernel_name in EXPECTED_TABLE[cls]:
        argument = axes.constraint_argument(cls, kernel_name)
        assert argument in parameters, (cls.__name__, kernel_name, argument)
    if cls in (L.DepthwiseConv1D, L.DepthwiseConv2D):
        assert axes.constraint_argument(cls, "kernel") == "depthwise_constraint"
