"""LpGroupNormalization: Keras's GroupNormalization at p=2 (outputs and
gradients), per-example-and-group NumPy references and finite differences
for p in {1, 3, inf} and top-k, Gaussian consistency, degenerate inputs, low
precision, masks, bad arguments (groups that do not divide the channels),
and SPEC section 7 through the shared helper."""

import math

import keras
import lp_reference as ref
import numpy as np
import per_example_reference as pref
import pytest
from keras import ops
from layer_checks import (
    assert_config_roundtrip,
    assert_fit_lowers_loss,
    compile_for_regression,
    loss_and_gradients,
    loss_and_input_gradient,
    to_numpy,
)

import tfnorms

P_CASES = [(1.0, None), (3.0, None), (math.inf, None), (math.inf, 3)]
P_IDS = [f"p{p}" + (f"-top{k}" if k else "") for p, k in P_CASES]


# ------------------------------------------------ p=2 is Keras's group norm
KERAS_CASES = [
    ((4, 5, 8), {"groups": 4}),
    ((4, 8, 5), {"groups": 2, "axis": 1}),
    ((2, 3, 3, 8), {"groups": 4, "epsilon": 1e-2}),
    ((4, 5, 8), {"groups": -1, "center": False}),
    ((4, 5, 8), {"groups": 1, "scale": False}),
    ((6, 8), {"groups": 2}),
]


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    KERAS_CASES,
    ids=["g4", "channels-first", "4d", "instance-nocenter", "g1-noscale", "2d"],
)
def test_p2_reproduces_keras_group_normalization(shape, kwargs, rng):
    x = rng.normal(3.0, 2.0, size=shape).astype("float32")
    theirs = keras.layers.GroupNormalization(**kwargs)
    mine = tfnorms.LpGroupNormalization(p=2, **kwargs)
    theirs(x)
    mine(x)
    assert [w.name for w in mine.weights] == [w.name for w in theirs.weights]
    assert [w.shape for w in mine.weights] == [w.shape for w in theirs.weights]
    pref.copy_random_weights(theirs, mine, rng)
    pref.assert_same_outputs_and_gradients(mine, theirs, x, rng)


# ---------------------------------------- forward and gradient against NumPy
@pytest.mark.parametrize(("p", "top_k"), P_CASES, ids=P_IDS)
@pytest.mark.parametrize(
    ("shape", "groups", "axis"),
    [((2, 3, 6), 3, -1), ((2, 4, 3), 2, 1)],
    ids=["last", "channels-first"],
)
def test_forward_and_gradient_match_numpy(shape, groups, axis, p, top_k, rng):
    x = rng.normal(0.5, 2.0, size=shape)
    channels = shape[axis]
    layer = tfnorms.LpGroupNormalization(
        groups, p=p, top_k=top_k, axis=axis, epsilon=1e-3, dtype="float64"
    )
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 2.0, size=channels), rng.normal(size=channels)
    layer.set_weights([gamma, beta])
    loss_fn, np_loss_of_y = pref.product_loss(rng.normal(size=shape), rng.normal(size=shape))

    def np_loss(inputs, g=gamma, b=beta):
        return np_loss_of_y(pref.reference_group_norm(inputs, groups, axis, p, top_k, g, b, 1e-3))

    want = pref.reference_group_norm(x, groups, axis, p, top_k, gamma, beta, 1e-3)
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(to_numpy(layer(x, training=True)), to_numpy(layer(x)))

    loss, dx = loss_and_input_gradient(layer, x, loss_fn)
    assert float(loss) == pytest.approx(np_loss(x), rel=1e-7)
    np.testing.assert_allclose(dx, ref.central_differences(np_loss, x), rtol=1e-5, atol=1e-7)
    _, (d_gamma, d_beta) = loss_and_gradients(layer, x, loss_fn)
    np.testing.assert_allclose(
        d_gamma, ref.central_differences(lambda g: np_loss(x, g=g), gamma), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        d_beta, ref.central_differences(lambda b: np_loss(x, b=b), beta), rtol=1e-5, atol=1e-8
    )


