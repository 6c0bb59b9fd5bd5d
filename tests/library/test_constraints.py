"""CenteredUnitNorm and FixedNorm (docs/design.md, "Constraints"): NumPy references on
every kernel kind's axes, Keras UnitNorm's axis meaning, the projection after
`fit`, bad arguments and serialization."""

import json
import re

import keras
import numpy as np
import pytest
from layer_checks import (
    assert_keras_roundtrip_fresh_process,
    compile_for_regression,
    to_numpy,
)

import tfnorms

L = keras.layers

# docs/design.md, "Output units", written out again:
# class -> {kernel variable: unit axes from the end}.
RNN_AXES = {"kernel": (-1,), "recurrent_kernel": (-1,)}
EXPECTED_UNIT_AXES = {
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
    L.SimpleRNN: RNN_AXES,
    L.LSTM: RNN_AXES,
    L.GRU: RNN_AXES,
    L.SimpleRNNCell: RNN_AXES,
    L.LSTMCell: RNN_AXES,
    L.GRUCell: RNN_AXES,
}
# Constructor argument of each kernel's constraint, from the Keras signatures.
ARGUMENT = {
    "kernel": "kernel_constraint",
    "recurrent_kernel": "recurrent_constraint",
    "depthwise_kernel": "depthwise_constraint",
    "pointwise_kernel": "pointwise_constraint",
}


def np_reduce_axes(shape, unit_axes):
    unit = {a % len(shape) for a in unit_axes}
    return tuple(a for a in range(len(shape)) if a not in unit)


def np_project(v, unit_axes, value, center, eps=1e-12):
    axes = np_reduce_axes(v.shape, unit_axes)
    if center:
        v = v - v.mean(axis=axes, keepdims=True)
    return value * v / np.sqrt((v**2).sum(axis=axes, keepdims=True) + eps)


# name: (class, centers, the value used in the tests)
CONSTRAINTS = {
    "centered": (tfnorms.CenteredUnitNorm, True, 1.0),
    "fixed": (tfnorms.FixedNorm, False, 1.5),
}


# ------------------------------------------------------------ the math
@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_for_layer_matches_numpy_on_every_kind(name, rng):
    cls, center, value = CONSTRAINTS[name]
    for layer_class, kernels in EXPECTED_UNIT_AXES.items():
        arguments = cls.for_layer(layer_class, value=value)
        if layer_class in (L.DepthwiseConv1D, L.DepthwiseConv2D):
            assert sorted(arguments) == ["depthwise_constraint"]
        else:
            assert sorted(arguments) == sorted(ARGUMENT[k] for k in kernels)
        for kernel_name, unit_axes in kernels.items():
            argument = (
                "depthwise_constraint"
                if layer_class in (L.DepthwiseConv1D, L.DepthwiseConv2D)
                else ARGUMENT[kernel_name]
            )
            constraint = arguments[argument]
            assert isinstance(constraint, cls)
            # An EinsumDense kernel has units only when it is 2-D (refused otherwise below).
            shapes = ((4, 5),) if layer_class is L.EinsumDense else ((3, 4, 5), (2, 3, 4, 5))
            for shape in shapes:
                v = rng.normal(size=shape).astype("float32")
                np.testing.assert_allclose(
                    to_numpy(constraint(v)),
                    np_project(v, unit_axes, value, center),
                    rtol=1e-5,
                    atol=1e-6,
                    err_msg=f"{layer_class.__name__} {kernel_name} {shape}",
                )


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_projection_properties(name, rng):
    cls, center, value = CONSTRAINTS[name]
    v = rng.normal(size=(3, 3, 4, 6)).astype("float32") + 2.0
    for kwargs, unit_axes in [
        ({}, (-1,)),  # default: all but the last axis reduced
        ({"axis": [0, 1, 2]}, (-1,)),
        ({"axis": -1}, (0, 1, 2)),
        ({"unit_axes": -2}, (-2,)),
        ({"unit_axes": [2, 3]}, (-2, -1)),
    ]:
        constraint = cls(value=value, **kwargs)
        w = to_numpy(constraint(v))
        axes = np_reduce_axes(w.shape, unit_axes)
        np.testing.assert_allclose(np.sqrt((w**2).sum(axis=axes)), value, rtol=1e-5)
        if center:
            np.testing.assert_allclose(w.sum(axis=axes), 0, atol=1e-5)
        else:  # a rescaling only: same direction as v
            cosine = (w * v).sum(axis=axes) / np.sqrt((v**2).sum(axis=axes)) / value
            np.testing.assert_allclose(cosine, 1, rtol=1e-5)
        np.testing.assert_allclose(to_numpy(constraint(w)), w, atol=1e-5)  # idempotent


