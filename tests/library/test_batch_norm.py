"""What only the batch norms do (LpBatchNormalization, its L1/Linf presets and
MeanOnlyBatchNormalization): Batch Renormalization against NumPy and its
arguments, Keras's configs and masks, the presets, frozen layers and
`synchronized` without a strategy. The contract shared with the other
families (Keras at p=2, NumPy references, Gaussian consistency, degenerate
batches, precision, masks, bad arguments, config) is test_norm_contract.py;
synchronization across replicas is test_distribute.py."""

import math

import keras
import lp_reference as ref
import numpy as np
import pytest
from layer_checks import (
    assert_config_roundtrip,
    loss_and_gradients,
    loss_and_input_gradient,
    mirrored_strategy,
    to_numpy,
)
from norm_families import P_LONG, p_id, random_weights
from per_example_reference import product_loss

import tfnorms


def weights_of(layer):
    return [to_numpy(w) for w in layer.weights]


# ------------------------------------------------------- Keras's configs
KERAS_CONFIGS = {
    "default": {},
    "everything": {
        "axis": 1,
        "momentum": 0.8,
        "epsilon": 1e-2,
        "center": False,
        "gamma_initializer": "random_normal",
        "moving_variance_initializer": "random_uniform",
        "gamma_regularizer": "l2",
        "gamma_constraint": "non_neg",
        "renorm": True,
        "renorm_clipping": {"rmax": 1.5, "rmin": 0.5, "dmax": 0.3},
        "renorm_momentum": 0.9,
    },
    "renorm-defaults": {"renorm": True},
}


@pytest.mark.parametrize("kwargs", list(KERAS_CONFIGS.values()), ids=list(KERAS_CONFIGS))
def test_keras_config_and_weights_load_both_ways(kwargs, rng):
    """Every key of a Keras BatchNormalization config is an argument of the
    same meaning: from_config gives the same config back, and weights move
    from Keras to tfnorms and back with the same outputs."""
    x = rng.normal(1.0, 2.0, size=(8, 5, 4)).astype("float32")
    theirs = keras.layers.BatchNormalization(**kwargs)
    theirs(x, training=True)
    theirs.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in theirs.weights])
    config = theirs.get_config()
    mine = tfnorms.LpBatchNormalization.from_config(dict(config))
    mine(x)
    assert {key: mine.get_config()[key] for key in config} == config
    mine.set_weights(theirs.get_weights())  # Keras -> tfnorms
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(mine(x, training=True)), to_numpy(theirs(x, training=True)), atol=1e-5
    )
    back = keras.layers.BatchNormalization.from_config(config)
    back(x)
    back.set_weights(mine.get_weights())  # tfnorms -> Keras
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(mine(x)), atol=1e-5)


def test_mask_from_masking_reaches_a_channels_first_batch_norm_as_keras(rng):
    """Keras's mask drops the last axis whatever `axis` is: with `axis=1` on
    (batch, time, features) each time step is a channel with its own valid
    rows."""
    x = rng.normal(2.0, 1.5, size=(6, 7, 4)).astype("float32")
    for row, length in enumerate([7, 5, 3, 7, 6, 4]):
        x[row, length:] = 0.0  # padding, masked by Masking

    def model(norm):
        return keras.Sequential([keras.Input((7, 4)), keras.layers.Masking(0.0), norm])

    theirs = model(keras.layers.BatchNormalization(axis=1, momentum=0.5))
    mine = model(tfnorms.LpBatchNormalization(axis=1, momentum=0.5))
    np.testing.assert_allclose(
        to_numpy(mine(x, training=True)), to_numpy(theirs(x, training=True)), atol=1e-5
    )
    for a, b in zip(mine.weights, theirs.weights, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)
    # Other orders: the valid rows of each time step (NumPy, per channel).
    l1 = model(tfnorms.L1BatchNormalization(axis=1, momentum=0.0))
    l1(x, training=True)
    valid = np.any(x != 0.0, axis=-1)
    mean, variance = ref.lp_statistics(x, 1, 1.0, mask=valid[..., None])
    np.testing.assert_allclose(to_numpy(l1.layers[-1].moving_mean), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(l1.layers[-1].moving_variance), variance, rtol=1e-4)


