"""LpLayerNormalization and L1LayerNormalization: Keras's LayerNormalization
and RMSNormalization at p=2 (outputs and gradients), per-example NumPy
references and finite differences for p in {1, 3, inf} and top-k, Gaussian
consistency, degenerate inputs, low precision, masks, bad arguments, SPEC
section 7 through the shared helper, and the generalized statistics of
tfnorms.ops (kept axes, uncentered, unknown batch sizes)."""

import math

import keras
import lp_reference as ref
import numpy as np
import per_example_reference as pref
import pytest
from keras import ops
from layer_checks import (
    assert_config_roundtrip,
    assert_export_roundtrip,
    assert_fit_lowers_loss,
    assert_jit_fit,
    assert_keras_roundtrip_fresh_process,
    assert_mirrored_matches_single,
    assert_mixed_precision,
    compile_for_regression,
    finite_difference_gradient,
    loss_and_gradients,
    loss_and_input_gradient,
    to_numpy,
)

import tfnorms
from tfnorms._math.replicas import Replicated
from tfnorms._math.stats import lp_statistics

P_CASES = [(1.0, None), (3.0, None), (math.inf, None), (math.inf, 3)]
P_IDS = [f"p{p}" + (f"-top{k}" if k else "") for p, k in P_CASES]


# --------------------------------------------- p=2 is Keras's layer norm
KERAS_ARGS = [
    {},
    {"axis": [1, 2], "epsilon": 1e-2},
    {"axis": 1},
    {"center": False},
    {"scale": False, "epsilon": 1e-5},
]


@pytest.mark.parametrize(
    "kwargs", KERAS_ARGS, ids=["default", "axes12", "axis1", "nocenter", "noscale"]
)
def test_p2_reproduces_keras_layer_normalization(kwargs, rng):
    x = rng.normal(3.0, 2.0, size=(4, 5, 6)).astype("float32")
    theirs = keras.layers.LayerNormalization(**kwargs)
    mine = tfnorms.LpLayerNormalization(p=2, **kwargs)
    theirs(x)
    mine(x)
    assert [w.name for w in mine.weights] == [w.name for w in theirs.weights]
    assert [w.shape for w in mine.weights] == [w.shape for w in theirs.weights]
    pref.copy_random_weights(theirs, mine, rng)
    pref.assert_same_outputs_and_gradients(mine, theirs, x, rng)


@pytest.mark.parametrize("axis", [-1, [1, 2]], ids=["last", "axes12"])
def test_rms_scaling_p2_reproduces_keras_rms_normalization(axis, rng):
    x = rng.normal(1.0, 2.0, size=(4, 5, 6)).astype("float32")
    theirs = keras.layers.RMSNormalization(axis=axis, epsilon=1e-3)
    mine = tfnorms.LpLayerNormalization(p=2, axis=axis, rms_scaling=True)
    theirs(x)
    mine(x)
    # Keras's rule for rms_scaling: always gamma, never beta.
    assert [w.shape for w in mine.weights] == [w.shape for w in theirs.weights]
    assert [w.name for w in mine.weights] == ["gamma"]
    pref.copy_random_weights(theirs, mine, rng)
    pref.assert_same_outputs_and_gradients(mine, theirs, x, rng)
    np.testing.assert_allclose(
        to_numpy(mine(x)),
        to_numpy(ops.rms_normalization(x, scale=mine.gamma, axis=axis, epsilon=1e-3)),
        atol=1e-5,
    )
    # Uncentered: a shift of the input is not removed (a centered norm removes it).
    shifted = x + 5.0
    assert not np.allclose(to_numpy(mine(shifted)), to_numpy(mine(x)), atol=1e-2)
    centered = tfnorms.LpLayerNormalization(p=2, axis=axis)
    np.testing.assert_allclose(to_numpy(centered(shifted)), to_numpy(centered(x)), atol=1e-3)


