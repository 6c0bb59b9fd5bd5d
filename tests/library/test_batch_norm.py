"""LpBatchNormalization, its L1/Linf presets and MeanOnlyBatchNormalization:
Keras's BatchNormalization at p=2, NumPy references and finite differences,
Gaussian consistency, degenerate batches, low precision, masks, bad
arguments, and SPEC section 7 through the shared helper. Synchronization
across replicas is tests/test_distribute.py."""

import math

import keras
import lp_reference as ref
import numpy as np
import pytest
from keras import ops
from layer_checks import (
    assert_config_roundtrip,
    assert_export_roundtrip,
    assert_fit_lowers_loss,
    assert_jit_fit,
    assert_keras_roundtrip_fresh_process,
    assert_mixed_precision,
    compile_for_regression,
    finite_difference_gradient,
    loss_and_gradients,
    loss_and_input_gradient,
    to_numpy,
)

import tfnorms

P_CASES = [(1.0, None), (1.5, None), (2.0, None), (3.0, None), (math.inf, None)]
P_CASES += [(math.inf, 1), (math.inf, 10)]
P_IDS = [f"p{p}" + (f"-top{k}" if k else "") for p, k in P_CASES]


def weights_of(layer):
    return [to_numpy(w) for w in layer.weights]


# ------------------------------------------------- p=2 is Keras's batch norm
KERAS_ARGS = [
    {},
    {"axis": 1, "momentum": 0.8, "epsilon": 1e-2},
    {"center": False},
    {"scale": False, "momentum": 0.0},
]


@pytest.mark.parametrize("kwargs", KERAS_ARGS, ids=["default", "axis1", "nocenter", "noscale"])
def test_p2_reproduces_keras_batch_normalization(kwargs, rng):
    keras_bn = keras.layers.BatchNormalization(**kwargs)
    lp_bn = tfnorms.LpBatchNormalization(p=2, **kwargs)
    batches = [rng.normal(3.0, 2.0, size=(16, 5, 4)).astype("float32") for _ in range(4)]
    keras_bn(batches[0])
    lp_bn(batches[0])
    assert [w.name for w in lp_bn.weights] == [w.name for w in keras_bn.weights]
    # Random gamma/beta/moving statistics, set in Keras and copied over.
    keras_bn.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in keras_bn.weights])
    lp_bn.set_weights(keras_bn.get_weights())
    for x in batches:  # several training steps: outputs and moving statistics
        np.testing.assert_allclose(
            to_numpy(lp_bn(x, training=True)), to_numpy(keras_bn(x, training=True)), atol=1e-5
        )
        for mine, theirs in zip(weights_of(lp_bn), weights_of(keras_bn), strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(lp_bn(batches[0])), to_numpy(keras_bn(batches[0])), atol=1e-5
    )


def test_p2_weights_move_both_ways_with_keras(rng):
    x = rng.normal(1.0, 3.0, size=(32, 6)).astype("float32")
    trained = keras.layers.BatchNormalization(momentum=0.5)
    for _ in range(3):
        trained(x * rng.uniform(0.5, 2.0), training=True)
    trained.gamma.assign(rng.uniform(0.5, 2, size=6))
    mine = tfnorms.LpBatchNormalization()
    mine(x)
    mine.set_weights(trained.get_weights())  # Keras -> tfnorms
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(trained(x)), atol=1e-5)
    for _ in range(2):
        mine(x + 1.0, training=True)
    back = keras.layers.BatchNormalization()
    back(x)
    back.set_weights(mine.get_weights())  # tfnorms -> Keras
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(mine(x)), atol=1e-5)


def test_p2_with_mask_matches_keras_masked_statistics(rng):
    x = rng.normal(2.0, 1.5, size=(4, 9, 3)).astype("float32")
    mask = rng.uniform(size=(4, 9)) < 0.6
    keras_bn = keras.layers.BatchNormalization(momentum=0.5)
    lp_bn = tfnorms.LpBatchNormalization(momentum=0.5)
    np.testing.assert_allclose(
        to_numpy(lp_bn(x, training=True, mask=mask)),
        to_numpy(keras_bn(x, training=True, mask=mask)),
        atol=1e-5,
    )
    for mine, theirs in zip(weights_of(lp_bn), weights_of(keras_bn), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5)