@pytest.mark.tensorflow_only
def test_synchronized_mask_needs_the_channels_last(rng):
    """Under a strategy the cross-replica reduction shares one mask between
    channels, which Keras's mask is only with the channels last."""
    import tensorflow as tf

    strategy = mirrored_strategy()
    with strategy.scope():
        layer = tfnorms.LpBatchNormalization(p=1, axis=1, synchronized=True)
        layer.build((None, 3, 4))
    x, mask = tf.constant(rng.normal(size=(4, 3, 4)), "float32"), tf.ones((4, 3), bool)
    with pytest.raises(ValueError, match=r"axis=1\) cannot synchronize masked statistics"):
        strategy.run(lambda: layer(x, training=True, mask=mask))


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("frozen", [False, True], ids=["inference", "frozen"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: tfnorms.LpBatchNormalization(p=1, axis=1, synchronized=True),
        lambda: tfnorms.MeanOnlyBatchNormalization(axis=1, synchronized=True),
    ],
    ids=["lp", "mean_only"],
)
def test_synchronized_mask_with_channels_elsewhere_is_fine_in_inference(make, frozen, rng):
    """Inference (and a frozen layer, training=True) uses the moving
    statistics and reduces nothing, so the refusal above does not apply: a
    masked model with axis=1 and synchronized=True predicts under a strategy,
    as Keras's layer does, with the unsynchronized layer's output."""
    import tensorflow as tf

    strategy = mirrored_strategy()
    with strategy.scope():
        layer = make()
        layer.build((None, 3, 4))
    for variable in layer.non_trainable_variables:
        variable.assign(rng.uniform(0.5, 2.0, size=variable.shape))
    layer.trainable = not frozen
    x, mask = tf.constant(rng.normal(size=(4, 3, 4)), "float32"), tf.ones((4, 3), bool)
    got = strategy.run(lambda: layer(x, training=frozen, mask=mask))
    want = to_numpy(layer(x, training=False))
    for value in strategy.experimental_local_results(got):
        np.testing.assert_allclose(to_numpy(value), want, rtol=1e-6)


# ------------------------------------------------------------ renorm
RENORM_FACTORS = {"r": np.array([1.1, 3.0, 0.2]), "d": np.array([0.1, -2.0, 0.3])}


@pytest.mark.parametrize(("p", "top_k"), P_LONG, ids=[p_id(p, k) for p, k in P_LONG])
def test_renorm_matches_numpy(p, top_k, rng):
    """Batch Renormalization with the Lp scale: the corrected output (r and d
    clipped in two channels), the five moving averages, inference, and the
    gradients, where r and d carry none."""
    x = rng.normal(0.5, 2.0, size=(8, 4, 3)) * np.array([1.0, 0.3, 3.0])
    clipping, eps = {"rmax": 1.4, "rmin": 0.7, "dmax": 0.5}, 1e-3
    layer = tfnorms.LpBatchNormalization(
        p=p,
        top_k=top_k,
        renorm=True,
        renorm_clipping=clipping,
        momentum=0.6,
        renorm_momentum=0.3,
        dtype="float64",
    )
    layer.build(x.shape)
    assert [w.name for w in layer.weights][4:] == ["moving_stddev", "renorm_mean", "renorm_stddev"]
    w = random_weights(layer, rng)
    mean, variance = ref.lp_statistics(x, -1, p, top_k)
    stddev = np.sqrt(variance + eps)
    # Renorm statistics that put r and d beyond the clipping in two channels.
    w["renorm_stddev"] = stddev / RENORM_FACTORS["r"]
    w["renorm_mean"] = mean - RENORM_FACTORS["d"] * w["renorm_stddev"]
    initial = [w[v.name] for v in layer.weights]
    layer.set_weights(initial)
    r, d = ref.renorm_correction(
        mean, variance, w["renorm_mean"], w["renorm_stddev"], eps, clipping
    )
    np.testing.assert_allclose(r, [1.1, 1.4, 0.7])
    np.testing.assert_allclose(d, [0.1, -0.5, 0.3])
    loss_fn, np_loss_of_y = product_loss(rng.normal(size=x.shape), rng.normal(size=x.shape))

    def np_loss_of(inputs, gamma=w["gamma"], beta=w["beta"]):
        return np_loss_of_y(ref.renorm_batch_norm(inputs, -1, p, top_k, gamma, beta, eps, r, d))

    want = ref.renorm_batch_norm(x, -1, p, top_k, w["gamma"], w["beta"], eps, r, d)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), want, rtol=1e-7, atol=1e-9)
    expected = {
        "renorm_mean": 0.3 * w["renorm_mean"] + 0.7 * mean,
        "renorm_stddev": 0.3 * w["renorm_stddev"] + 0.7 * stddev,
        "moving_mean": 0.6 * w["moving_mean"] + 0.4 * mean,
        "moving_stddev": 0.6 * w["moving_stddev"] + 0.4 * stddev,
    }
    expected["moving_variance"] = np.maximum(expected["moving_stddev"] ** 2 - eps, 0.0)
    for variable in layer.non_trainable_variables:
        np.testing.assert_allclose(
            to_numpy(variable), expected[variable.name], err_msg=variable.name
        )
    want = ref.normalize(
        x, expected["moving_mean"], expected["moving_variance"], -1, w["gamma"], w["beta"], eps
    )
    np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)

    layer.set_weights(initial)  # the same r and d again
    _, dx = loss_and_input_gradient(layer, x, loss_fn)
    np.testing.assert_allclose(dx, ref.central_differences(np_loss_of, x), rtol=1e-5, atol=1e-7)
    layer.set_weights(initial)
    _, (d_gamma, d_beta) = loss_and_gradients(layer, x, loss_fn)
    numeric = ref.central_differences(lambda g: np_loss_of(x, gamma=g), w["gamma"])
    np.testing.assert_allclose(d_gamma, numeric, rtol=1e-5, atol=1e-8)
    numeric = ref.central_differences(lambda b: np_loss_of(x, beta=b), w["beta"])
    np.testing.assert_allclose(d_beta, numeric, rtol=1e-5, atol=1e-8)


