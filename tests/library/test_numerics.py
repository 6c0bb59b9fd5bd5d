"""Numeric edges per layer family, each with the result it must give.

- An empty batch gives an empty output (as Keras's layers) and leaves the
  moving statistics as they were (Keras's BatchNormalization makes them NaN).
- A batch of one, a constant channel, a zero kernel: finite outputs.
- A NaN input: NaN visibly in both moving statistics of its channel (and in
  that channel's outputs); an infinite input: NaN, not a signed infinity.
- |x| near 1e20 in float32, where sigma**2 overflows: p = 1, inf and top-k
  still normalize (they need no squares); the moving variance holds the
  largest float32 instead of infinity.
- float16 with low_precision=True and top-k: the k largest deviations are
  summed in float32, so |x| up to float16's range stays finite.
- An epsilon that is 0 in float32 is refused when the layer is made.

docs/batch_norm.md ("Numerics") states these guarantees for users.
"""

import keras
import numpy as np
import pytest
from layer_checks import to_numpy
from lp_reference import lp_batch_norm

import tfnorms

BATCH_NORMS = {
    "bn_p1": lambda **kw: tfnorms.LpBatchNormalization(p=1, **kw),
    "bn_p2": lambda **kw: tfnorms.LpBatchNormalization(p=2, **kw),
    "bn_p3": lambda **kw: tfnorms.LpBatchNormalization(p=3, **kw),
    "bn_inf": lambda **kw: tfnorms.LinfBatchNormalization(**kw),
    "bn_top3": lambda **kw: tfnorms.LinfBatchNormalization(top_k=3, **kw),
    "mean_only": lambda **kw: tfnorms.MeanOnlyBatchNormalization(**kw),
}
PER_EXAMPLE = {
    "ln_p1": lambda **kw: tfnorms.LpLayerNormalization(p=1, **kw),
    "ln_inf": lambda **kw: tfnorms.LpLayerNormalization(p="inf", **kw),
    "ln_top3": lambda **kw: tfnorms.LpLayerNormalization(p="inf", top_k=3, **kw),
    "gn_p1": lambda **kw: tfnorms.LpGroupNormalization(groups=2, p=1, **kw),
    "gn_top3": lambda **kw: tfnorms.LpGroupNormalization(groups=2, p="inf", top_k=3, **kw),
}
FAMILIES = {**BATCH_NORMS, **PER_EXAMPLE}
# The families whose scale needs no square (p = 1, inf, top-k).
SQUARE_FREE = [name for name in FAMILIES if name != "bn_p2" and name != "bn_p3"]


def moving(layer):
    return [to_numpy(v) for v in layer.non_trainable_variables]


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_empty_batch_gives_empty_output_and_keeps_moving_statistics(name, training, rng):
    layer = FAMILIES[name](momentum=0.5) if name in BATCH_NORMS else FAMILIES[name]()
    layer.build((None, 4))
    for variable in layer.non_trainable_variables:  # not the initial zeros and ones
        variable.assign(rng.uniform(0.5, 2.0, size=variable.shape))
    before = moving(layer)
    out = layer(np.zeros((0, 4), "float32"), training=training)
    assert tuple(out.shape) == (0, 4)
    for old, new in zip(before, moving(layer), strict=True):
        np.testing.assert_array_equal(new, old)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_batch_of_one_and_constant_channels_are_finite(name, rng):
    for x in (
        rng.normal(size=(1, 4)).astype("float32"),  # one row: one element per channel
        np.full((6, 4), 3.0, "float32"),  # every channel constant
    ):
        layer = FAMILIES[name]()
        out = to_numpy(layer(x, training=True))
        assert np.all(np.isfinite(out)), name
        assert all(np.all(np.isfinite(m)) for m in moving(layer))
        if name in BATCH_NORMS:  # each channel is its own mean: beta (zeros)
            np.testing.assert_allclose(out, 0.0, atol=1e-6)


@pytest.mark.parametrize(
    "wrap", [tfnorms.CenteredWeightNorm, tfnorms.WeightNormalization, tfnorms.BoundedWeightNorm]
)
def test_zero_kernel_gives_the_bias(wrap, rng):
    layer = wrap(keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer="ones"))
    x = rng.normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), 1.0)


@pytest.mark.parametrize("name", sorted(BATCH_NORMS))
def test_nan_input_shows_in_both_moving_statistics(name, rng):
    x = rng.normal(size=(8, 4)).astype("float32")
    x[2, 1] = np.nan
    layer = BATCH_NORMS[name]()
    out = to_numpy(layer(x, training=True))
    for statistic in moving(layer):
        assert np.isnan(statistic[1]), (name, statistic)
        assert np.all(np.isfinite(statistic[[0, 2, 3]])), (name, statistic)
    assert np.all(np.isfinite(out[:, [0, 2, 3]]))