def test_four_dimensional_inputs_match_numpy(rng):
    x = rng.normal(1.0, 2.0, size=(2, 3, 4, 6))
    for p, top_k in P_CASES:
        layer = tfnorms.LpGroupNormalization(3, p=p, top_k=top_k, dtype="float64", center=False)
        want = pref.reference_group_norm(x, 3, -1, p, top_k, None, None, 1e-3)
        np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------ Gaussian consistency
def grouped_sigma(x, y, groups, epsilon):
    """sqrt(sigma_p**2 + epsilon) per example and group, from y = (x - mu) / that."""
    xg = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    yg = y.reshape(xg.shape)
    return np.sqrt(xg.var(axis=(1, 3)) / yg.var(axis=(1, 3)) - epsilon)


@pytest.mark.parametrize("p", [1, 3])
def test_gaussian_consistency_finite_p(p, rng):
    s = np.array([0.5, 0.5, 4.0, 4.0])  # two groups of two channels
    x = (rng.normal(size=(2, 50_000, 4)) * s + np.array([3.0, 3.0, -1.0, -1.0])).astype("float32")
    y = to_numpy(tfnorms.LpGroupNormalization(2, p=p, epsilon=1e-9)(x)).astype("float64")
    sigma = grouped_sigma(x.astype("float64"), y, 2, 1e-9)
    np.testing.assert_allclose(sigma, np.broadcast_to([0.5, 4.0], sigma.shape), rtol=0.02)


def test_gaussian_consistency_p_inf_within_supplement_bounds(rng):
    s = 2.5
    x = rng.normal(1.0, s, size=(50, 1_000, 4)).astype("float32")
    y = to_numpy(tfnorms.LpGroupNormalization(2, p="inf", epsilon=1e-9)(x)).astype("float64")
    ratio = grouped_sigma(x.astype("float64"), y, 2, 1e-9).mean() / s
    assert 0.740 <= ratio <= 1.543, ratio


# ------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize(
    ("x", "groups"),
    [
        (np.full((3, 4), 2.0), -1),  # one element per group
        (np.full((1, 1, 1, 2), -7.0), 2),
        (np.stack([np.full(8, 4.0), np.arange(8.0)]), 2),  # a constant example
        (np.zeros((2, 3, 4)), 2),
    ],
    ids=["one", "one-4d", "constant-example", "zeros"],
)
def test_degenerate_inputs_stay_finite(x, groups, rng):
    x = x.astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    loss_fn = lambda y: ops.sum(ops.convert_to_tensor(w) * y)
    for p, top_k in [*P_CASES, (2.0, None)]:
        layer = tfnorms.LpGroupNormalization(groups, p=p, top_k=top_k)
        assert np.all(np.isfinite(to_numpy(layer(x)))), (p, top_k)
        _, dx, grads = pref.inference_gradients(layer, x, loss_fn)
        assert np.all(np.isfinite(dx)), (p, top_k)
        assert all(np.all(np.isfinite(g)) for g in grads), (p, top_k)


# --------------------------------------------------------------- precision
def test_low_precision_l1_and_linf_finite_where_l2_overflows(rng):
    x16 = rng.normal(0.0, 1000.0, size=(4, 16, 8)).astype("float16")

    def run(p, top_k=None, low_precision=True):
        layer = tfnorms.LpGroupNormalization(
            4, p=p, top_k=top_k, low_precision=low_precision, dtype="mixed_float16"
        )
        y = layer(x16)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        return to_numpy(y).astype("float64")

    def reference(p, top_k=None):
        return pref.reference_group_norm(x16, 4, -1, float(p), top_k, None, None, 1e-3)

    for p, top_k in [(1, None), ("inf", None), ("inf", 10)]:
        y = run(p, top_k)
        assert np.all(np.isfinite(y)), (p, top_k)
        np.testing.assert_allclose(y, reference(p, top_k), atol=2e-2)
    assert not np.allclose(run(2), reference(2), atol=0.5)  # the squares overflowed
    np.testing.assert_allclose(run(2, low_precision=False), reference(2), atol=2e-2)