def test_renorm_moving_scales_start_at_sqrt_of_the_variance_initializer():
    layer = tfnorms.LpBatchNormalization(
        renorm=True,
        moving_variance_initializer=keras.initializers.Constant(4.0),
        moving_mean_initializer=keras.initializers.Constant(-1.0),
    )
    layer.build((None, 3))
    values = {w.name: to_numpy(w) for w in layer.weights}
    np.testing.assert_array_equal(values["moving_stddev"], 2.0)
    np.testing.assert_array_equal(values["renorm_stddev"], 2.0)
    np.testing.assert_array_equal(values["renorm_mean"], -1.0)


def test_renorm_clipping_without_renorm_is_kept_and_unused(rng):
    """As Keras: the clipping of a layer without renorm changes nothing."""
    x = rng.normal(size=(16, 3)).astype("float32")
    clipped = tfnorms.LpBatchNormalization(p=1, renorm_clipping={"rmax": 1.0, "dmax": 0.0})
    plain = tfnorms.LpBatchNormalization(p=1)
    np.testing.assert_array_equal(
        to_numpy(clipped(x, training=True)), to_numpy(plain(x, training=True))
    )
    assert [w.name for w in clipped.weights] == [w.name for w in plain.weights]
    assert_config_roundtrip(clipped, x)


