"""The contract every normalization family keeps (batch, mean-only, layer, RMS
and group; tests/support/norm_families.py describes each): p=2 is its Keras
counterpart, the outputs and gradients are the NumPy reference's, the Lp
scale estimates a Gaussian's standard deviation, degenerate inputs stay
finite, low precision, masks, bad arguments and the config round trip. The
duties of every public class on whole models (saving, export, mixed
precision, jit, MirroredStrategy) are tests/library/test_norm_models.py.
What only one family does is in its own file (test_batch_norm.py, ...)."""

import math

import keras
import lp_reference as ref
import numpy as np
import per_example_reference as pref
import pytest
from keras import ops
from layer_checks import (
    assert_config_roundtrip,
    call_gradients,
    compile_for_regression,
    finite_difference_gradient,
    loss_and_gradients,
    loss_and_input_gradient,
    to_numpy,
)
from norm_families import FAMILIES, WITH_P, p_id, random_weights


def cases(families, attribute):
    """pytest parameters (family, *case) over each family's list `attribute`."""
    return [
        pytest.param(f, *case[1:], id=f"{f.name}-{case[0]}")
        for f in families
        for case in getattr(f, attribute)
    ]


def by_family(families):
    return [pytest.param(f, id=f.name) for f in families]


# ------------------------------------------------- p=2 is Keras's counterpart
def assert_training_steps_match(mine, theirs, shape, masked, rng, steps=3):
    """Several training steps: outputs, gradients and every weight (the
    moving and renorm statistics) equal."""
    w = ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))
    loss_fn = lambda y: ops.sum(w * y * y)
    for _ in range(steps):
        x = (rng.normal(3.0, 2.0, size=shape) * rng.uniform(0.5, 2.0)).astype("float32")
        call = {"training": True}
        if masked:
            call["mask"] = rng.uniform(size=shape[:-1]) < 0.6
            # Every channel keeps a valid element: one with none keeps its
            # moving statistics here, where Keras moves them toward 0.
            call["mask"][0] = True
        np.testing.assert_allclose(
            to_numpy(mine(x, **call)), to_numpy(theirs(x, **call)), atol=1e-5
        )
        loss_a, dx_a, grads_a = call_gradients(mine, x, loss_fn, **call)
        loss_b, dx_b, grads_b = call_gradients(theirs, x, loss_fn, **call)
        np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
        np.testing.assert_allclose(dx_a, dx_b, rtol=1e-4, atol=1e-4)
        for a, b in zip(grads_a, grads_b, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        for a, b in zip(mine.weights, theirs.weights, strict=True):
            np.testing.assert_allclose(
                to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6, err_msg=a.name
            )


@pytest.mark.parametrize(("family", "shape", "kwargs", "masked"), cases(FAMILIES, "keras_cases"))
def test_p2_reproduces_keras(family, shape, kwargs, masked, rng):
    """Same weights (names, shapes, order), outputs and gradients; for the
    batch norms, over training steps, moving statistics included."""
    x = rng.normal(3.0, 2.0, size=shape).astype("float32")
    theirs, mine = family.keras_cls(**kwargs), family.make(p=2, **kwargs)
    theirs(x)
    mine(x)
    assert [w.name for w in mine.weights] == [w.name for w in theirs.weights]
    assert [w.shape for w in mine.weights] == [w.shape for w in theirs.weights]
    pref.copy_random_weights(theirs, mine, rng)
    if family.stateful:
        assert_training_steps_match(mine, theirs, shape, masked, rng)
        np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=1e-5)
    else:
        pref.assert_same_outputs_and_gradients(mine, theirs, x, rng)