def test_p2_model_trains_like_keras_batch_normalization(rng):
    """Same initial weights, same data: fit ends with the same weights, so
    the gradients agree too."""
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, :1] * 2 - x[:, 1:2]).astype("float32")

    def model(norm):
        return keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8), norm, keras.layers.Dense(1)]
        )

    theirs = compile_for_regression(model(keras.layers.BatchNormalization(momentum=0.9)))
    mine = compile_for_regression(model(tfnorms.LpBatchNormalization(momentum=0.9)))
    mine.set_weights(theirs.get_weights())
    for m in (theirs, mine):
        m.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------- forward and gradient against NumPy
def random_layer(p, top_k, rng, axis=-1, **kwargs):
    layer = tfnorms.LpBatchNormalization(
        p=p, top_k=top_k, axis=axis, momentum=0.5, epsilon=1e-3, dtype="float64", **kwargs
    )
    return layer


@pytest.mark.parametrize(("p", "top_k"), P_CASES, ids=P_IDS)
def test_forward_and_gradient_match_numpy(p, top_k, rng):
    x = rng.normal(0.5, 2.0, size=(8, 4, 3)) * np.array([1.0, 0.3, 3.0])
    layer = random_layer(p, top_k, rng)
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 2.0, size=3), rng.normal(size=3)
    moving = [rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)]
    layer.set_weights([gamma, beta, *moving])
    w, w2 = rng.normal(size=x.shape), rng.normal(size=x.shape)

    def np_loss(inputs, g=gamma, b=beta):
        y, _ = ref.lp_batch_norm(inputs, -1, p, top_k, g, b, 1e-3)
        return np.sum(w * y + 0.1 * w2 * y * y * y)

    # Products only: Keras's JAX ops.sin rounds float64 through float32.
    w_t, w2_t = ops.convert_to_tensor(w, "float64"), ops.convert_to_tensor(w2, "float64")
    loss_fn = lambda y: ops.sum(w_t * y + 0.1 * w2_t * y * y * y)

    # Training output and the moving statistics after one step (momentum 0.5).
    want, (mean, variance) = ref.lp_batch_norm(x, -1, p, top_k, gamma, beta, 1e-3)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), want, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.5 * moving[0] + 0.5 * mean)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 0.5 * moving[1] + 0.5 * variance)
    # Inference uses the moving statistics.
    want = ref.normalize(
        x, to_numpy(layer.moving_mean), to_numpy(layer.moving_variance), -1, gamma, beta, 1e-3
    )
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)

    # Gradients: input, gamma, beta against central differences of NumPy.
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
    # And the layer against its own finite differences (the shared helper).
    indices, numeric = finite_difference_gradient(
        layer, x, lambda y: loss_fn(y), layer.gamma, eps=1e-6
    )
    np.testing.assert_allclose(d_gamma.reshape(-1)[indices], numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(("p", "top_k"), [(1.0, None), (math.inf, 3)], ids=["p1", "pinf-top3"])
def test_channels_first_and_mask_match_numpy(p, top_k, rng):
    x = rng.normal(1.0, 2.0, size=(5, 3, 6))  # axis=1 holds the 3 channels
    mask = rng.uniform(size=(5, 6)) < 0.7
    layer = random_layer(p, top_k, rng, axis=1)
    got = layer(x, training=True, mask=mask)
    want, (mean, variance) = ref.lp_batch_norm(
        x, 1, p, top_k, np.ones(3), np.zeros(3), 1e-3, mask=mask[:, None, :]
    )
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.5 * mean)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 0.5 + 0.5 * variance)


def test_top_k_one_is_the_maximum_and_top_k_bounded_by_it(rng):
    x = rng.normal(size=(50, 4)).astype("float32")
    variances = {}
    for top_k in (None, 1, 10):
        layer = tfnorms.LinfBatchNormalization(top_k=top_k, momentum=0.0)
        layer(x, training=True)
        variances[top_k] = to_numpy(layer.moving_variance)
    np.testing.assert_allclose(variances[1], variances[None], rtol=1e-6)
    assert np.all(variances[10] < variances[None])