@pytest.mark.parametrize("name", sorted(set(BATCH_NORMS) - {"mean_only"}))
def test_infinite_input_gives_nan_not_a_signed_infinity(name, rng):
    x = rng.normal(size=(8, 4)).astype("float32")
    x[2, 1] = np.inf
    out = to_numpy(BATCH_NORMS[name]()(x, training=True))
    assert np.all(np.isnan(out[:, 1])), out[:, 1]
    assert np.all(np.isfinite(out[:, [0, 2, 3]]))


@pytest.mark.parametrize("name", sorted(PER_EXAMPLE))
def test_nan_input_stays_in_its_example(name, rng):
    x = rng.normal(size=(5, 4)).astype("float32")
    x[2, 1] = np.nan
    out = to_numpy(PER_EXAMPLE[name]()(x))
    assert np.all(np.isnan(out[2, :2]))  # its statistics (its group, for groups=2)
    assert np.all(np.isfinite(np.delete(out, 2, axis=0)))


@pytest.mark.parametrize(
    "name,p,top_k", [("bn_p1", 1, None), ("bn_inf", np.inf, None), ("bn_top3", np.inf, 3)]
)
def test_huge_activations_still_normalize_without_squares(name, p, top_k, rng):
    """At |x| ~ 1e20, sigma**2 ~ 1e40 overflows float32; sigma does not."""
    x = (rng.normal(size=(16, 4)) * 1e20).astype("float32")
    layer = BATCH_NORMS[name](momentum=0.0)  # the moving statistics are this batch's
    out = to_numpy(layer(x, training=True))
    want, _ = lp_batch_norm(x.astype(np.float64), -1, p, top_k, np.ones(4), np.zeros(4), 1e-3)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    moving_mean, moving_variance = moving(layer)
    assert np.all(np.isfinite(moving_mean))
    np.testing.assert_array_equal(moving_variance, np.finfo(np.float32).max)


@pytest.mark.parametrize("name", ["ln_p1", "ln_inf", "ln_top3", "gn_p1", "gn_top3"])
def test_huge_activations_per_example(name, rng):
    x = (rng.normal(size=(3, 8)) * 1e20).astype("float32")
    out = to_numpy(PER_EXAMPLE[name]()(x))
    assert np.all(np.isfinite(out))
    assert 0.3 < float(np.std(out)) < 3.0  # normalized, not collapsed to beta


@pytest.mark.parametrize("name", ["bn_top3", "ln_top3", "gn_top3"])
def test_float16_top_k_sums_in_float32(name, rng):
    """mixed_float16, low_precision=True, |x| up to ~2e4: the sum of the k
    largest deviations passes 65504 but is taken in float32."""
    keras.config.set_dtype_policy("mixed_float16")
    layer = FAMILIES[name](low_precision=True)
    x = (rng.uniform(-1, 1, size=(32, 8)) * 2e4).astype("float16")
    out = to_numpy(layer(x, training=True)).astype("float32")
    assert np.all(np.isfinite(out)) and float(np.std(out)) > 0.1
    assert all(np.all(np.isfinite(m)) for m in moving(layer))


@pytest.mark.parametrize("name", ["bn_p1", "bn_inf", "ln_p1", "ln_inf"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("low_precision", [False, True])
def test_low_precision_square_free_scales_stay_finite(name, dtype, low_precision, rng):
    x = keras.ops.cast(rng.normal(size=(32, 8)) * 1000.0, dtype)
    layer = FAMILIES[name](low_precision=low_precision, dtype=dtype)
    out = to_numpy(keras.ops.cast(layer(x, training=True), "float32"))
    assert np.all(np.isfinite(out)) and float(np.std(out)) > 0.5


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"mean_only"}))
def test_epsilon_zero_in_float32_is_refused(name):
    with pytest.raises(ValueError, match=r"smallest normal float32.*received 1e-300"):
        FAMILIES[name](epsilon=1e-300)


def test_epsilon_zero_in_float32_is_refused_by_wrappers_and_constraints():
    for make in (
        lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), epsilon=1e-300),
        lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), epsilon=1e-300),
        lambda: tfnorms.CenteredUnitNorm(epsilon=1e-300),
    ):
        with pytest.raises(ValueError, match="smallest normal float32"):
            make()