def test_p2_weights_move_both_ways_and_training_matches_keras(rng):
    """Same initial weights, same data: fit ends with the same weights."""
    x = rng.normal(size=(64, 5, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")

    def model(norm):
        return keras.Sequential(
            [
                keras.Input((5, 6)),
                keras.layers.Dense(8),
                norm,
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )

    theirs = compile_for_regression(model(keras.layers.LayerNormalization()))
    mine = compile_for_regression(model(tfnorms.LpLayerNormalization()))
    mine.set_weights(theirs.get_weights())
    for m in (theirs, mine):
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    h = to_numpy(mine.layers[0](x))
    back = keras.layers.LayerNormalization()
    back(h)
    back.set_weights(mine.layers[1].get_weights())  # tfnorms -> Keras
    np.testing.assert_allclose(to_numpy(back(h)), to_numpy(mine.layers[1](h)), atol=1e-5)


# ---------------------------------------- forward and gradient against NumPy
@pytest.mark.parametrize("rms", [False, True], ids=["centered", "rms"])
@pytest.mark.parametrize(("p", "top_k"), P_CASES, ids=P_IDS)
def test_forward_and_gradient_match_numpy(p, top_k, rms, rng):
    x = rng.normal(0.5, 2.0, size=(3, 4, 5)) * np.array([1.0, 0.3, 3.0, 1.0])[:, None]
    layer = tfnorms.LpLayerNormalization(
        p=p, top_k=top_k, rms_scaling=rms, epsilon=1e-3, dtype="float64"
    )
    layer.build(x.shape)
    weights = [rng.uniform(0.5, 2.0, size=5)] + ([] if rms else [rng.normal(size=5)])
    layer.set_weights(weights)
    gamma, beta = weights[0], (None if rms else weights[1])
    loss_fn, np_loss_of_y = pref.product_loss(rng.normal(size=x.shape), rng.normal(size=x.shape))

    def np_loss(inputs, g=gamma, b=beta):
        return np_loss_of_y(pref.reference_layer_norm(inputs, [-1], p, top_k, g, b, 1e-3, rms=rms))

    want = pref.reference_layer_norm(x, [-1], p, top_k, gamma, beta, 1e-3, rms=rms)
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)
    # Per example: training and inference compute the same thing.
    np.testing.assert_array_equal(to_numpy(layer(x, training=True)), to_numpy(layer(x)))

    loss, dx = loss_and_input_gradient(layer, x, loss_fn)
    assert float(loss) == pytest.approx(np_loss(x), rel=1e-7)
    np.testing.assert_allclose(dx, ref.central_differences(np_loss, x), rtol=1e-5, atol=1e-7)
    _, grads = loss_and_gradients(layer, x, loss_fn)
    np.testing.assert_allclose(
        grads[0], ref.central_differences(lambda g: np_loss(x, g=g), gamma), rtol=1e-5, atol=1e-8
    )
    if not rms:
        np.testing.assert_allclose(
            grads[1], ref.central_differences(lambda b: np_loss(x, b=b), beta), rtol=1e-5
        )
    indices, numeric = finite_difference_gradient(layer, x, loss_fn, layer.gamma)
    np.testing.assert_allclose(grads[0].reshape(-1)[indices], numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("p", "top_k", "axis"),
    [(1.0, None, [1, 2]), (3.0, None, [0, 2]), (math.inf, 4, [1, 3]), (math.inf, None, 1)],
    ids=["p1-axes12", "p3-axes02", "pinf-top4-axes13", "pinf-axis1"],
)
def test_several_axes_match_numpy(p, top_k, axis, rng):
    x = rng.normal(1.0, 2.0, size=(3, 4, 2, 5))
    layer = tfnorms.LpLayerNormalization(p=p, top_k=top_k, axis=axis, dtype="float64")
    layer.build(x.shape)
    axes = axis if isinstance(axis, list) else [axis]
    shape = tuple(x.shape[a] for a in axes)
    gamma, beta = rng.uniform(0.5, 2.0, size=shape), rng.normal(size=shape)
    layer.set_weights([gamma, beta])
    want = pref.reference_layer_norm(x, axes, p, top_k, gamma, beta, 1e-3)
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)


def test_top_k_one_is_the_maximum_and_top_k_below_it(rng):
    x = rng.normal(size=(4, 50)).astype("float32")
    out = {
        k: to_numpy(tfnorms.LpLayerNormalization(p="inf", top_k=k, center=False)(x))
        for k in (None, 1, 10)
    }
    np.testing.assert_allclose(out[1], out[None], rtol=1e-6)
    # A smaller scale (mean of the 10 largest < maximum): larger outputs.
    assert np.all(np.abs(out[10]) >= np.abs(out[None]))


# ------------------------------------------------------ Gaussian consistency
def implied_sigma(x, y, epsilon):
    """sqrt(sigma_p**2 + epsilon) of each row from y = (x - mu) / that."""
    return np.sqrt(np.var(x, axis=-1) / np.var(y, axis=-1) - epsilon)


@pytest.mark.parametrize("rms", [False, True], ids=["centered", "rms"])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_gaussian_consistency_finite_p(p, rms, rng):
    s = np.array([0.5, 1.0, 4.0])
    mu = 0.0 if rms else np.array([3.0, -1.0, 10.0])
    x = (rng.normal(size=(3, 100_000)) * s[:, None] + np.reshape(mu, (-1, 1))).astype("float32")
    layer = tfnorms.LpLayerNormalization(p=p, rms_scaling=rms, epsilon=1e-9)
    y = to_numpy(layer(x)).astype("float64")
    np.testing.assert_allclose(implied_sigma(x.astype("float64"), y, 1e-9), s, rtol=0.02)


def test_gaussian_consistency_p_inf_within_supplement_bounds(rng):
    s = 2.5
    x = rng.normal(1.0, s, size=(200, 5_000)).astype("float32")
    y = to_numpy(tfnorms.LpLayerNormalization(p="inf", epsilon=1e-9)(x)).astype("float64")
    ratio = implied_sigma(x.astype("float64"), y, 1e-9).mean() / s
    assert 0.740 <= ratio <= 1.543, ratio


# ------------------------------------------------------- degenerate inputs
def all_layers(**kwargs):
    layers = [tfnorms.LpLayerNormalization(p=p, top_k=k, **kwargs) for p, k in P_CASES]
    layers += [
        tfnorms.LpLayerNormalization(p=p, top_k=k, rms_scaling=True, **kwargs) for p, k in P_CASES
    ]
    return layers + [tfnorms.LpLayerNormalization(p=2, **kwargs)]


@pytest.mark.parametrize(
    "x",
    [
        np.full((3, 1), 2.0),  # one feature per example
        np.full((1, 1, 1), -7.0),
        np.stack([np.full(10, 4.0), np.arange(10.0), np.zeros(10)]),  # constant examples
        np.zeros((2, 3, 4)),
    ],
    ids=["one", "one-3d", "constant-rows", "zeros"],
)
def test_degenerate_inputs_stay_finite(x, rng):
    x = x.astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    loss_fn = lambda y: ops.sum(ops.convert_to_tensor(w) * y)
    for layer in all_layers():
        y = to_numpy(layer(x))
        assert np.all(np.isfinite(y)), layer.get_config()
        _, dx, grads = pref.inference_gradients(layer, x, loss_fn)
        assert np.all(np.isfinite(dx)), layer.get_config()
        assert all(np.all(np.isfinite(g)) for g in grads), layer.get_config()


# --------------------------------------------------------------- precision
def test_low_precision_l1_and_linf_finite_where_l2_overflows(rng):
    """float16 features of magnitude ~1000: squares pass 65504, absolute
    values do not (the paper's low-precision argument)."""
    x16 = rng.normal(0.0, 1000.0, size=(8, 64)).astype("float16")

    def run(p, top_k=None, rms=False, low_precision=True):
        layer = tfnorms.LpLayerNormalization(
            p=p,
            top_k=top_k,
            rms_scaling=rms,
            low_precision=low_precision,
            dtype="mixed_float16",
        )
        y = layer(x16)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        return to_numpy(y).astype("float64")

    def reference(p, top_k=None, rms=False):
        layer = tfnorms.LpLayerNormalization(p=p, top_k=top_k, rms_scaling=rms, dtype="float64")
        return to_numpy(layer(x16.astype("float64")))

    for p, top_k, rms in [(1, None, False), ("inf", None, False), ("inf", 10, False)] + [
        (1, None, True),
        ("inf", None, True),
    ]:
        y = run(p, top_k, rms)
        assert np.all(np.isfinite(y)), (p, top_k, rms)
        np.testing.assert_allclose(y, reference(p, top_k, rms), atol=2e-2)
    # p=2 in float16: the squares overflow and the output collapses.
    y = run(2)
    assert not np.allclose(y, reference(2), atol=0.5)
    # The default (float32 statistics, as Keras) is right for p=2 too.
    np.testing.assert_allclose(run(2, low_precision=False), reference(2), atol=2e-2)


# ------------------------------------------------------------------- masks
def test_mask_passes_through_and_last_axis_statistics_are_keras(rng):
    tokens = np.array([[3, 5, 0, 0], [2, 0, 0, 0], [7, 1, 4, 9]])
    mask = tokens != 0
    embedding = keras.layers.Embedding(10, 6, mask_zero=True)
    embedded = to_numpy(embedding(tokens))
    layer = tfnorms.L1LayerNormalization()
    # axis=-1: every position over its own features, with or without the mask.
    np.testing.assert_allclose(
        to_numpy(layer(embedded, mask=mask)), to_numpy(layer(embedded)), atol=1e-6
    )
    np.testing.assert_array_equal(
        to_numpy(layer.compute_mask(embedded, ops.convert_to_tensor(mask))), mask
    )
    p2 = tfnorms.LpLayerNormalization()
    np.testing.assert_allclose(
        to_numpy(p2(embedded, mask=mask)),
        to_numpy(keras.layers.LayerNormalization()(embedded)),
        atol=1e-5,
    )
    # In a model, the next layer still receives the mask.
    inputs = keras.Input((4,), dtype="int32")
    h = tfnorms.L1LayerNormalization()(embedding(inputs))
    pooled = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))
    got = pooled.predict(tokens, verbose=0)
    for i in range(3):
        valid = embedded[i][mask[i]]
        normalized = pref.reference_layer_norm(valid, [-1], 1.0, None, None, None, 1e-3)
        np.testing.assert_allclose(got[i], normalized.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize(("p", "top_k"), [(1.0, None), (2.0, None), (math.inf, 3)])
def test_mask_enters_statistics_over_time_axes(p, top_k, rng):
    x = rng.normal(1.0, 2.0, size=(4, 6, 3))
    mask = rng.uniform(size=(4, 6)) < 0.6
    mask[:, 0] = True
    layer = tfnorms.LpLayerNormalization(p=p, top_k=top_k, axis=[1, 2], dtype="float64")
    got = to_numpy(layer(x, mask=mask))
    want = pref.reference_layer_norm(x, [1, 2], p, top_k, None, None, 1e-3, mask=mask[..., None])
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    assert np.all(np.isfinite(to_numpy(layer(x, mask=np.zeros((4, 6), bool)))))


def test_mask_of_wrong_rank_is_refused(rng):
    x = rng.normal(size=(4, 5, 3)).astype("float32")
    with pytest.raises(ValueError, match="one dimension less"):
        tfnorms.LpLayerNormalization(p=1)(x, mask=np.ones((4, 5, 3), bool))


# ------------------------------------------------ the generalized statistics
def test_lp_statistics_with_kept_axes_matches_numpy(rng):
    x = rng.normal(2.0, 3.0, size=(3, 5, 4))
    mask = rng.uniform(size=(3, 5, 1)) < 0.7
    mask[:, 0] = True
    for p, top_k in P_CASES + [(2.0, None)]:
        for kept, m in [((0,), None), ((0, 2), None), ((0,), mask), ((0, 2), mask)]:
            axes = [a for a in range(3) if a not in kept]
            mean, variance = lp_statistics(x, kept, p=p, top_k=top_k, mask=m)
            want_mean, want_variance = pref.per_example_statistics(x, axes, p, top_k, m)
            np.testing.assert_allclose(
                to_numpy(mean), np.squeeze(want_mean, tuple(axes)), rtol=1e-10, atol=1e-12
            )
            np.testing.assert_allclose(
                to_numpy(variance), np.squeeze(want_variance, tuple(axes)), rtol=1e-7
            )
            # Uncentered: mean 0, the scale around 0.
            zero, variance = lp_statistics(x, kept, p=p, top_k=top_k, center=False)
            _, want_variance = pref.per_example_statistics(x, axes, p, top_k, center=False)
            np.testing.assert_array_equal(to_numpy(zero), 0.0)
            np.testing.assert_allclose(
                to_numpy(variance), np.squeeze(want_variance, tuple(axes)), rtol=1e-7
            )


def test_kept_axes_refuse_cross_replica_reduction(rng):
    x = ops.convert_to_tensor(rng.normal(size=(3, 4)))
    with pytest.raises(ValueError, match="one channel axis"):
        lp_statistics(x, (0, 1), reduction=Replicated(lambda sums, gathers: (sums, gathers)))


@pytest.mark.tensorflow_only
def test_unknown_batch_and_time_sizes_in_a_traced_graph(rng):
    """The statistics with sizes known only at run time (tf.function with
    None dimensions), top-k included."""
    import tensorflow as tf

    layers = [
        tfnorms.LpLayerNormalization(p="inf", top_k=3),
        tfnorms.LpLayerNormalization(p=1, axis=[1, 2]),
        tfnorms.LpLayerNormalization(p="inf", top_k=2, rms_scaling=True),
    ]
    x = rng.normal(size=(2, 5, 4)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    for layer in layers:
        layer(x)  # build with the static sizes
        eager = to_numpy(layer(x, mask=mask))

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, 5 if layer.axis == [1, 2] else None, 4)),
                tf.TensorSpec((None, 5 if layer.axis == [1, 2] else None), tf.bool),
            ]
        )
        def traced(inputs, m, layer=layer):
            return layer(inputs, mask=m)

        np.testing.assert_allclose(to_numpy(traced(x, mask)), eager, atol=1e-6)