# ------------------------------------------------------ Gaussian consistency
@pytest.mark.parametrize("p", [1, 2, 3])
def test_gaussian_consistency_finite_p(p, rng):
    s = np.array([0.5, 1.0, 4.0])
    x = rng.normal(size=(100_000, 3)) * s + np.array([3.0, -1.0, 10.0])
    layer = tfnorms.LpBatchNormalization(p=p, momentum=0.0)
    layer(x.astype("float32"), training=True)
    sigma = np.sqrt(to_numpy(layer.moving_variance))
    np.testing.assert_allclose(sigma, s, rtol=0.02)


def test_gaussian_consistency_p_inf_within_supplement_bounds(rng):
    s = 2.5
    x = rng.normal(1.0, s, size=(10_000, 100)).astype("float32")
    layer = tfnorms.LinfBatchNormalization(momentum=0.0)
    layer(x, training=True)
    ratio = np.sqrt(to_numpy(layer.moving_variance)).mean() / s
    assert 0.740 <= ratio <= 1.543, ratio


# ------------------------------------------------------- degenerate batches
def all_layers(**kwargs):
    layers = [tfnorms.LpBatchNormalization(p=p, top_k=k, **kwargs) for p, k in P_CASES]
    return layers + [tfnorms.MeanOnlyBatchNormalization(**kwargs)]


@pytest.mark.parametrize(
    "x",
    [
        np.full((1, 3), 2.0),  # a batch of one element per channel
        np.full((1, 1, 1, 3), -7.0),
        np.stack([np.full(10, 4.0), np.arange(10.0), np.zeros(10)], axis=1),  # constant channels
        np.ones((6, 2, 2)),  # all equal
    ],
    ids=["one", "one-4d", "constant-channels", "all-equal"],
)
def test_degenerate_batches_stay_finite(x, rng):
    x = x.astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    for layer in all_layers(momentum=0.5):
        y = to_numpy(layer(x, training=True))
        assert np.all(np.isfinite(y)), layer.get_config()
        assert all(np.all(np.isfinite(v)) for v in weights_of(layer)), layer.get_config()
        _, dx = loss_and_input_gradient(layer, x, lambda y: ops.sum(ops.convert_to_tensor(w) * y))
        assert np.all(np.isfinite(dx)), layer.get_config()
        assert np.all(np.isfinite(to_numpy(layer(x)))), layer.get_config()


# --------------------------------------------------------------- precision
def test_low_precision_l1_and_linf_finite_where_l2_overflows(rng):
    """float16 inputs of magnitude ~1000: squares pass 65504, absolute values
    do not (the paper's low-precision argument)."""
    x32 = rng.normal(0.0, 1000.0, size=(64, 4)).astype("float32")
    x16 = x32.astype("float16")

    def run(p, top_k=None, low_precision=True):
        layer = tfnorms.LpBatchNormalization(
            p=p, top_k=top_k, momentum=0.0, low_precision=low_precision, dtype="mixed_float16"
        )
        y = to_numpy(layer(x16, training=True))
        assert keras.backend.standardize_dtype(layer(x16).dtype) == "float16"
        return y.astype("float64"), to_numpy(layer.moving_variance)

    def reference(p, top_k=None):
        layer = tfnorms.LpBatchNormalization(p=p, top_k=top_k, momentum=0.0, dtype="float64")
        return to_numpy(layer(x16.astype("float64"), training=True)), to_numpy(
            layer.moving_variance
        )

    for p, top_k in [(1, None), ("inf", None), ("inf", 10)]:
        y, variance = run(p, top_k)
        want_y, want_variance = reference(p, top_k)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(variance)), (p, top_k)
        np.testing.assert_allclose(variance, want_variance, rtol=1e-2)
        np.testing.assert_allclose(y, want_y, atol=2e-2)
    y, variance = run(2)
    assert not np.all(np.isfinite(variance))  # the squares overflowed
    # The default (float32 statistics, as Keras) is finite for p=2 too.
    y, variance = run(2, low_precision=False)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(variance))
    np.testing.assert_allclose(variance, reference(2)[1], rtol=1e-3)