# ------------------------------------------------------------------- masks
@pytest.mark.parametrize(("p", "top_k"), [(1.0, None), (2.0, None), (math.inf, 3)])
def test_mask_from_embedding_restricts_the_statistics(p, top_k, rng):
    tokens = np.array([[3, 5, 0, 0, 0], [2, 4, 6, 0, 0], [7, 1, 4, 9, 8]])
    mask = tokens != 0
    embedding = keras.layers.Embedding(10, 6, mask_zero=True, dtype="float64")
    embedded = to_numpy(embedding(tokens))
    layer = tfnorms.LpGroupNormalization(3, p=p, top_k=top_k, dtype="float64")
    got = to_numpy(layer(embedded, mask=mask))
    want = pref.reference_group_norm(embedded, 3, -1, p, top_k, None, None, 1e-3, mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    # Padding would change them: the unmasked statistics differ.
    assert not np.allclose(to_numpy(layer(embedded)), got, atol=1e-3)
    # At p=2 with nothing masked, Keras's GroupNormalization (whose JAX
    # moments round float64 through float32, hence the tolerance).
    if p == 2.0:
        full = np.ones_like(mask)
        np.testing.assert_allclose(
            to_numpy(layer(embedded, mask=full)),
            to_numpy(keras.layers.GroupNormalization(3, dtype="float64")(embedded)),
            atol=1e-6,
        )
    # In a model the mask reaches the layer, and passes on to the next one.
    inputs = keras.Input((5,), dtype="int32")
    h = tfnorms.LpGroupNormalization(3, p=p, top_k=top_k, dtype="float64")(embedding(inputs))
    pooled = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))
    got_pooled = pooled.predict(tokens, verbose=0)
    for i in range(3):
        np.testing.assert_allclose(got_pooled[i], want[i][mask[i]].mean(axis=0), atol=1e-6)


def test_channels_first_mask_and_mask_only_along_the_batch(rng):
    x = rng.normal(1.0, 2.0, size=(3, 4, 6))  # (batch, channels, time)
    mask = rng.uniform(size=(3, 6)) < 0.6
    mask[:, 0] = True
    layer = tfnorms.LpGroupNormalization(2, p=1, axis=1, dtype="float64")
    want = pref.reference_group_norm(x, 2, 1, 1.0, None, None, None, 1e-3, mask=mask)
    np.testing.assert_allclose(to_numpy(layer(x, mask=mask)), want, rtol=1e-7, atol=1e-9)
    # (batch, channels) with a (batch,) mask: each statistic is all valid or
    # all masked, so the statistics are the plain ones (as Keras).
    x2 = rng.normal(size=(4, 6))
    layer2 = tfnorms.LpGroupNormalization(3, p=1, dtype="float64")
    np.testing.assert_allclose(
        to_numpy(layer2(x2, mask=np.array([True, False, True, False]))), to_numpy(layer2(x2))
    )