# ------------------------------------------------------------ presets
def test_l1_preset_is_lp_layer_norm_with_p1(rng):
    x = rng.normal(size=(4, 7)).astype("float32")
    preset, general = tfnorms.L1LayerNormalization(), tfnorms.LpLayerNormalization(p=1)
    assert isinstance(preset, tfnorms.LpLayerNormalization) and preset.p == 1.0
    np.testing.assert_array_equal(to_numpy(preset(x)), to_numpy(general(x)))
    assert "p" not in preset.get_config() and "top_k" not in preset.get_config()
    with pytest.raises(ValueError, match="fixes p=1"):
        tfnorms.L1LayerNormalization(p=2)
    with pytest.raises(ValueError, match="`top_k` applies to p=inf only"):
        tfnorms.L1LayerNormalization(top_k=3)


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"p": 0.5}, r"`p` must be .*>= 1.*received 0.5"),
    ({"p": float("nan")}, r"`p` must be .*received nan"),
    ({"p": "two"}, r"`p` must be .*'two'"),
    ({"p": True}, r"`p` must be .*True"),
    ({"p": "inf", "top_k": 0}, r"`top_k` must be an integer >= 1.*received 0"),
    ({"p": "inf", "top_k": 2.5}, r"`top_k` must be an integer >= 1.*received 2.5"),
    ({"p": 2, "top_k": 10}, r"`top_k` applies to p=inf only.*top_k=10 with p=2.0"),
    ({"epsilon": 0.0}, r"`epsilon` must be a finite number > 0.*received 0.0"),
    ({"epsilon": float("inf")}, r"`epsilon` must be a finite number > 0.*received inf"),
    ({"axis": "last"}, r"`axis` must be an integer.*'last'"),
    ({"axis": []}, r"`axis` must be an integer or a non-empty list.*\[\]"),
    ({"axis": [1, "2"]}, r"`axis` must be an integer.*'2'"),
    ({"axis": 1.0}, r"`axis` must be an integer.*1.0"),
    ({"center": "yes"}, r"`center` must be True or False.*'yes'"),
    ({"rms_scaling": 1}, r"`rms_scaling` must be True or False.*1"),
    ({"low_precision": None}, r"`low_precision` must be True or False.*None"),
    ({"gamma_initializer": "no_such"}, r"`gamma_initializer` must be a Keras initializer"),
    ({"beta_regularizer": "no_such"}, r"`beta_regularizer` must be a Keras regularizer"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpLayerNormalization(**kwargs)


@pytest.mark.parametrize(
    ("axis", "message"),
    [
        (3, r"`axis`=3 is out of range .* -3 to 2"),
        ([1, -4], r"`axis`=-4 is out of range .* -3 to 2"),
        ([2, -1], r"`axis` names an axis twice .*\[2, -1\]"),
    ],
)
def test_bad_axes_are_refused_at_build(axis, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpLayerNormalization(axis=axis)(np.ones((2, 3, 4), "float32"))


def test_unknown_feature_size_is_refused():
    with pytest.raises(ValueError, match=r"needs known sizes on its axes \[1, 2\]"):
        tfnorms.LpLayerNormalization(axis=[1, 2])(keras.Input((None, 4)))


def test_accepted_spellings_of_p_and_axis():
    for p in (float("inf"), np.inf, "inf", "Infinity"):
        assert math.isinf(tfnorms.LpLayerNormalization(p=p).p)
    assert tfnorms.LpLayerNormalization(axis=(1, 2)).axis == [1, 2]
    assert tfnorms.LpLayerNormalization(axis=np.int64(1)).axis == 1
    assert tfnorms.LpLayerNormalization(p="inf", top_k=np.int32(4)).top_k == 4


# -------------------------------------------- SPEC section 7 through helper
def configured_layers():
    return [
        tfnorms.LpLayerNormalization(),
        tfnorms.LpLayerNormalization(
            p=1.5,
            axis=[1, 2],
            epsilon=1e-2,
            gamma_initializer="random_uniform",
            beta_initializer=keras.initializers.Constant(0.1),
            gamma_regularizer=keras.regularizers.L2(1e-3),
            beta_constraint=keras.constraints.MaxNorm(2.0),
            low_precision=True,
        ),
        tfnorms.LpLayerNormalization(p="inf", top_k=3, center=False, scale=False),
        tfnorms.LpLayerNormalization(p="inf", rms_scaling=True, axis=1),
        tfnorms.L1LayerNormalization(rms_scaling=True),
    ]


def test_config_roundtrip(rng):
    x = rng.normal(size=(6, 4, 5)).astype("float32")
    for layer in configured_layers():
        layer(x)
        clone = assert_config_roundtrip(layer, x)
        assert type(clone) is type(layer)
    assert tfnorms.LpLayerNormalization(p=np.inf).get_config()["p"] == "inf"


def sequence_model():
    """A small sequence model holding every configuration of the layer norms
    and group norms (tests/test_group_norm.py relies on it for SPEC section 7)."""
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(8)(inputs)
    h = tfnorms.L1LayerNormalization()(h)
    h = keras.layers.Dense(8, activation="tanh")(h)
    h = tfnorms.LpLayerNormalization(p="inf", top_k=3)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpLayerNormalization(p=3, axis=[1, 2])(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpLayerNormalization(p="inf", rms_scaling=True)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpGroupNormalization(4, p=1)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpGroupNormalization(2, p="inf", top_k=5)(h)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs)


def regression_data(rng, n=64):
    x = rng.normal(size=(n, 5, 4)).astype("float32")
    y = (np.sin(x[:, :, :1]).mean(axis=1) + 0.5 * x[:, 0, 1:2] * x[:, 1, 2:3]).astype("float32")
    return x, y


def test_fit_lowers_loss_and_saves(rng, tmp_path):
    x, y = regression_data(rng)
    model = compile_for_regression(sequence_model())
    assert_fit_lowers_loss(model, x, y)
    assert_keras_roundtrip_fresh_process([(model, x)], tmp_path, atol=1e-5)


@pytest.mark.tensorflow_only
def test_export_roundtrip(rng, tmp_path):
    x, y = regression_data(rng, n=32)
    model = compile_for_regression(sequence_model())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_export_roundtrip(model, x, tmp_path, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    x, y = regression_data(rng)
    assert_mixed_precision(sequence_model, x, y, policy)


def test_jit_compile(rng):
    x, y = regression_data(rng)
    assert_jit_fit(sequence_model, x, y)


@pytest.mark.tensorflow_only
def test_mirrored_strategy_matches_one_device(rng):
    x, y = regression_data(rng, n=16)
    assert_mirrored_matches_single(sequence_model, x, y, steps=2)


# ---------------------------------------------------- convert_model(layer_norm=)
def keras_transformer_block(rng):
    """A functional model with two Keras LayerNormalizations (one over two
    axes), a BatchNormalization and an RMSNormalization, with random gamma
    and beta."""
    inputs = keras.Input((5, 8))
    h = keras.layers.MultiHeadAttention(2, key_dim=4)(inputs, inputs)
    h = keras.layers.LayerNormalization(epsilon=1e-2, name="ln_a")(keras.layers.Add()([h, inputs]))
    h = keras.layers.Dense(8)(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.LayerNormalization(axis=[1, 2], name="ln_b")(h)
    h = keras.layers.RMSNormalization(name="rms")(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    for name in ("ln_a", "ln_b"):
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in layer.weights])
    return model


def test_convert_model_l2_keeps_outputs_and_l1_swaps_the_layer_norms(rng):
    model = keras_transformer_block(rng)
    x = rng.normal(size=(4, 5, 8)).astype("float32")
    want = model.predict(x, verbose=0)

    same = tfnorms.convert_model(model, layer_norm="l2")
    for name in ("ln_a", "ln_b"):
        assert type(same.get_layer(name)) is tfnorms.LpLayerNormalization
        assert same.get_layer(name).p == 2.0
    assert type(same.get_layer("bn")) is keras.layers.BatchNormalization
    assert type(same.get_layer("rms")) is keras.layers.RMSNormalization
    np.testing.assert_allclose(same.predict(x, verbose=0), want, atol=1e-5)

    l1 = tfnorms.convert_model(model, layer_norm="l1", batch_norm="l1")
    assert type(l1.get_layer("bn")) is tfnorms.L1BatchNormalization
    for name in ("ln_a", "ln_b"):
        old, new = model.get_layer(name), l1.get_layer(name)
        assert type(new) is tfnorms.L1LayerNormalization
        assert new.epsilon == old.epsilon and new.axis == old.axis
        for a, b in zip(old.get_weights(), new.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        # The converted layer computes L1 layer normalization with those weights.
        probe = rng.normal(size=(2, 5, 8)).astype("float64")
        gamma, beta = new.get_weights()
        axes = new.axis
        np.testing.assert_allclose(
            to_numpy(new(probe.astype("float32"))),
            pref.reference_layer_norm(probe, axes, 1.0, None, gamma, beta, new.epsilon),
            atol=1e-5,
        )
    got = l1.predict(x, verbose=0)
    assert np.all(np.isfinite(got)) and not np.allclose(got, want, atol=1e-4)
    # The original is unchanged.
    assert type(model.get_layer("ln_a")) is keras.layers.LayerNormalization
    np.testing.assert_array_equal(model.predict(x, verbose=0), want)


def test_convert_model_layer_norm_dict_callable_filter_and_bad_values(rng):
    model = keras_transformer_block(rng)
    top = tfnorms.convert_model(model, layer_norm={"p": "inf", "top_k": 4})
    assert top.get_layer("ln_b").top_k == 4 and math.isinf(top.get_layer("ln_b").p)
    custom = tfnorms.convert_model(
        model, layer_norm=lambda layer: tfnorms.LpLayerNormalization(p=3, name=layer.name)
    )
    assert custom.get_layer("ln_a").p == 3.0
    only_a = tfnorms.convert_model(
        model, layer_norm="linf", layer_filter=lambda layer: layer.name == "ln_a"
    )
    assert math.isinf(only_a.get_layer("ln_a").p)
    assert type(only_a.get_layer("ln_b")) is keras.layers.LayerNormalization
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    for converted in (top, custom, only_a):
        assert np.all(np.isfinite(converted.predict(x, verbose=0)))
    for bad in ("l3", "L1", 1, {"p": 0}):
        with pytest.raises(ValueError, match="`layer_norm` must be|`p` must be"):
            tfnorms.convert_model(model, layer_norm=bad)