def test_statistics_in_float32_for_float16_inputs_by_default(rng):
    x = rng.normal(2.0, 3.0, size=(32, 3)).astype("float16")
    half = tfnorms.LpBatchNormalization(p=1, momentum=0.0, dtype="mixed_float16")
    full = tfnorms.LpBatchNormalization(p=1, momentum=0.0)
    y_half = to_numpy(half(x, training=True)).astype("float32")
    y_full = to_numpy(full(x.astype("float32"), training=True))
    np.testing.assert_allclose(to_numpy(half.moving_variance), to_numpy(full.moving_variance))
    np.testing.assert_allclose(y_half, y_full, atol=5e-3)


# ------------------------------------------------------------------- masks
def test_mask_from_embedding_reaches_the_statistics(rng):
    tokens = np.array([[3, 5, 0, 0], [2, 0, 0, 0], [7, 1, 4, 9]])
    embedding = keras.layers.Embedding(10, 3, mask_zero=True)
    layer = tfnorms.L1BatchNormalization(momentum=0.0, dtype="float32")
    y = layer(embedding(tokens), training=True)
    e = to_numpy(embedding(tokens))
    valid = tokens != 0
    _, (mean, variance) = ref.lp_batch_norm(e, -1, 1.0, None, None, None, 1e-3, valid[..., None])
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), variance, rtol=1e-4)
    assert y.shape == e.shape
    # In a model, the mask passes through to the next layer.
    inputs = keras.Input((4,))
    h = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    h = tfnorms.LpBatchNormalization(p="inf", top_k=2)(h)
    out = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, out)
    assert np.all(np.isfinite(model.predict(tokens, verbose=0)))


def test_mask_of_wrong_rank_is_refused(rng):
    x = rng.normal(size=(4, 5, 3)).astype("float32")
    layer = tfnorms.LpBatchNormalization(p=1)
    with pytest.raises(ValueError, match="one dimension less"):
        layer(x, training=True, mask=np.ones((4, 5, 3), bool))


# ------------------------------------------------------------ mean-only BN
def test_mean_only_forward_moving_mean_and_inference(rng):
    x = rng.normal(3.0, 2.0, size=(6, 5, 4))
    layer = tfnorms.MeanOnlyBatchNormalization(momentum=0.25, axis=1, dtype="float64")
    layer.build(x.shape)
    beta = rng.normal(size=5)
    layer.set_weights([beta, np.zeros(5)])
    assert [w.name for w in layer.weights] == ["beta", "moving_mean"]
    mean = x.mean(axis=(0, 2))
    want = x - mean[None, :, None] + beta[None, :, None]
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), want, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.75 * mean)
    want = x - 0.75 * mean[None, :, None] + beta[None, :, None]
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-12)
    # Gradient w.r.t. x: (I - 1/n) w per channel.
    w = rng.normal(size=x.shape)
    _, dx = loss_and_input_gradient(layer, x, lambda y: ops.sum(ops.convert_to_tensor(w) * y))
    np.testing.assert_allclose(dx, w - w.mean(axis=(0, 2), keepdims=True), atol=1e-12)
    # Masked, no center.
    mask = rng.uniform(size=(6, 4)) < 0.5
    plain = tfnorms.MeanOnlyBatchNormalization(center=False, axis=1, dtype="float64")
    keep = mask[:, None, :]
    masked_mean = (x * keep).sum(axis=(0, 2)) / keep.sum()
    np.testing.assert_allclose(
        to_numpy(plain(x, training=True, mask=mask)), x - masked_mean[None, :, None], atol=1e-12
    )
    assert [w.name for w in plain.weights] == ["moving_mean"]


