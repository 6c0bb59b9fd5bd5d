"""CenteredUnitNorm and FixedNorm (docs/design.md, "Constraints"): NumPy references on
every kernel kind's axes, Keras UnitNorm's axis meaning, the projection after
`fit`, bad arguments and serialization."""

import json

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
            for shape in ((3, 4, 5), (2, 3, 4, 5)):
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