# ----------------------------------------------------- presets, trainable
def test_presets_are_lp_batch_norms(rng):
    x = rng.normal(size=(40, 3)).astype("float32")
    pairs = [
        (tfnorms.L1BatchNormalization(), tfnorms.LpBatchNormalization(p=1)),
        (tfnorms.LinfBatchNormalization(), tfnorms.LpBatchNormalization(p=np.inf)),
        (tfnorms.LinfBatchNormalization(top_k=10), tfnorms.LpBatchNormalization("inf", 10)),
        (tfnorms.L1BatchNormalization(renorm=True), tfnorms.LpBatchNormalization(1, renorm=True)),
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
    for layer in (
        tfnorms.LpBatchNormalization(p=1),
        tfnorms.LpBatchNormalization(p=3, renorm=True),
        tfnorms.MeanOnlyBatchNormalization(),
    ):
        layer(x)
        before = weights_of(layer)
        layer.trainable = False
        np.testing.assert_array_equal(to_numpy(layer(x, training=True)), to_numpy(layer(x)))
        for a, b in zip(before, weights_of(layer), strict=True):
            np.testing.assert_array_equal(a, b)


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


def test_mean_only_variables():
    """`beta` (when `center`), then `moving_mean`: no scale, no variance."""
    layer = tfnorms.MeanOnlyBatchNormalization()
    layer.build((None, 3))
    assert [w.name for w in layer.weights] == ["beta", "moving_mean"]
    plain = tfnorms.MeanOnlyBatchNormalization(center=False)
    plain.build((None, 3))
    assert [w.name for w in plain.weights] == ["moving_mean"]


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"momentum": 1.0}, r"`momentum` must be a number in \[0, 1\); received 1.0"),
    ({"momentum": -0.1}, r"`momentum` must be a number in \[0, 1\); received -0.1"),
    ({"momentum": float("nan")}, r"`momentum` must be a number in \[0, 1\); received nan"),
    ({"synchronized": 1}, r"`synchronized` must be True or False.*1"),
    ({"renorm": "yes"}, r"`renorm` must be True or False.*'yes'"),
    ({"renorm_momentum": 1.5}, r"`renorm_momentum` must be a number in \[0, 1\); received 1.5"),
    ({"renorm_clipping": [1.0]}, r"`renorm_clipping` must be None or a dict .*\[1.0\]"),
    ({"renorm_clipping": {"rmax": 2, "r": 1}}, r"keys among \"rmax\", \"rmin\", \"dmax\""),
    ({"renorm_clipping": {"rmax": "big"}}, r"`renorm_clipping\['rmax'\]` must be a number"),
    ({"renorm_clipping": {"dmax": float("nan")}}, r"`renorm_clipping\['dmax'\]` must be a number"),
    (
        {"renorm_clipping": {"rmin": 2, "rmax": 1}},
        r"needs rmin <= rmax; received rmin=2.0, rmax=1.0",
    ),
    ({"renorm_clipping": {"dmax": -1}}, r"needs dmax >= 0; received dmax=-1.0"),
    ({"moving_mean_initializer": "no_such"}, r"`moving_mean_initializer` must be a Keras"),
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
    with pytest.raises(ValueError, match="`moving_mean_initializer` must be a Keras"):
        tfnorms.MeanOnlyBatchNormalization(moving_mean_initializer="no_such")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": True},
        {"scale": False},
        {"gamma_initializer": "zeros"},
        {"gamma_regularizer": "l2"},
        {"gamma_constraint": "non_neg"},
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_mean_only_refuses_scale_arguments(kwargs):
    """The shared base takes them for the other batch norms: mean-only batch
    norm dropped them without a word."""
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=rf"has no scale.*received {name}={value!r}"):
        tfnorms.MeanOnlyBatchNormalization(**kwargs)


def test_mean_only_arguments_survive_config_and_saving(tmp_path, rng):
    """Its own config emits no refused argument, so it loads back, from the
    config and from a `.keras` file."""
    x = rng.normal(2.0, 3.0, size=(16, 4, 3)).astype("float32")
    layer = tfnorms.MeanOnlyBatchNormalization(
        axis=1,
        momentum=0.5,
        center=True,
        beta_initializer="ones",
        beta_regularizer="l2",
        beta_constraint="non_neg",
        moving_mean_initializer="ones",
        name="mean_only",
    )
    config = layer.get_config()
    assert not {"scale", "gamma_initializer", "gamma_regularizer", "gamma_constraint"} & set(config)
    assert_config_roundtrip(layer, x)
    model = keras.Sequential([keras.Input((4, 3)), layer])
    model(x, training=True)  # moves the moving mean away from its initial value
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6)


def test_accepted_spellings_of_numbers():
    assert tfnorms.LpBatchNormalization(momentum=0).momentum == 0.0
    layer = tfnorms.LpBatchNormalization(renorm=True, renorm_clipping={"rmax": 3, "dmax": None})
    assert layer.renorm_clipping == {"rmax": 3.0}
    assert math.isinf(
        tfnorms.LpBatchNormalization(renorm_clipping={"rmax": np.inf}).renorm_clipping["rmax"]
    )


@pytest.mark.parametrize("p", [1.0, 2.0, "inf"])
def test_a_1d_input_is_one_entry_per_channel(p):
    """`axis=0` on a 1-D input: each entry is its own channel, reduced over
    nothing, on every backend (Keras's PyTorch `moments` reads an empty
    tuple of axes as all of them): the output is beta, the moving mean x."""
    x = np.arange(10, dtype="float32")
    layer = tfnorms.LpBatchNormalization(p=p, axis=0, momentum=0.0)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    np.testing.assert_allclose(y, 0.0, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), 0.0, atol=1e-6)
