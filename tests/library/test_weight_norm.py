"""CenteredWeightNorm, WeightNormalization and BoundedWeightNorm on Dense and
Conv1D/2D/3D: NumPy references, the papers' propositions, and the duties of
docs/design.md, "Duties of every public class"."""

import keras
import numpy as np
import pytest
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
    to_numpy,
)

import tfnorms

# ------------------------------------------------------------ NumPy reference
# Written from docs/design.md ("Centered weight normalization", "Bounded weight
# norm") alone; shares no code with tfnorms.


def np_reduce_axes(kernel_shape):
    # Dense and Conv*: the output unit is the last axis.
    return tuple(range(len(kernel_shape) - 1))


def np_cwn(v, g, center, eps=1e-12):
    axes = np_reduce_axes(v.shape)
    if center:
        v = v - v.mean(axis=axes, keepdims=True)
    w = v / np.sqrt((v**2).sum(axis=axes, keepdims=True) + eps)
    return w if g is None else w * g


def np_bwn(v, rho, eps=1e-12):
    axes = np_reduce_axes(v.shape)
    return rho * v / np.sqrt((v**2).sum(axis=axes, keepdims=True) + eps)


def np_bwn_gain(v, g, rho_f, eps=1e-12):
    axes = np_reduce_axes(v.shape)
    return (
        (rho_f / np.sqrt((g**2).sum() + eps))
        * g
        * v
        / np.sqrt((v**2).sum(axis=axes, keepdims=True) + eps)
    )


def np_unit_norms(v):
    return np.sqrt((v**2).sum(axis=np_reduce_axes(v.shape)))


# --------------------------------------------------------------- the cases
INNER = {
    "dense": (lambda: keras.layers.Dense(6), (4, 5)),
    "conv1d": (lambda: keras.layers.Conv1D(6, 3), (2, 9, 4)),
    "conv2d": (lambda: keras.layers.Conv2D(6, 3, padding="same"), (2, 7, 7, 3)),
    "conv3d": (lambda: keras.layers.Conv3D(4, 2), (2, 5, 5, 5, 2)),
}

WRAPPERS = {
    "cwn": lambda layer: tfnorms.CenteredWeightNorm(layer, scale_initializer="random_uniform"),
    "cwn_noscale": lambda layer: tfnorms.CenteredWeightNorm(layer, scale=False),
    "wn": lambda layer: tfnorms.WeightNormalization(layer),
    "bwn": lambda layer: tfnorms.BoundedWeightNorm(layer),
    "bwn_rho": lambda layer: tfnorms.BoundedWeightNorm(layer, rho=1.7),
    "bwn_gain": lambda layer: tfnorms.BoundedWeightNorm(layer, per_unit_gain=True),
}


def reference_kernel(wrapper, v):
    """W from NumPy, reading the wrapper's own scalar/vector parameters."""
    if isinstance(wrapper, tfnorms.BoundedWeightNorm):
        rho = float(to_numpy(wrapper.rho_variables()["kernel"].value))
        if wrapper.per_unit_gain:
            g = to_numpy(wrapper.scale_variables()["kernel"].value)
            return np_bwn_gain(v, g, rho)
        return np_bwn(v, rho)
    scales = wrapper.scale_variables()
    g = to_numpy(scales["kernel"].value) if scales else None
    return np_cwn(v, g, wrapper.center)


def make_case(inner_name, wrapper_name, rng, dtype=None):
    make_inner, shape = INNER[inner_name]
    layer = make_inner()
    if dtype:
        layer = type(layer).from_config({**layer.get_config(), "dtype": dtype})
    wrapper = WRAPPERS[wrapper_name](layer)
    x = rng.normal(size=shape).astype(dtype or "float32")
    wrapper(x)
    # Random biases make the forward check cover them.
    wrapper.layer.bias.assign(rng.normal(size=wrapper.layer.bias.shape))
    return wrapper, x