@pytest.mark.parametrize(("family", "kwargs"), cases(FAMILIES, "fit_cases"))
def test_p2_model_trains_like_keras_and_weights_move_back(family, kwargs, rng):
    """Same initial weights, same data: fit ends with the same weights (so the
    gradients agree); the trained weights then load into Keras's layer."""
    theirs = compile_for_regression(family.fit_model(family.keras_cls(**kwargs)))
    mine = compile_for_regression(family.fit_model(family.make(p=2, **kwargs)))
    shape = (64, *theirs.input_shape[1:])
    x = rng.normal(size=shape).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    mine.set_weights(theirs.get_weights())
    for model in (theirs, mine):
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    h = to_numpy(mine.layers[0](x))
    back = family.keras_cls(**kwargs)
    back(h)
    back.set_weights(mine.layers[1].get_weights())  # tfnorms -> Keras
    np.testing.assert_allclose(to_numpy(back(h)), to_numpy(mine.layers[1](h)), atol=1e-5)


# ---------------------------------------- forward and gradient against NumPy
def numpy_cases():
    return [
        pytest.param(f, shape, kwargs, p, k, id=f"{f.name}-{name}-{p_id(p, k)}".rstrip("-"))
        for f in FAMILIES
        for name, shape, kwargs in f.numpy_cases
        for p, k in f.p_cases
    ]