def test_mask_of_wrong_rank_is_refused(rng):
    x = rng.normal(size=(4, 5, 6)).astype("float32")
    with pytest.raises(ValueError, match="one dimension less"):
        tfnorms.LpGroupNormalization(2)(x, mask=np.ones((4, 5, 6), bool))


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"groups": 0}, r"`groups` must be an integer >= 1, or -1.*received 0"),
    ({"groups": -2}, r"`groups` must be an integer >= 1, or -1.*received -2"),
    ({"groups": 2.0}, r"`groups` must be an integer >= 1, or -1.*received 2.0"),
    ({"groups": True}, r"`groups` must be an integer >= 1, or -1.*received True"),
    ({"groups": "4"}, r"`groups` must be an integer >= 1, or -1.*'4'"),
    ({"p": 0.5}, r"`p` must be .*>= 1.*received 0.5"),
    ({"p": 1, "top_k": 4}, r"`top_k` applies to p=inf only.*top_k=4 with p=1.0"),
    ({"p": "inf", "top_k": -1}, r"`top_k` must be an integer >= 1.*received -1"),
    ({"epsilon": -1.0}, r"`epsilon` must be a finite number > 0.*received -1.0"),
    ({"axis": [1, 2]}, r"`axis` must be an integer.*\[1, 2\]"),
    ({"scale": None}, r"`scale` must be True or False.*None"),
    ({"low_precision": "no"}, r"`low_precision` must be True or False.*'no'"),
    ({"beta_constraint": "no_such"}, r"`beta_constraint` must be a Keras constraint"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(**kwargs)


@pytest.mark.parametrize(
    ("groups", "shape", "message"),
    [
        (4, (2, 5, 6), r"`groups`=4 must divide the 6 channels .*divisors of 6, or -1"),
        (8, (2, 6), r"`groups`=8 must divide the 6 channels"),
        (32, (2, 3, 3, 16), r"`groups`=32 must divide the 16 channels"),  # the default
    ],
)
def test_groups_that_do_not_divide_the_channels_are_refused(groups, shape, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(groups)(np.ones(shape, "float32"))


@pytest.mark.parametrize(
    ("axis", "shape", "message"),
    [
        (0, (4, 6), r"must not be the batch axis 0"),
        (-2, (4, 6), r"must not be the batch axis 0"),
        (3, (4, 5, 6), r"`axis`=3 is out of range .* -3 to 2"),
        (-1, (6,), r"needs inputs of rank >= 2"),
    ],
)
def test_bad_axes_and_ranks_are_refused_at_build(axis, shape, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(2, axis=axis)(np.ones(shape, "float32"))


def test_unknown_channel_size_is_refused():
    with pytest.raises(ValueError, match=r"needs a known size on its axis -1"):
        tfnorms.LpGroupNormalization(2)(keras.Input((5, None)))


# -------------------------------------------- SPEC section 7 through helper
def configured_layers():
    return [
        tfnorms.LpGroupNormalization(2),
        tfnorms.LpGroupNormalization(
            groups=-1,
            p=1.5,
            axis=1,
            epsilon=1e-2,
            gamma_initializer="random_uniform",
            beta_initializer=keras.initializers.Constant(0.1),
            gamma_regularizer=keras.regularizers.L2(1e-3),
            beta_constraint=keras.constraints.MaxNorm(2.0),
            low_precision=True,
        ),
        tfnorms.LpGroupNormalization(5, p="inf", top_k=3, center=False, scale=False),
        tfnorms.LpGroupNormalization(1, p=1),
    ]


def test_config_roundtrip(rng):
    x = rng.normal(size=(6, 5, 10)).astype("float32")
    for layer in configured_layers():
        layer(x)
        clone = assert_config_roundtrip(layer, x)
        assert type(clone) is type(layer)
    config = tfnorms.LpGroupNormalization(-1, p=np.inf).get_config()
    assert config["p"] == "inf" and config["groups"] == -1


def conv_model():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = tfnorms.LpGroupNormalization(4, p=1)(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = tfnorms.LpGroupNormalization(2, p="inf", top_k=5)(h)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


def test_convolutional_model_trains(rng):
    """Saving, export, mixed precision, jit_compile and MirroredStrategy run
    through the shared helper in tests/test_layer_norm.py, on one model
    holding group norms and layer norms."""
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    y = (x[:, :3, :3, 0].mean(axis=(1, 2)) - x[:, 3:, 3:, 1].mean(axis=(1, 2)))[:, None]
    model = compile_for_regression(conv_model())
    assert_fit_lowers_loss(model, x, y.astype("float32"))