@pytest.mark.parametrize("wrapper_name", sorted(WRAPPERS))
@pytest.mark.parametrize("inner_name", sorted(INNER))
def test_forward_matches_numpy_reference(inner_name, wrapper_name, rng):
    wrapper, x = make_case(inner_name, wrapper_name, rng)
    v = to_numpy(wrapper.layer.kernel)
    w = reference_kernel(wrapper, v)
    np.testing.assert_allclose(to_numpy(wrapper.effective_kernels()["kernel"]), w, atol=1e-6)
    # The output is the inner layer's operator applied with W: check it with
    # a plain copy of the layer whose kernel is the NumPy W.
    plain = type(wrapper.layer).from_config(wrapper.layer.get_config())
    plain(x)
    plain.set_weights([w, to_numpy(wrapper.layer.bias)])
    np.testing.assert_allclose(to_numpy(wrapper(x)), to_numpy(plain(x)), atol=1e-5)
    if inner_name == "dense":  # and fully in NumPy for Dense
        np.testing.assert_allclose(
            to_numpy(wrapper(x)), x @ w + to_numpy(wrapper.layer.bias), atol=1e-5
        )


@pytest.mark.parametrize("inner_name", sorted(INNER))
def test_invariants_per_unit(inner_name, rng):
    cwn, _ = make_case(inner_name, "cwn", rng)
    w = to_numpy(cwn.effective_kernels()["kernel"])
    g = to_numpy(cwn.scale_variables()["kernel"].value)
    axes = np_reduce_axes(w.shape)
    np.testing.assert_allclose(w.sum(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(np_unit_norms(w), np.abs(g), rtol=1e-5)

    wn, _ = make_case(inner_name, "wn", rng)
    w = to_numpy(wn.effective_kernels()["kernel"])
    # tfa-compatible start: g = ||V||, so W == V until training moves them.
    np.testing.assert_allclose(w, to_numpy(wn.layer.kernel), rtol=1e-5, atol=1e-7)

    bwn, _ = make_case(inner_name, "bwn", rng)
    v = to_numpy(bwn.layer.kernel)
    rho = float(to_numpy(bwn.rho_variables()["kernel"].value))
    np.testing.assert_allclose(rho, np_unit_norms(v).mean(), rtol=1e-6)
    np.testing.assert_allclose(
        np_unit_norms(to_numpy(bwn.effective_kernels()["kernel"])), rho, rtol=1e-5
    )


@pytest.mark.parametrize("inner_name", ["dense", "conv2d"])
def test_per_unit_gain_keeps_total_norm_fixed_while_training(inner_name, rng):
    wrapper, x = make_case(inner_name, "bwn_gain", rng)
    v0 = to_numpy(wrapper.layer.kernel)
    rho_f = float(to_numpy(wrapper.rho_variables()["kernel"].value))
    np.testing.assert_allclose(rho_f, np.linalg.norm(np_unit_norms(v0)), rtol=1e-6)
    model = keras.Sequential([keras.Input(x.shape[1:]), wrapper])
    y = rng.normal(size=to_numpy(model(x)).shape).astype("float32")
    compile_for_regression(model, learning_rate=0.5)
    g0 = to_numpy(wrapper.scale_variables()["kernel"].value).copy()
    model.fit(x, y, epochs=5, batch_size=len(x), verbose=0)
    g1 = to_numpy(wrapper.scale_variables()["kernel"].value)
    assert not np.allclose(g0, g1), "the per-unit gains should have been trained"
    w = to_numpy(wrapper.effective_kernels()["kernel"])
    np.testing.assert_allclose(np.linalg.norm(w), rho_f, rtol=1e-5)
    np.testing.assert_allclose(
        to_numpy(wrapper.rho_variables()["kernel"].value), rho_f, rtol=0
    )  # rho is not trained


# ---------------------------------------------------------------- gradients
def _projection_loss(seed, shape):
    weights = np.random.default_rng(seed).normal(size=shape)
    return lambda out: keras.ops.sum(keras.ops.multiply(out, weights)), weights


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn", "bwn_gain"])
@pytest.mark.parametrize("inner_name", sorted(INNER))
def test_proposition_2_gradient_properties(inner_name, wrapper_name, rng):
    """dL/dv is orthogonal to w per unit (all wrappers) and zero-mean (CWN)."""
    wrapper, x = make_case(inner_name, wrapper_name, rng, dtype="float64")
    loss_fn, _ = _projection_loss(1, to_numpy(wrapper(x)).shape)
    _, (grad_v,) = loss_and_gradients(wrapper, x, loss_fn, [wrapper.layer.kernel])
    w = to_numpy(wrapper.effective_kernels()["kernel"])
    axes = np_reduce_axes(w.shape)
    scale = np.abs(grad_v).max() * np.abs(w).max()
    np.testing.assert_allclose((grad_v * w).sum(axis=axes) / scale, 0, atol=1e-10)
    if wrapper_name == "cwn":
        np.testing.assert_allclose(grad_v.sum(axis=axes) / np.abs(grad_v).max(), 0, atol=1e-10)
    else:  # without centering the gradient mean is not constrained
        assert np.abs(grad_v.sum(axis=axes)).max() > 1e-6


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn", "bwn_gain"])
@pytest.mark.parametrize("inner_name", sorted(INNER))
def test_gradients_match_finite_differences(inner_name, wrapper_name, rng):
    wrapper, x = make_case(inner_name, wrapper_name, rng, dtype="float64")
    loss_fn, _ = _projection_loss(2, to_numpy(wrapper(x)).shape)
    variables = list(wrapper.trainable_variables)
    _, grads = loss_and_gradients(wrapper, x, loss_fn, variables)
    for variable, grad in zip(variables, grads, strict=True):
        indices, numeric = finite_difference_gradient(wrapper, x, loss_fn, variable)
        np.testing.assert_allclose(
            grad.reshape(-1)[indices], numeric, rtol=1e-5, atol=1e-7, err_msg=variable.path
        )


@pytest.mark.parametrize("center", [True, False])
def test_gradient_matches_papers_closed_form(center, rng):
    """Huang et al. eq. (3): dL/dv = g/||v_hat|| [dL/dw_hat - (dL/dw_hat . w_hat) w_hat
    - mean(dL/dw_hat) 1], checked in NumPy on a Dense layer (dL/dW = x^T R)."""
    wrapper = tfnorms.CenteredWeightNorm(
        keras.layers.Dense(5, dtype="float64"),
        center=center,
        scale_initializer="random_uniform",
        dtype="float64",
    )
    x = rng.normal(size=(7, 4))
    wrapper(x)
    loss_fn, r = _projection_loss(3, (7, 5))
    _, (grad_v,) = loss_and_gradients(wrapper, x, loss_fn, [wrapper.layer.kernel])
    v = to_numpy(wrapper.layer.kernel)
    g = to_numpy(wrapper.scale_variables()["kernel"].value)
    grad_w = x.T @ r  # dL/dW for L = sum((xW + b) * R)
    v_hat = v - v.mean(axis=0) if center else v
    norm = np.sqrt((v_hat**2).sum(axis=0))
    w_hat = v_hat / norm
    grad_w_hat = grad_w * g
    expected = grad_w_hat - (grad_w_hat * w_hat).sum(axis=0) * w_hat
    if center:
        expected = expected - grad_w_hat.mean(axis=0)
    expected = expected / norm
    np.testing.assert_allclose(grad_v, expected, rtol=1e-8, atol=1e-10)


def test_float32_gradient_of_a_kernel_far_from_centered(rng):
    """The CWN gradient forms <dL/dW, v - mean> from v shifted by each unit's
    first weight (no centered copy of the kernel): with a unit's mean ten
    times its spread, float32 still agrees with the float64 closed form to
    1e-4 per unit; for a constant unit (W = 0) dL/dg is 0 and dL/dv is
    g / sqrt(epsilon) times dL/dW minus its mean, as for a zero unit."""
    wrapper = tfnorms.CenteredWeightNorm(keras.layers.Dense(5), scale_initializer="random_uniform")
    # More rows than the kernel's: the kernel-forming path under XLA too
    # (tfnorms.layers.kernel_free.pays).
    x = rng.normal(size=(300, 64)).astype("float32")
    wrapper(x)
    v = rng.normal(size=(64, 5)) + 10.0 * rng.choice([-1.0, 1.0], size=5)
    v[:, 0] = 3.0  # a constant unit: its mean is exact, so v - mean is 0
    wrapper.layer.kernel.assign(v.astype("float32"))
    loss_fn, r = _projection_loss(3, (300, 5))
    scale_variable = wrapper.scale_variables()["kernel"]
    _, (grad_v, grad_g) = loss_and_gradients(
        wrapper, x, loss_fn, [wrapper.layer.kernel, scale_variable]
    )
    v = to_numpy(wrapper.layer.kernel).astype("float64")
    g = to_numpy(scale_variable.value).astype("float64")
    grad_w = x.astype("float64").T @ r
    v_hat = v - v.mean(axis=0)
    norm = np.sqrt((v_hat**2).sum(axis=0) + wrapper.epsilon)
    w_hat = v_hat / norm
    projection = (grad_w * w_hat).sum(axis=0)
    expected = g * (grad_w - projection * w_hat - grad_w.mean(axis=0)) / norm
    for unit in range(5):
        scale = np.abs(expected[:, unit]).max()
        np.testing.assert_allclose(
            grad_v[:, unit], expected[:, unit], rtol=1e-4, atol=1e-4 * scale, err_msg=unit
        )
    np.testing.assert_allclose(grad_g, projection, rtol=1e-4, atol=1e-5)


def compiled_kernel_and_gradients(v, g, upstream, mode):
    """W, dL/dv and dL/dg (None without g) of `weight_norm_kernel` for
    L = sum(W * upstream), centered, units last, as NumPy arrays: `mode`
    "compiled" traces it for XLA (`jax.jit`, TensorFlow's `jit_compile`;
    eager PyTorch's own Function), "graph" into TensorFlow's unfused graph."""
    from tfnorms._math import kernel

    reduce_axes = tuple(range(v.ndim - 1))
    broadcast = (1,) * len(reduce_axes) + v.shape[-1:]

    def loss(v, *g):
        w = kernel.weight_norm_kernel(v, g[0] if g else None, reduce_axes, broadcast, True, 1e-12)
        return keras.ops.sum(w * keras.ops.convert_to_tensor(upstream)), w

    inputs = [v] + ([] if g is None else [g])
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(inputs))), has_aux=True))
        (_, w), grads = step(*inputs)
    elif backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=mode == "compiled")
        def step(*inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                _, w = loss(*inputs)
                value = tf.reduce_sum(w * upstream)
            return w, tape.gradient(value, inputs)

        w, grads = step(*(tf.constant(a) for a in inputs))
    else:
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
        value, w = loss(*tensors)
        value.backward()
        grads = [t.grad for t in tensors]
    grads = [to_numpy(grad) for grad in grads]
    return to_numpy(w), grads[0], (grads[1] if g is not None else None)


@pytest.mark.parametrize("mode", ["compiled", "graph"])
@pytest.mark.parametrize("scale", ["per unit", "scalar", None])
@pytest.mark.parametrize("shape", [(60, 5), (3, 3, 20, 6)])
def test_degenerate_units_are_exact_when_compiled(shape, scale, mode, rng):
    """Compiled (XLA fuses the kernel's ops and contracts a product and a
    sum into one rounding) and in TensorFlow's graph, a zero unit, a unit of
    equal weights and one whose mean is ten times its spread get the float64
    closed form's W and gradients to 1e-4 of each unit's largest entry. A
    fan-in of 60 or 180 makes 1 / fan-in inexact: `sum * (1 / n)` (TensorFlow's
    graph optimizer also rewrites `/ n` so) left noise in the constant unit's
    `v - mean`, which its 1 / sqrt(epsilon) amplified (W 0.16 for 0, dL/dv
    6% off, dL/dg 16.8 for 15.2)."""
    if mode == "graph" and keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's graph only")
    from kernel_reference import (
        assert_close_per_unit,
        cwn_and_gradients,
        kernel_with_degenerate_units,
    )

    v = kernel_with_degenerate_units(shape, rng)
    upstream = rng.normal(size=shape).astype("float32")
    g = None
    if scale == "per unit":
        g = rng.uniform(0.5, 2.0, size=shape[-1:]).astype("float32")
    elif scale == "scalar":
        g = np.float32(1.7)
    got = compiled_kernel_and_gradients(v, g, upstream, mode)
    expected = list(cwn_and_gradients(v, g, upstream, 1e-12))
    if scale == "scalar":
        expected[2] = expected[2].sum()
    for name, value, want in zip(("W", "dL/dv", "dL/dg"), got, expected, strict=True):
        if value is not None:
            assert_close_per_unit(value, want, 1e-4, name)


def test_proposition_1_on_gaussian_inputs(rng):
    """For h ~ N(mu*1, s^2 I), z = w^T h has mean 0 and variance s^2 g_i^2."""
    mu, s, n, d = 3.0, 0.7, 40000, 32
    wrapper = tfnorms.CenteredWeightNorm(
        keras.layers.Dense(6, use_bias=False), scale_initializer="random_uniform"
    )
    h = (mu + s * rng.normal(size=(n, d))).astype("float32")
    z = to_numpy(wrapper(h)).astype("float64")
    g = to_numpy(wrapper.scale_variables()["kernel"].value)
    # Standard errors: s*g/sqrt(n) for the mean, ~sqrt(2/n) relative for the variance.
    np.testing.assert_array_less(np.abs(z.mean(axis=0)), 5 * s * np.abs(g) / np.sqrt(n))
    np.testing.assert_allclose(z.var(axis=0), s**2 * g**2, rtol=5 * np.sqrt(2 / n))
    # Without centering the mean is not zero: the proposition needs centering.
    wn = tfnorms.WeightNormalization(keras.layers.Dense(6, use_bias=False))
    assert np.abs(to_numpy(wn(h)).mean(axis=0)).max() > 0.1


def test_zero_kernel_gives_finite_outputs_and_gradients(rng):
    x = rng.normal(size=(4, 3)).astype("float32")
    for wrapper in (
        tfnorms.CenteredWeightNorm(keras.layers.Dense(2, kernel_initializer="zeros")),
        tfnorms.WeightNormalization(keras.layers.Dense(2, kernel_initializer="zeros")),
        tfnorms.BoundedWeightNorm(keras.layers.Dense(2, kernel_initializer="zeros")),
        tfnorms.BoundedWeightNorm(
            keras.layers.Dense(2, kernel_initializer="zeros"), per_unit_gain=True
        ),
        tfnorms.BoundedWeightNorm(keras.layers.Dense(2, kernel_initializer="zeros"), rho=1.0),
    ):
        wrapper(x)
        loss, grads = loss_and_gradients(wrapper, x, lambda out: keras.ops.sum(out**2))
        assert np.isfinite(loss)
        assert all(np.all(np.isfinite(g)) for g in grads), type(wrapper).__name__


@pytest.mark.parametrize("how", ["called directly", "in a float32 model"])
@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn", "bwn_gain"])
def test_mixed_float16_layer_computes_the_kernel_in_float32(wrapper_name, how, rng):
    """A wrapper whose inner layer has a `mixed_float16` policy, called by
    itself or inside a float32 model (Keras's `__call__` then enters a
    float16 autocast scope, which `autocast=False` does not undo), computes
    W from its float32 variables: a unit of zeros and units of 1e-4 weights
    (a squared norm below float16's smallest number) give the float64
    reference's outputs to float16's precision, not NaN."""
    v = rng.normal(size=(40, 6)) * 1e-4
    v[:, 0] = 0.0
    dense = keras.layers.Dense(6, dtype="mixed_float16")
    wrapper = WRAPPERS[wrapper_name](dense)
    x = rng.normal(size=(8, 40)).astype("float32")
    call = keras.Sequential([keras.Input((40,)), wrapper]) if how != "called directly" else wrapper
    call(x)
    dense.kernel.assign(v)
    wrapper.initialize_from_kernels()
    w = reference_kernel(wrapper, v)
    outputs = to_numpy(call(x)).astype("float64")
    expected = x @ w + to_numpy(dense.bias)
    assert np.isfinite(outputs).all()
    np.testing.assert_allclose(outputs, expected, atol=5e-3 * np.abs(expected).max())


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn"])
def test_quantizing_the_wrapped_model_is_refused_and_strip_first_works(wrapper_name, rng):
    """`model.quantize("int8")` quantizes the inner Dense (Keras reaches
    leaf layers only) and replaces its kernel: calling the wrapper then
    raises an error naming `tfnorms.strip`, where it used to compute with
    the raw, unnormalized kernel. Stripping first and quantizing the plain
    model keeps the normalized function to int8's precision."""

    def build():
        keras.utils.set_random_seed(3)
        layers = [WRAPPERS[wrapper_name](keras.layers.Dense(n)) for n in (16, 4)]
        return keras.Sequential([keras.Input((12,)), *layers])

    x = rng.normal(size=(8, 12)).astype("float32")
    model = build()
    expected = to_numpy(model(x))
    plain = tfnorms.strip(model)
    plain.quantize("int8")
    np.testing.assert_allclose(to_numpy(plain(x)), expected, atol=0.05 * np.abs(expected).max())
    model.quantize("int8")
    with pytest.raises(RuntimeError, match=r"quantized \('int8'\).*tfnorms\.strip"):
        model(x)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: tfnorms.CenteredWeightNorm("dense"), TypeError, "wraps a Keras layer"),
        (lambda: tfnorms.BoundedWeightNorm(np.ones(3)), TypeError, "ndarray"),
        (lambda: tfnorms.CenteredWeightNorm(keras.layers.Flatten()), ValueError, "Flatten"),
        (lambda: tfnorms.WeightNormalization(keras.layers.Dropout(0.1)), ValueError, "kernel"),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), epsilon=0),
            ValueError,
            "epsilon",
        ),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), epsilon=-1e-3),
            ValueError,
            "-0.001",
        ),
        (lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), rho=0.0), ValueError, "rho"),
        (lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), rho=-2), ValueError, "rho"),
        (
            lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), rho=float("nan")),
            ValueError,
            "nan",
        ),
        (
            lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), rho=float("inf")),
            ValueError,
            "inf",
        ),
        (lambda: tfnorms.BoundedWeightNorm(keras.layers.Dense(2), rho="big"), ValueError, "str"),
        (
            lambda: tfnorms.CenteredWeightNorm(tfnorms.WeightNormalization(keras.layers.Dense(2))),
            ValueError,
            "already wrapped",
        ),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), scale_initializer="onez"),
            ValueError,
            "scale_initializer",
        ),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), scale_regularizer="l3"),
            ValueError,
            "scale_regularizer",
        ),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.Dense(2), center="yes"),
            ValueError,
            "center",
        ),
        (
            lambda: tfnorms.WeightNormalization(keras.layers.Dense(2), center=True),
            ValueError,
            "never centers",
        ),
        (
            lambda: tfnorms.CenteredWeightNorm(keras.layers.EinsumDense("ab,bcd->acd", (3, 4)))(
                np.ones((2, 5), "float32")
            ),
            ValueError,
            "2-D kernels",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ----------------------------- Duties of every public class (docs/design.md)
def make_mlp(wrapper_name="cwn", input_dim=6):
    wrap = WRAPPERS[wrapper_name]
    return keras.Sequential(
        [
            keras.Input((input_dim,)),
            wrap(keras.layers.Dense(16, activation="relu")),
            wrap(keras.layers.Dense(3)),
        ]
    )


def make_cnn(wrapper_name="cwn"):
    wrap = WRAPPERS[wrapper_name]
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            wrap(keras.layers.Conv2D(4, 3, activation="relu")),
            keras.layers.GlobalAveragePooling2D(),
            wrap(keras.layers.Dense(3)),
        ]
    )