def test_axis_has_keras_unit_norm_meaning(rng):
    v = rng.normal(size=(3, 3, 2, 5)).astype("float32")
    for axis in (0, [0, 1], [0, 1, 2], -1):
        np.testing.assert_allclose(
            to_numpy(tfnorms.FixedNorm(1.0, axis=axis)(v)),
            to_numpy(keras.constraints.UnitNorm(axis=axis)(v)),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        to_numpy(tfnorms.FixedNorm(1.0)(v)),
        to_numpy(keras.constraints.UnitNorm(axis=[0, 1, 2])(v)),
        rtol=1e-5,
    )


def test_zero_kernel_stays_finite():
    for constraint in (tfnorms.CenteredUnitNorm(), tfnorms.FixedNorm(2.0)):
        w = to_numpy(constraint(np.zeros((3, 2), "float32")))
        np.testing.assert_array_equal(w, 0)
    w = to_numpy(tfnorms.CenteredUnitNorm()(np.ones((3, 2), "float32")))  # all equal: mean only
    np.testing.assert_allclose(w, 0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_half_precision_kernel_stays_finite(name, dtype, rng):
    """float16 rounds the default epsilon 1e-12 to 0 (a zero or constant unit
    gave NaN) and overflows the squared norm of weights past 256: the
    projection runs in float32 and is rounded back."""
    cls, center, value = CONSTRAINTS[name]
    v = rng.normal(size=(6, 5))
    v[:, 0] = 0.0  # a zero unit
    v[:, 1] = 0.75  # a constant unit
    v[:, 4] *= 300.0  # its squared norm is past float16's largest finite value
    kernel = keras.ops.cast(v, dtype)
    w = cls(value=value)(kernel)
    assert keras.backend.standardize_dtype(w.dtype) == dtype
    w = to_numpy(keras.ops.cast(w, "float32"))
    assert np.isfinite(w).all()
    np.testing.assert_array_equal(w[:, 0], 0)  # a zero unit stays zero
    if center:
        np.testing.assert_array_equal(w[:, 1], 0)  # nothing left once centered
    # The reference on the kernel's rounded values; bfloat16 keeps 8 bits.
    rounded = to_numpy(keras.ops.cast(kernel, "float32")).astype("float64")
    tolerance = 2e-3 if dtype == "float16" else 1.6e-2
    np.testing.assert_allclose(
        w, np_project(rounded, (-1,), value, center), rtol=tolerance, atol=tolerance
    )


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
def test_no_axis_left_to_reduce_is_refused(name):
    """The default on a 1-D kernel reduced nothing: FixedNorm set every
    weight to +-value and CenteredUnitNorm to 0."""
    cls, _, value = CONSTRAINTS[name]
    vector = np.array([0.3, -2.0, 5.0], "float32")
    with pytest.raises(ValueError, match=r"default axes.*no axis to reduce.*shape \(3,\).*axis=0"):
        cls(value=value)(vector)
    with pytest.raises(ValueError, match=r"unit_axes=\[0, 1\].*2-D kernel of shape \(3, 2\)"):
        cls(value=value, unit_axes=[0, 1])(np.ones((3, 2), "float32"))
    with pytest.raises(ValueError, match="no axis to reduce on a 0-D kernel"):
        cls(value=value)(np.float32(2.0))
    # Reducing the one axis makes the vector a single unit.
    np.testing.assert_allclose(
        to_numpy(cls(value=value, axis=0)(vector)),
        np_project(vector.astype("float64"), (), value, cls is tfnorms.CenteredUnitNorm),
        rtol=1e-5,
    )


# EinsumDense equations whose kernel is not 2-D, and their kernels' shapes
# for an input of shape (2, 3, 4) (or (2, 4) for a 2-D input term).
EINSUM_NOT_2D = [
    ("ab,b->a", (), (2, 4), (4,)),
    ("ab,bcd->acd", (5, 6), (2, 4), (4, 5, 6)),
    ("abc,cde->abde", (3, 5, 6), (2, 3, 4), (4, 5, 6)),
]


@pytest.mark.parametrize("name", sorted(CONSTRAINTS))
@pytest.mark.parametrize(
    "equation, output_shape, input_shape, kernel_shape",
    EINSUM_NOT_2D,
    ids=[e for e, *_ in EINSUM_NOT_2D],
)
def test_einsum_kernel_that_is_not_2d_is_refused(
    name, equation, output_shape, input_shape, kernel_shape, rng
):
    """As the wrappers refuse it: a 1-D kernel was set to +-value (or 0),
    a 3-D one normalized over axes that are not one output unit."""
    cls, _, value = CONSTRAINTS[name]
    layer = L.EinsumDense(equation, output_shape=output_shape, name="proj")
    with pytest.raises(ValueError, match=rf"for_layer: EinsumDense layer 'proj'.*'{equation}'"):
        cls.for_layer(layer, value=value)
    with pytest.raises(ValueError, match="only 2-D"):  # the wrappers' refusal, for comparison
        wrapper = tfnorms.CenteredWeightNorm(layer)
        wrapper.build(input_shape)
    # From the class alone, the kernel is refused when the constraint first sees it.
    layer = L.EinsumDense(
        equation, output_shape=output_shape, **cls.for_layer(L.EinsumDense, value=value)
    )
    layer.build(input_shape)
    assert tuple(layer.kernel.shape) == kernel_shape
    shape = re.escape(str(kernel_shape))
    with pytest.raises(ValueError, match=rf"kernel_rank=2.*{len(kernel_shape)}-D kernel.*{shape}"):
        layer.kernel.constraint(layer.kernel)
    # Keras applies it after the first optimizer step.
    model = compile_for_regression(keras.Sequential([keras.Input(input_shape[1:]), layer]))
    x = rng.normal(size=input_shape).astype("float32")
    y = rng.normal(size=(input_shape[0], *output_shape)).astype("float32")
    with pytest.raises(ValueError, match="kernel_rank=2"):
        model.fit(x, y, verbose=0)


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: tfnorms.CenteredUnitNorm(axis="rows"), ValueError, "rows"),
        (lambda: tfnorms.CenteredUnitNorm(axis=[]), ValueError, "axis"),
        (lambda: tfnorms.CenteredUnitNorm(axis=[0, 0]), ValueError, "distinct"),
        (lambda: tfnorms.CenteredUnitNorm(axis=1.0), ValueError, "axis"),
        (lambda: tfnorms.CenteredUnitNorm(unit_axes=True), ValueError, "unit_axes"),
        (lambda: tfnorms.CenteredUnitNorm(axis=0, unit_axes=-1), ValueError, "not both"),
        (lambda: tfnorms.CenteredUnitNorm(value=0), ValueError, "value"),
        (lambda: tfnorms.FixedNorm(-1.0), ValueError, "-1.0"),
        (lambda: tfnorms.FixedNorm(float("nan")), ValueError, "nan"),
        (lambda: tfnorms.FixedNorm("one"), ValueError, "str"),
        (lambda: tfnorms.FixedNorm(1.0, epsilon=0), ValueError, "epsilon"),
        (lambda: tfnorms.FixedNorm(), TypeError, "value"),
        (lambda: tfnorms.CenteredUnitNorm.for_layer(L.Flatten), ValueError, "Flatten"),
        (lambda: tfnorms.FixedNorm.for_layer(L.Dense, value=1.0, axis=0), ValueError, "table"),
        (
            lambda: tfnorms.FixedNorm.for_layer(L.Dense, value=1.0, kernel_rank=3),
            ValueError,
            "kernel_rank",
        ),
        (lambda: tfnorms.FixedNorm(1.0, kernel_rank=0), ValueError, "kernel_rank.*0"),
        (lambda: tfnorms.CenteredUnitNorm(kernel_rank=2.0), ValueError, "kernel_rank.*float"),
        (lambda: tfnorms.CenteredUnitNorm(axis=3)(np.ones((2, 2))), ValueError, "out of range"),
        (
            lambda: tfnorms.FixedNorm(1.0, unit_axes=-3)(np.ones((2, 2))),
            ValueError,
            "out of range",
        ),
    ],
)
def test_bad_arguments_are_refused(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ------------------------------------------------------- after training
def make_all_kinds_model(constraint_cls, **kwargs):
    """Every kernel kind of the table, constrained through for_layer."""

    def c(layer_class):
        return constraint_cls.for_layer(layer_class, **kwargs)

    seq = keras.Input((6, 3))
    img = keras.Input((5, 5, 2))
    vol = keras.Input((3, 3, 3, 1))
    branches = [
        L.Conv1D(3, 3, padding="causal", dilation_rate=2, **c(L.Conv1D))(seq),
        L.Conv1DTranspose(3, 3, strides=2, **c(L.Conv1DTranspose))(seq),
        L.DepthwiseConv1D(3, depth_multiplier=2, **c(L.DepthwiseConv1D))(seq),
        L.SeparableConv1D(3, 3, **c(L.SeparableConv1D))(seq),
        L.SimpleRNN(3, **c(L.SimpleRNN))(seq),
        L.LSTM(3, **c(L.LSTM))(seq),
        L.GRU(3, **c(L.GRU))(seq),
        L.RNN(L.LSTMCell(3, **c(L.LSTMCell)))(seq),
        L.Conv2D(3, 3, **c(L.Conv2D))(img),
        L.Conv2DTranspose(3, 3, **c(L.Conv2DTranspose))(img),
        L.DepthwiseConv2D(3, depth_multiplier=2, **c(L.DepthwiseConv2D))(img),
        L.SeparableConv2D(3, 3, **c(L.SeparableConv2D))(img),
        L.Conv3D(3, 2, **c(L.Conv3D))(vol),
        L.Conv3DTranspose(3, 2, **c(L.Conv3DTranspose))(vol),
    ]
    flat = L.Concatenate()([L.Flatten()(b) for b in branches])
    h = L.EinsumDense("ab,bc->ac", output_shape=4, **c(L.EinsumDense))(flat)
    out = L.Dense(2, **c(L.Dense))(h)
    return keras.Model([seq, img, vol], out)


def all_kinds_data(rng, n=16):
    x = [
        rng.normal(size=(n, 6, 3)).astype("float32"),
        rng.normal(size=(n, 5, 5, 2)).astype("float32"),
        rng.normal(size=(n, 3, 3, 3, 1)).astype("float32"),
    ]
    return x, rng.normal(size=(n, 2)).astype("float32")


def constrained_kernels(model):
    """(layer class, kernel name, kernel array) for every table layer."""
    found = []
    for layer in model.layers:
        owner = layer.cell if isinstance(layer, L.RNN) else layer
        table = EXPECTED_UNIT_AXES.get(type(owner)) or EXPECTED_UNIT_AXES.get(type(layer))
        if table is None:
            continue
        variables = {v.name: v for v in owner.weights}
        for name in table:
            found.append((type(owner), name, to_numpy(variables[name].value)))
    return found


@pytest.fixture(scope="module", params=sorted(CONSTRAINTS))
def fitted_all_kinds(request):
    """The all-kinds model trained under one constraint (built once per
    module: tracing fourteen branches is the slow part)."""
    name = request.param
    cls, _, value = CONSTRAINTS[name]
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    model = compile_for_regression(make_all_kinds_model(cls, value=value), learning_rate=0.1)
    x, y = all_kinds_data(rng)
    before = {(c, n): k.copy() for c, n, k in constrained_kernels(model)}
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return name, model, before, x


def test_kernels_satisfy_the_projection_after_fit(fitted_all_kinds):
    name, model, before, _ = fitted_all_kinds
    _, center, value = CONSTRAINTS[name]
    kernels = constrained_kernels(model)
    assert len(kernels) == 22  # every kernel of every kind above
    for layer_class, kernel_name, w in kernels:
        unit_axes = EXPECTED_UNIT_AXES[layer_class][kernel_name]
        axes = np_reduce_axes(w.shape, unit_axes)
        message = f"{layer_class.__name__} {kernel_name}"
        assert not np.allclose(w, before[(layer_class, kernel_name)]), message  # trained
        np.testing.assert_allclose(
            np.sqrt((w**2).sum(axis=axes)), value, rtol=1e-4, err_msg=message
        )
        if center:
            np.testing.assert_allclose(w.sum(axis=axes), 0, atol=1e-4, err_msg=message)


def test_constrained_model_saves_and_loads_with_its_constraints(fitted_all_kinds, tmp_path):
    _, model, _, x = fitted_all_kinds
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    checked = 0
    for old, new in zip(model.layers, loaded.layers, strict=True):
        for a, b in zip(old.weights, new.weights, strict=True):
            assert type(a.constraint) is type(b.constraint), a.path
            if a.constraint is not None:
                assert a.constraint.get_config() == b.constraint.get_config()
                checked += 1
    assert checked == 22
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


# ---------------------------------------------------------- serialization
@pytest.mark.parametrize(
    "constraint",
    [
        tfnorms.CenteredUnitNorm(),
        tfnorms.CenteredUnitNorm(axis=[0, 1], value=2.0, epsilon=1e-8),
        tfnorms.CenteredUnitNorm(unit_axes=(-2, -1)),
        tfnorms.FixedNorm(0.5),
        tfnorms.FixedNorm(3.0, axis=0),
        tfnorms.FixedNorm(1.0, unit_axes=-2),
        tfnorms.FixedNorm(1.0, kernel_rank=3),
    ],
    ids=lambda c: json.dumps(c.get_config()),
)
def test_config_roundtrip(constraint, rng):
    config = constraint.get_config()
    json.dumps(config)
    clone = type(constraint).from_config(config)
    assert clone.get_config() == config
    restored = keras.constraints.deserialize(keras.constraints.serialize(constraint))
    assert type(restored) is type(constraint)
    assert restored.get_config() == config
    v = rng.normal(size=(3, 4, 5)).astype("float32")
    np.testing.assert_allclose(to_numpy(restored(v)), to_numpy(constraint(v)), atol=1e-7)


def make_sequential_constrained():
    """A single-input model for the fresh-process load (the helper saves one
    input array)."""
    return keras.Sequential(
        [
            keras.Input((6, 3)),
            L.Conv1DTranspose(4, 3, **tfnorms.CenteredUnitNorm.for_layer(L.Conv1DTranspose)),
            L.DepthwiseConv1D(3, **tfnorms.FixedNorm.for_layer(L.DepthwiseConv1D, value=2.0)),
            L.LSTM(3, **tfnorms.FixedNorm.for_layer(L.LSTM, value=0.5)),
            L.Dense(2, kernel_constraint=tfnorms.CenteredUnitNorm(axis=0, value=3.0)),
        ]
    )


def test_constrained_model_loads_in_a_fresh_process(tmp_path, rng):
    """Registration: a saved file loads after `import tfnorms` alone."""
    model = compile_for_regression(make_sequential_constrained())
    x = rng.normal(size=(8, 6, 3)).astype("float32")
    model.fit(x, rng.normal(size=(8, 2)).astype("float32"), epochs=1, verbose=0)
    assert_keras_roundtrip_fresh_process([(model, x)], tmp_path)
