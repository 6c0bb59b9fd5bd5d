"""What only the layer norms do (LpLayerNormalization, L1LayerNormalization):
several normalized axes, a mask on the last axis, inputs of another rank
than the built one (as Keras), the generalized statistics of
tfnorms._math.stats (kept axes, uncentered, unknown batch sizes), the L1
preset, the axis arguments and convert_model(layer_norm=). The contract
shared with the other families (Keras at p=2, NumPy references, Gaussian
consistency, degenerate inputs, precision, masks, bad arguments, config) is
test_norm_contract.py; LpRMSNormalization is test_rms_norm.py."""

import math

import keras
import numpy as np
import per_example_reference as pref
import pytest
from keras import ops
from layer_checks import to_numpy

import tfnorms
from tfnorms._math.replicas import Replicated
from tfnorms._math.stats import lp_statistics

P_CASES = [(1.0, None), (3.0, None), (math.inf, None), (math.inf, 3)]


# ---------------------------------------------------------- several axes
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


# ------------------------------------------------------------------- masks
def test_mask_on_the_last_axis_leaves_the_statistics_as_keras(rng):
    """With axis=-1 every position is normalized over its own features: the
    mask (which drops the last axis) changes nothing, and p=2 is Keras's."""
    tokens = np.array([[3, 5, 0, 0], [2, 0, 0, 0], [7, 1, 4, 9]])
    mask = tokens != 0
    embedded = to_numpy(keras.layers.Embedding(10, 6, mask_zero=True)(tokens))
    layer = tfnorms.L1LayerNormalization()
    np.testing.assert_allclose(
        to_numpy(layer(embedded, mask=mask)), to_numpy(layer(embedded)), atol=1e-6
    )
    p2 = tfnorms.LpLayerNormalization()
    np.testing.assert_allclose(
        to_numpy(p2(embedded, mask=mask)),
        to_numpy(keras.layers.LayerNormalization()(embedded)),
        atol=1e-5,
    )


# ------------------------------------------------- another rank than built
@pytest.mark.parametrize(
    ("axis", "built", "called"),
    [
        (-1, (4, 6), (2, 3, 6)),
        (-1, (2, 3, 6), (4, 6)),
        ([-2, -1], (2, 3, 4, 5), (2, 4, 5)),
        (1, (2, 5, 6), (2, 5, 3, 6)),
    ],
    ids=["last-up", "last-down", "two-last-down", "axis1-up"],
)
def test_built_at_one_rank_called_at_another_as_keras(axis, built, called, rng):
    """Keras's LayerNormalization takes inputs of any rank with the built
    sizes on its axes; so does this layer, with the same outputs."""
    theirs = keras.layers.LayerNormalization(axis=axis)
    mine = tfnorms.LpLayerNormalization(axis=axis)
    theirs.build(built)
    mine.build(built)
    pref.copy_random_weights(theirs, mine, rng)
    x = rng.normal(1.0, 2.0, size=called).astype("float32")
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=1e-5)
    l1 = tfnorms.L1LayerNormalization(axis=axis)
    l1.build(built)
    axes = axis if isinstance(axis, list) else [axis]
    want = pref.reference_layer_norm(x, axes, 1.0, None, None, None, 1e-3)
    np.testing.assert_allclose(to_numpy(l1(x)), want, atol=1e-5)


def test_axes_that_change_order_with_the_rank_keep_their_weights(rng):
    """axis=[-2, 2] is axes (2, 3) of a 5-D input but (1, 2) of a 3-D one,
    in the other order: each weight entry stays with its axis."""
    layer = tfnorms.LpLayerNormalization(p=3, axis=[-2, 2], dtype="float64")
    layer.build((None, 4, 6, 5, 3))
    gamma, beta = rng.uniform(0.5, 2.0, size=(6, 5)), rng.normal(size=(6, 5))  # axes 2, -2
    layer.set_weights([gamma, beta])
    x = rng.normal(size=(2, 5, 6))  # axis -2 has 5 entries, axis 2 has 6
    want = pref.reference_layer_norm(x, [1, 2], 3.0, None, gamma.T, beta.T, 1e-3)
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)


def test_another_size_on_an_axis_or_too_low_a_rank_is_refused():
    layer = tfnorms.LpLayerNormalization()
    layer.build((None, 5, 6))
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 6"):
        layer(np.ones((2, 7), "float32"))
    two = tfnorms.LpLayerNormalization(axis=[-2, -1])
    two.build((None, 3, 4))
    with pytest.raises(ValueError, match=r"expected min_ndim=2, found ndim=1"):
        two(np.ones((4,), "float32"))


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
    ({"axis": []}, r"`axis` must be an integer or a non-empty list.*\[\]"),
    ({"axis": [1, "2"]}, r"`axis` must be an integer.*'2'"),
    ({"rms_scaling": 1}, r"`rms_scaling` must be True or False.*1"),
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


def test_accepted_spellings_of_axis():
    assert tfnorms.LpLayerNormalization(axis=(1, 2)).axis == [1, 2]
    assert tfnorms.LpLayerNormalization(axis=np.int64(1)).axis == 1


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
    rms = same.get_layer("rms")
    assert type(rms) is tfnorms.LpRMSNormalization and rms.p == 2.0
    assert rms.epsilon == model.get_layer("rms").epsilon
    np.testing.assert_array_equal(rms.get_weights()[0], model.get_layer("rms").get_weights()[0])
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