@pytest.mark.parametrize(("family", "shape", "kwargs", "p", "top_k"), numpy_cases())
def test_forward_and_gradient_match_numpy(family, shape, kwargs, p, top_k, rng):
    x = rng.normal(0.5, 2.0, size=shape) * rng.uniform(0.3, 3.0, size=shape[-1])
    layer = family.make(p, top_k, dtype="float64", **kwargs)
    layer.build(x.shape)
    weights = random_weights(layer, rng)
    loss_fn, np_loss_of_y = pref.product_loss(rng.normal(size=shape), rng.normal(size=shape))

    def np_loss(inputs, **replaced):
        return np_loss_of_y(family.reference(inputs, kwargs, p, top_k, {**weights, **replaced}))

    want = family.reference(x, kwargs, p, top_k, weights)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), want, rtol=1e-7, atol=1e-9)
    if family.stateful:
        family.check_moving(layer, x, kwargs, p, top_k, weights)
    else:  # per example: training and inference compute the same thing
        np.testing.assert_array_equal(to_numpy(layer(x, training=True)), to_numpy(layer(x)))

    loss, dx = loss_and_input_gradient(layer, x, loss_fn)
    assert float(loss) == pytest.approx(np_loss(x), rel=1e-7)
    np.testing.assert_allclose(dx, ref.central_differences(np_loss, x), rtol=1e-5, atol=1e-7)
    _, grads = loss_and_gradients(layer, x, loss_fn)
    for variable, grad in zip(layer.trainable_variables, grads, strict=True):
        name = variable.name
        numeric = ref.central_differences(lambda v, n=name: np_loss(x, **{n: v}), weights[name])
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)
        # And the layer against its own finite differences.
        indices, own = finite_difference_gradient(layer, x, loss_fn, variable)
        np.testing.assert_allclose(grad.reshape(-1)[indices], own, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------ Gaussian consistency
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("family", by_family(WITH_P))
def test_gaussian_consistency_finite_p(family, p, rng):
    scales, means = np.array([0.5, 1.0, 4.0]), np.array([3.0, -1.0, 10.0])
    sigma, want = family.gaussian_sigma(p, None, scales, means, 100_000, rng)
    np.testing.assert_allclose(sigma, want, rtol=0.02)


@pytest.mark.parametrize("family", by_family(WITH_P))
def test_gaussian_consistency_p_inf_within_supplement_bounds(family, rng):
    sigma, _ = family.gaussian_sigma("inf", None, np.full(100, 2.5), np.ones(100), 5_000, rng)
    ratio = sigma.mean() / 2.5
    assert 0.740 <= ratio <= 1.543, ratio


@pytest.mark.parametrize("family", by_family(WITH_P))
def test_top_k_one_is_the_maximum_and_top_k_below_it(family, rng):
    # 50 elements per statistic: over the batch, or over the features.
    x = rng.normal(size=(50, 4) if family.stateful else (4, 50)).astype("float32")
    extra = {"center": False} if family.accepts("center") else {}
    out = {k: to_numpy(family.make("inf", k, **extra)(x, training=True)) for k in (None, 1, 10)}
    np.testing.assert_allclose(out[1], out[None], rtol=1e-6)
    # A smaller scale (mean of the 10 largest < maximum): larger outputs.
    assert np.all(np.abs(out[10]) >= np.abs(out[None])) and np.any(
        np.abs(out[10]) > np.abs(out[None])
    )


# ------------------------------------------------------- degenerate inputs
def degenerate_cases():
    return [
        pytest.param(f, x, kwargs, id=f"{f.name}-{name}")
        for f in FAMILIES
        for name, (x, kwargs) in f.degenerate_inputs().items()
    ]


@pytest.mark.parametrize(("family", "x", "kwargs"), degenerate_cases())
def test_degenerate_inputs_stay_finite(family, x, kwargs, rng):
    """One element per statistic, constant statistics, zeros: finite outputs,
    gradients and (batch norms) moving statistics, for every p."""
    x = x.astype("float32")
    w = ops.convert_to_tensor(rng.normal(size=x.shape).astype("float32"))
    for p, top_k in [*family.p_cases, (2.0, None)]:
        layer = family.make(p, top_k, **kwargs)
        what = f"{family.name} p={p} top_k={top_k}"
        assert np.all(np.isfinite(to_numpy(layer(x, training=True)))), what
        assert all(np.all(np.isfinite(to_numpy(v))) for v in layer.weights), what
        _, dx, grads = call_gradients(layer, x, lambda y: ops.sum(w * y), training=True)
        assert np.all(np.isfinite(dx)), what
        assert all(np.all(np.isfinite(g)) for g in grads), what
        assert np.all(np.isfinite(to_numpy(layer(x)))), what


# --------------------------------------------------------------- precision
@pytest.mark.parametrize("family", by_family(WITH_P))
def test_low_precision_l1_and_linf_finite_where_l2_overflows(family, rng):
    """float16 inputs of magnitude ~1000: squares pass 65504, absolute values
    do not (the paper's low-precision argument)."""
    shape, kwargs = family.low_precision_case
    x16 = rng.normal(0.0, 1000.0, size=shape).astype("float16")

    def run(p, top_k=None, low_precision=True):
        layer = family.make(p, top_k, low_precision=low_precision, dtype="mixed_float16", **kwargs)
        y = layer(x16, training=True)
        assert keras.backend.standardize_dtype(y.dtype) == "float16"
        return to_numpy(y).astype("float64"), layer

    def reference(p, top_k=None):
        layer = family.make(p, top_k, dtype="float64", **kwargs)
        return to_numpy(layer(x16.astype("float64"), training=True)), layer

    for p, top_k in [(1, None), ("inf", None), ("inf", 10)]:
        (y, layer), (want, exact) = run(p, top_k), reference(p, top_k)
        assert np.all(np.isfinite(y)), (p, top_k)
        np.testing.assert_allclose(y, want, atol=2e-2)
        if family.stateful:
            np.testing.assert_allclose(
                to_numpy(layer.moving_variance), to_numpy(exact.moving_variance), rtol=1e-2
            )
    # p=2 in float16: the squares overflow and the output collapses.
    (y, layer), (want, exact) = run(2), reference(2)
    assert not np.allclose(y, want, atol=0.5)
    if family.stateful:
        assert not np.all(np.isfinite(to_numpy(layer.moving_variance)))
    # The default (float32 statistics, as Keras) is right for p=2 too.
    y, layer = run(2, low_precision=False)
    np.testing.assert_allclose(y, want, atol=2e-2)
    if family.stateful:
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance), to_numpy(exact.moving_variance), rtol=1e-3
        )