# ----------------------------------------------------- presets, trainable
def test_presets_are_lp_batch_norms(rng):
    x = rng.normal(size=(40, 3)).astype("float32")
    pairs = [
        (tfnorms.L1BatchNormalization(), tfnorms.LpBatchNormalization(p=1)),
        (tfnorms.LinfBatchNormalization(), tfnorms.LpBatchNormalization(p=np.inf)),
        (tfnorms.LinfBatchNormalization(top_k=10), tfnorms.LpBatchNormalization("inf", 10)),
    ]
    for preset, general in pairs:
        assert isinstance(preset, tfnorms.LpBatchNormalization)
        assert preset.p == general.p and preset.top_k == general.top_k
        np.testing.assert_array_equal(
            to_numpy(preset(x, training=True)), to_numpy(general(x, training=True))
        )
        assert "p" not in preset.get_config()
    assert "top_k" not in tfnorms.L1BatchNormalization().get_config()
    with pytest.raises(ValueError, match="fixes p=1"):
        tfnorms.L1BatchNormalization(p=2)
    with pytest.raises(ValueError, match="fixes p=inf"):
        tfnorms.LinfBatchNormalization(p=1)


def test_frozen_layer_runs_in_inference_mode(rng):
    x = rng.normal(5.0, size=(16, 3)).astype("float32")
    for layer in (tfnorms.LpBatchNormalization(p=1), tfnorms.MeanOnlyBatchNormalization()):
        layer(x)
        before = weights_of(layer)
        layer.trainable = False
        np.testing.assert_array_equal(to_numpy(layer(x, training=True)), to_numpy(layer(x)))
        for a, b in zip(before, weights_of(layer), strict=True):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"p": 0.5}, r"`p` must be .*>= 1.*received 0.5"),
    ({"p": -1}, r"`p` must be .*received -1"),
    ({"p": float("nan")}, r"`p` must be .*received nan"),
    ({"p": "two"}, r"`p` must be .*'two'"),
    ({"p": True}, r"`p` must be .*True"),
    ({"p": None}, r"`p` must be .*None"),
    ({"p": "inf", "top_k": 0}, r"`top_k` must be an integer >= 1.*received 0"),
    ({"p": "inf", "top_k": 2.5}, r"`top_k` must be an integer >= 1.*received 2.5"),
    ({"p": "inf", "top_k": 10.0}, r"`top_k` must be an integer >= 1.*received 10.0"),
    ({"p": "inf", "top_k": "3"}, r"`top_k` must be an integer >= 1.*'3'"),
    ({"p": 2, "top_k": 10}, r"`top_k` applies to p=inf only.*top_k=10 with p=2.0"),
    ({"momentum": 1.0}, r"`momentum` must be a number in \[0, 1\); received 1.0"),
    ({"momentum": -0.1}, r"`momentum` must be a number in \[0, 1\); received -0.1"),
    ({"momentum": float("nan")}, r"`momentum` must be a number in \[0, 1\); received nan"),
    ({"epsilon": 0.0}, r"`epsilon` must be a finite number > 0.*received 0.0"),
    ({"epsilon": -1e-3}, r"`epsilon` must be a finite number > 0.*received -0.001"),
    ({"axis": "last"}, r"`axis` must be an integer.*'last'"),
    ({"center": "yes"}, r"`center` must be True or False.*'yes'"),
    ({"synchronized": 1}, r"`synchronized` must be True or False.*1"),
    ({"low_precision": None}, r"`low_precision` must be True or False.*None"),
    ({"gamma_initializer": "no_such"}, r"`gamma_initializer` must be a Keras initializer"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpBatchNormalization(**kwargs)


def test_bad_arguments_of_mean_only_are_refused():
    with pytest.raises(ValueError, match=r"`momentum` must be a number in \[0, 1\)"):
        tfnorms.MeanOnlyBatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="`beta_constraint` must be a Keras constraint"):
        tfnorms.MeanOnlyBatchNormalization(beta_constraint="no_such")


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_axis_out_of_range_is_refused_at_build(axis):
    for layer in (
        tfnorms.LpBatchNormalization(axis=axis),
        tfnorms.MeanOnlyBatchNormalization(axis=axis),
    ):
        with pytest.raises(ValueError, match=rf"`axis`={axis} is out of range .* -2 to 1"):
            layer(np.ones((4, 3), "float32"))