def regression_data(rng, shape, outputs=3, n=64):
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.normal(size=(n, outputs)).astype("float32")
    return x, y


@pytest.mark.parametrize("wrapper_name", sorted(WRAPPERS))
def test_config_roundtrip(wrapper_name, rng):
    for inner_name in ("dense", "conv2d"):
        wrapper, x = make_case(inner_name, wrapper_name, rng)
        assert_config_roundtrip(wrapper, x)


def test_norm_initializer_survives_config():
    layer = tfnorms.CenteredWeightNorm(keras.layers.Dense(2), scale_initializer="norm")
    assert type(layer).from_config(layer.get_config()).scale_initializer == "norm"


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn", "bwn_gain"])
def test_fit_lowers_the_loss(wrapper_name, rng):
    x, y = regression_data(rng, (8, 8, 2))
    assert_fit_lowers_loss(compile_for_regression(make_cnn(wrapper_name)), x, y)


def test_keras_file_loads_in_a_fresh_process(tmp_path, rng):
    cases = []
    for name in sorted(WRAPPERS):
        x, y = regression_data(rng, (8, 8, 2), n=8)
        model = compile_for_regression(make_cnn(name))
        model.fit(x, y, epochs=1, verbose=0)  # trained, not just initial weights
        cases.append((model, x))
    assert_keras_roundtrip_fresh_process(cases, tmp_path)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn_gain"])