@pytest.mark.parametrize("family", by_family(WITH_P))
def test_statistics_in_float32_for_float16_inputs_by_default(family, rng):
    shape, kwargs = family.low_precision_case
    x = rng.normal(2.0, 3.0, size=shape).astype("float16")
    half = family.make(1, dtype="mixed_float16", **kwargs)
    full = family.make(1, **kwargs)
    y_half = to_numpy(half(x, training=True)).astype("float32")
    y_full = to_numpy(full(x.astype("float32"), training=True))
    np.testing.assert_allclose(y_half, y_full, atol=5e-3)
    for a, b in zip(half.non_trainable_weights, full.non_trainable_weights, strict=True):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b))


# ------------------------------------------------------------------- masks
def masked_cases():
    return [
        pytest.param(f, shape, kwargs, p, k, id=f"{f.name}-{name}-{p_id(p, k)}".rstrip("-"))
        for f in FAMILIES
        for name, shape, kwargs in f.masked_cases
        for p, k in ([(None, None)] if not f.has_p else [(1.0, None), (2.0, None), (math.inf, 3)])
    ]


@pytest.mark.parametrize(("family", "shape", "kwargs", "p", "top_k"), masked_cases())
def test_masked_statistics_match_numpy(family, shape, kwargs, p, top_k, rng):
    """Keras's mask (the input's shape without its last axis) keeps the masked
    positions out of the statistics; every position is normalized."""
    x = rng.normal(1.0, 2.0, size=shape)
    mask = rng.uniform(size=shape[:-1]) < 0.6
    mask[:, 0] = True
    layer = family.make(p, top_k, dtype="float64", **kwargs)
    layer.build(x.shape)
    weights = random_weights(layer, rng)
    got = to_numpy(layer(x, training=True, mask=mask))
    want = family.reference(x, kwargs, p, top_k, weights, mask=mask)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    if family.stateful:
        family.check_moving(layer, x, kwargs, p, top_k, weights, mask=mask)
    # Padding would change them: the unmasked statistics differ.
    assert not np.allclose(to_numpy(layer(x, training=True)), got, atol=1e-3)
    nothing = np.zeros(shape[:-1], bool)
    assert np.all(np.isfinite(to_numpy(layer(x, training=True, mask=nothing))))


@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_mask_passes_through_a_model(family, rng):
    """From an Embedding to the layer, and on to the next layer: the pooling
    averages the valid steps only."""
    tokens = np.array([[3, 5, 0, 0, 0], [2, 4, 6, 0, 0], [7, 1, 4, 9, 8]])
    inputs = keras.Input((5,), dtype="int32")
    embedding = keras.layers.Embedding(10, 6, mask_zero=True)
    layer = family.make(1) if family.name != "group" else family.make(1, groups=3)
    h = layer(embedding(inputs))
    pooled = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(h))
    got = pooled.predict(tokens, verbose=0)
    mask = tokens != 0
    normalized = to_numpy(layer(embedding(tokens), mask=ops.convert_to_tensor(mask)))
    for i in range(len(tokens)):
        np.testing.assert_allclose(got[i], normalized[i][mask[i]].mean(axis=0), atol=1e-5)
    np.testing.assert_array_equal(
        to_numpy(layer.compute_mask(embedding(tokens), ops.convert_to_tensor(mask))), mask
    )