def test_accepted_spellings_of_p_and_top_k():
    for p in (float("inf"), np.inf, "inf", "Infinity"):
        assert math.isinf(tfnorms.LpBatchNormalization(p=p).p)
    assert tfnorms.LpBatchNormalization(p=np.float32(1.5)).p == 1.5
    assert tfnorms.LpBatchNormalization(p="inf", top_k=np.int64(10)).top_k == 10
    assert tfnorms.LpBatchNormalization(momentum=0).momentum == 0.0


# -------------------------------------------- SPEC section 7 through helper
def configured_layers():
    return [
        tfnorms.LpBatchNormalization(),
        tfnorms.LpBatchNormalization(
            p=1.5,
            axis=1,
            momentum=0.9,
            epsilon=1e-2,
            gamma_initializer="random_uniform",
            beta_initializer=keras.initializers.Constant(0.1),
            gamma_regularizer=keras.regularizers.L2(1e-3),
            beta_constraint=keras.constraints.MaxNorm(2.0),
            synchronized=True,
            low_precision=True,
        ),
        tfnorms.LpBatchNormalization(p="inf", top_k=3, center=False, scale=False),
        tfnorms.L1BatchNormalization(moving_variance_initializer="random_uniform"),
        tfnorms.LinfBatchNormalization(top_k=2),
        tfnorms.MeanOnlyBatchNormalization(axis=1, beta_regularizer="l2", momentum=0.5),
    ]


def test_config_roundtrip(rng):
    x = rng.normal(size=(6, 4, 5)).astype("float32")
    for layer in configured_layers():
        layer(x, training=True)
        clone = assert_config_roundtrip(layer, x)
        assert type(clone) is type(layer)
    assert tfnorms.LpBatchNormalization(p=np.inf).get_config()["p"] == "inf"


def mixed_model(synchronized=False):
    """One small model holding every layer of this module."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1, synchronized=synchronized),
            keras.layers.Dense(8, activation="tanh"),
            tfnorms.LinfBatchNormalization(top_k=3, synchronized=synchronized),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1.5, synchronized=synchronized),
            keras.layers.Dense(8),
            tfnorms.LinfBatchNormalization(synchronized=synchronized),
            keras.layers.Dense(8),
            tfnorms.MeanOnlyBatchNormalization(synchronized=synchronized),
            keras.layers.Dense(1),
        ]
    )


def regression_data(rng, n=64):
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype("float32")
    return x, y


def test_fit_lowers_loss_and_saves(rng, tmp_path):
    x, y = regression_data(rng)
    model = compile_for_regression(mixed_model())
    assert_fit_lowers_loss(model, x, y)
    conv = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same"),
            tfnorms.LpBatchNormalization(p=1),
            keras.layers.Conv2D(4, 3, padding="same"),
            tfnorms.LinfBatchNormalization(top_k=10),
        ]
    )
    conv_x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    conv(conv_x, training=True)
    assert_keras_roundtrip_fresh_process([(model, x), (conv, conv_x)], tmp_path, atol=1e-5)


@pytest.mark.tensorflow_only
def test_export_roundtrip(rng, tmp_path):
    x, y = regression_data(rng, n=32)
    model = compile_for_regression(mixed_model())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_export_roundtrip(model, x, tmp_path, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    x, y = regression_data(rng)
    assert_mixed_precision(mixed_model, x, y, policy)


def test_jit_compile(rng):
    x, y = regression_data(rng)
    assert_jit_fit(mixed_model, x, y)


def test_synchronized_without_strategy_is_local(rng):
    """No strategy (or the JAX backend): synchronized=True computes the
    statistics of the batch it sees, the global batch of a jitted JAX step."""
    x = rng.normal(size=(16, 3)).astype("float32")
    for sync in (True, False):
        layer = tfnorms.LpBatchNormalization(p="inf", top_k=4, synchronized=sync, momentum=0.0)
        y = to_numpy(layer(x, training=True))
        if sync:
            y_sync, v_sync = y, to_numpy(layer.moving_variance)
    np.testing.assert_array_equal(y, y_sync)
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), v_sync)