def test_export_savedmodel_and_tfsmlayer(wrapper_name, tmp_path, rng):
    x, _ = regression_data(rng, (8, 8, 2), n=8)
    model = make_cnn(wrapper_name)
    assert_export_roundtrip(model, x, tmp_path)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn", "bwn_gain"])
def test_mirrored_strategy_matches_one_device(wrapper_name, rng):
    x, y = regression_data(rng, (6,), n=32)
    assert_mirrored_matches_single(lambda: make_mlp(wrapper_name), x, y)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("wrapper_name", ["cwn", "bwn_gain"])
def test_mixed_precision(policy, wrapper_name, rng):
    x, y = regression_data(rng, (8, 8, 2))
    assert_mixed_precision(lambda: make_cnn(wrapper_name), x, y, policy)


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn"])
def test_jit_compile(wrapper_name, rng):
    x, y = regression_data(rng, (8, 8, 2))
    assert_jit_fit(lambda: make_cnn(wrapper_name), x, y)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch.compile")
def test_a_compiled_first_call_on_torch(rng):
    """A fresh model whose first call is compiled (`predict` with
    `jit_compile=True`, then `torch.compile` of another): torch.compile
    traces the wrapper's call, which once failed on a dict keyed by the
    kernels' ids."""
    import torch

    x, _ = regression_data(rng, (6,), n=8)
    model = compile_for_regression(make_mlp("wn"), jit_compile=True)
    compiled_predictions = model.predict(x, verbose=0)
    np.testing.assert_allclose(compiled_predictions, to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    fresh = make_mlp("cwn")
    loss = torch.compile(fresh)(torch.as_tensor(x)).square().sum()
    loss.backward()
    assert all(v.value.grad is not None for v in fresh.trainable_variables)


@pytest.mark.parametrize("wrapper_name", ["cwn", "wn", "bwn"])
def test_inner_losses_count_once(wrapper_name, rng):
    """The inner layer's activity-regularization loss is the wrapper's, once:
    in `model.losses`, in `stateless_call` (what JAX's `fit` runs) and in
    `evaluate`, as for the bare layer."""
    x, y = regression_data(rng, (4,), n=16)

    def build(wrap):
        keras.utils.set_random_seed(0)
        dense = keras.layers.Dense(3, activity_regularizer=keras.regularizers.L1(1.0))
        return keras.Sequential([keras.Input((4,)), wrap(dense)])

    model = build(WRAPPERS[wrapper_name])
    outputs = to_numpy(model(x))
    activity = np.abs(outputs).sum() / len(x)  # Keras divides by the batch size
    assert [float(to_numpy(loss)) for loss in model.losses] == pytest.approx([activity], rel=1e-5)
    trainable = [v.value for v in model.trainable_variables]
    others = [v.value for v in model.non_trainable_variables]
    _, _, losses = model.stateless_call(trainable, others, x, return_losses=True)
    assert [float(to_numpy(loss)) for loss in losses] == pytest.approx([activity], rel=1e-5)
    model.compile(optimizer="sgd", loss="mse")
    mse = np.mean((outputs - y) ** 2)
    assert model.evaluate(x, y, batch_size=16, verbose=0) == pytest.approx(mse + activity, rel=1e-4)


def test_dtype_follows_the_inner_layer():
    wrapper = tfnorms.CenteredWeightNorm(keras.layers.Dense(2, dtype="float64"))
    assert wrapper.compute_dtype == "float64"