@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_mask_of_wrong_rank_is_refused(family, rng):
    x = rng.normal(size=(4, 5, 6)).astype("float32")
    with pytest.raises(ValueError, match="one dimension less"):
        family.make(1)(x, training=True, mask=np.ones((4, 5, 6), bool))


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"p": 0.5}, r"`p` must be .*>= 1.*received 0.5"),
    ({"p": -1}, r"`p` must be .*received -1"),
    ({"p": float("nan")}, r"`p` must be .*received nan"),
    ({"p": "two"}, r"`p` must be .*'two'"),
    ({"p": True}, r"`p` must be .*True"),
    ({"p": None}, r"`p` must be .*None"),
    ({"p": "inf", "top_k": 0}, r"`top_k` must be an integer >= 1.*received 0"),
    ({"p": "inf", "top_k": -1}, r"`top_k` must be an integer >= 1.*received -1"),
    ({"p": "inf", "top_k": 2.5}, r"`top_k` must be an integer >= 1.*received 2.5"),
    ({"p": "inf", "top_k": 10.0}, r"`top_k` must be an integer >= 1.*received 10.0"),
    ({"p": "inf", "top_k": "3"}, r"`top_k` must be an integer >= 1.*'3'"),
    ({"p": 2, "top_k": 10}, r"`top_k` applies to p=inf only.*top_k=10 with p=2.0"),
    ({"p": 1, "top_k": 4}, r"`top_k` applies to p=inf only.*top_k=4 with p=1.0"),
    ({"epsilon": 0.0}, r"`epsilon` must be a finite number > 0.*received 0.0"),
    ({"epsilon": -1e-3}, r"`epsilon` must be a finite number > 0.*received -0.001"),
    ({"epsilon": float("inf")}, r"`epsilon` must be a finite number > 0.*received inf"),
    ({"center": "yes"}, r"`center` must be True or False.*'yes'"),
    ({"scale": None}, r"`scale` must be True or False.*None"),
    ({"low_precision": None}, r"`low_precision` must be True or False.*None"),
    ({"low_precision": "no"}, r"`low_precision` must be True or False.*'no'"),
    ({"gamma_initializer": "no_such"}, r"`gamma_initializer` must be a Keras initializer"),
    ({"beta_regularizer": "no_such"}, r"`beta_regularizer` must be a Keras regularizer"),
    ({"beta_constraint": "no_such"}, r"`beta_constraint` must be a Keras constraint"),
    ({"axis": "last"}, r"`axis` must be an integer.*'last'"),
    ({"axis": 1.0}, r"`axis` must be an integer.*1.0"),
]


def bad_argument_cases():
    return [
        pytest.param(f, kwargs, message, id=f"{f.name}-{kwargs}")
        for f in FAMILIES
        for kwargs, message in BAD_ARGUMENTS
        if all(f.accepts(name) for name in kwargs)
    ]


@pytest.mark.parametrize(("family", "kwargs", "message"), bad_argument_cases())
def test_bad_arguments_are_refused(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        family.cls(**kwargs)


@pytest.mark.parametrize("family", by_family(WITH_P))
def test_accepted_spellings_of_p_and_top_k(family):
    for p in (float("inf"), np.inf, "inf", "Infinity"):
        assert math.isinf(family.make(p).p)
    assert family.make(np.float32(1.5)).p == 1.5
    assert family.make("inf", np.int64(10)).top_k == 10
    assert family.make("inf", np.int32(4)).top_k == 4


@pytest.mark.parametrize("axis", [2, -3, 5])
@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_axis_out_of_range_is_refused_at_build(family, axis):
    with pytest.raises(ValueError, match=rf"`axis`={axis} is out of range .* -2 to 1"):
        family.make(axis=axis)(np.ones((4, 4), "float32"))


@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_unknown_size_on_the_axis_is_refused(family):
    with pytest.raises(ValueError, match=r"needs a known size on its axis -1"):
        family.make()(keras.Input((5, None)))


# ------------------------------------------------------------- config
@pytest.mark.parametrize("family", by_family(FAMILIES))
def test_config_roundtrip(family, rng):
    """`from_config(get_config())` rebuilds an equal layer (same config, same
    outputs with the weights copied), and the config is JSON."""
    x = rng.normal(size=family.config_shape).astype("float32")
    for layer in family.configured_layers():
        layer(x, training=True)
        clone = assert_config_roundtrip(layer, x)
        assert type(clone) is type(layer)
    if family.has_p:
        assert family.make(np.inf).get_config()["p"] == "inf"
