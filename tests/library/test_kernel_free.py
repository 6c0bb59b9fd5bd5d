"""The weight-norm wrappers' kernel-free path (tfnorms/layers/kernel_free.py).

For Dense, EinsumDense and ConvND the wrappers may compute `(x @ V - (x @ 1) mean) * factor`
instead of forming `W`. Both paths must compute the same function: outputs and
gradients (input, V, g or rho, bias) of the kernel-free path equal the
kernel-forming path's, for every wrapper and every layer kind it takes, in
float32 and under mixed precision; and the path is taken where it is meant to
be (under XLA) and nowhere else.
"""

import keras
import numpy as np
import pytest
from layer_checks import call_gradients, is_tensorflow, to_numpy

import tfnorms
from tfnorms._math import compiled
from tfnorms.layers import kernel_free

WRAPPERS = {
    "cwn": lambda layer: tfnorms.CenteredWeightNorm(layer, scale_initializer="norm"),
    "wn": tfnorms.WeightNormalization,
    "cwn_no_scale": lambda layer: tfnorms.CenteredWeightNorm(layer, scale=False),
    "bwn": tfnorms.BoundedWeightNorm,
    "bwn_gain": lambda layer: tfnorms.BoundedWeightNorm(layer, per_unit_gain=True),
}
# (layer factory, input shape without the batch)
LAYERS = {
    "dense": (lambda: keras.layers.Dense(5, activation="tanh"), (7,)),
    "dense_3d_input": (lambda: keras.layers.Dense(4, use_bias=False), (3, 6)),
    "conv1d_causal_dilated": (
        lambda: keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu"),
        (9, 3),
    ),
    "conv2d_strided": (lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same"), (7, 7, 2)),
    "conv2d_valid": (lambda: keras.layers.Conv2D(3, (2, 3)), (5, 6, 4)),
    "conv3d": (lambda: keras.layers.Conv3D(2, 2), (4, 4, 3, 2)),
    "einsum_dense": (
        lambda: keras.layers.EinsumDense("ab,bc->ac", 5, bias_axes="c", activation="tanh"),
        (7,),
    ),
    "einsum_dense_sequence": (lambda: keras.layers.EinsumDense("abc,cd->abd", (3, 4)), (3, 6)),
    # A bias over the sequence and unit axes, shape (3, 4).
    "einsum_dense_bias_per_step": (
        lambda: keras.layers.EinsumDense("abc,cd->abd", (3, 4), bias_axes="bd"),
        (3, 6),
    ),
    # Units before the sequence axis, with a bias of shape (units, 1).
    "einsum_dense_units_inside": (
        lambda: keras.layers.EinsumDense("abc,cd->adb", (4, 3), bias_axes="d"),
        (3, 6),
    ),
    "einsum_dense_ellipsis": (
        lambda: keras.layers.EinsumDense("...b,bc->...c", 4, bias_axes="c", activation="relu"),
        (2, 3, 6),
    ),
}


def forced(monkeypatch, value):
    monkeypatch.setattr(kernel_free, "pays", lambda layer, x: value)


def randomized_wrapper(wrapper_name, layer_name, rng):
    make_layer, shape = LAYERS[layer_name]
    wrapper = WRAPPERS[wrapper_name](make_layer())
    wrapper.build((None, *shape))
    for variable in wrapper.trainable_variables:  # as after training: biases, means
        variable.assign(to_numpy(variable) + 0.3 * rng.normal(size=variable.shape))
    x = rng.normal(size=(3, *shape)).astype("float32")
    return wrapper, x


def outputs_and_gradients(wrapper, x, rng):
    """The output, loss, input gradient and variable gradients of a loss
    weighting the output by weights drawn from `rng`."""
    weights = rng.normal(size=to_numpy(wrapper(x)).shape)

    def loss(out):
        return keras.ops.sum(keras.ops.multiply(keras.ops.cast(out, "float32"), weights))

    return to_numpy(wrapper(x)), *call_gradients(wrapper, x, loss)


def both_ways(wrapper, x, rng, take):
    """`outputs_and_gradients` with `take(True)` in effect, then with
    `take(False)`, both with the same loss weights."""
    results = []
    for flag in (True, False):
        take(flag)
        state = rng.bit_generator.state
        results.append(outputs_and_gradients(wrapper, x, rng))
        rng.bit_generator.state = state
    return results


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("wrapper_name", sorted(WRAPPERS))
def test_kernel_free_path_equals_the_kernel_forming_path(
    wrapper_name, layer_name, rng, monkeypatch
):
    """Same outputs, input gradient and variable gradients on both paths."""
    assert kernel_free.supports(LAYERS[layer_name][0]())
    wrapper, x = randomized_wrapper(wrapper_name, layer_name, rng)
    (out, value, dx, grads), (out_w, value_w, dx_w, grads_w) = both_ways(
        wrapper, x, rng, lambda path: forced(monkeypatch, path)
    )
    np.testing.assert_allclose(out, out_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, value_w, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dx, dx_w, rtol=1e-4, atol=1e-5)
    assert len(grads) == len(grads_w) == len(wrapper.trainable_variables)
    for variable, grad, grad_w in zip(wrapper.trainable_variables, grads, grads_w, strict=True):
        np.testing.assert_allclose(grad, grad_w, rtol=1e-4, atol=1e-4, err_msg=variable.path)


def through(monkeypatch, direct):
    """The kernel-forming path, with the layer's product computed by the
    wrapper (`formed_call`, taken where each step reruns the Python) or
    through the inner layer's `__call__` (traced steps)."""
    forced(monkeypatch, False)
    monkeypatch.setattr(compiled, "runs_every_step", lambda: direct)


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("wrapper_name", sorted(WRAPPERS))
@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_direct_product_equals_the_inner_layers_call(
    wrapper_name, layer_name, policy, rng, monkeypatch
):
    """With `W` formed, the wrapper's own product, bias and activation give
    the inner layer's `__call__` outputs and gradients (input, V, g or rho,
    bias), in its compute dtype."""
    keras.config.set_dtype_policy(policy)
    wrapper, x = randomized_wrapper(wrapper_name, layer_name, rng)
    (out, value, dx, grads), (out_c, value_c, dx_c, grads_c) = both_ways(
        wrapper, x, rng, lambda direct: through(monkeypatch, direct)
    )
    tolerance = 1e-6 if policy == "float32" else 1e-2  # float16: sums in another order
    assert out.dtype == out_c.dtype
    np.testing.assert_allclose(out, out_c, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(value, value_c, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(dx, dx_c, rtol=tolerance, atol=tolerance)
    for variable, grad, grad_c in zip(wrapper.trainable_variables, grads, grads_c, strict=True):
        np.testing.assert_allclose(
            grad, grad_c, rtol=tolerance, atol=tolerance, err_msg=variable.path
        )


@pytest.mark.parametrize("layer_name", ["conv2d_strided", "einsum_dense_units_inside"])
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_the_output_dtype_and_values(policy, layer_name, rng, monkeypatch):
    """Under mixed precision the kernel-free path computes in the compute
    dtype, like the inner layer, to the same values (to that precision)."""
    keras.config.set_dtype_policy(policy)
    wrapper, x = randomized_wrapper("cwn", layer_name, rng)
    forced(monkeypatch, True)
    free = wrapper(x)
    forced(monkeypatch, False)
    forming = wrapper(x)
    assert keras.backend.standardize_dtype(free.dtype) == wrapper.compute_dtype
    tolerance = 0.05 if policy == "mixed_bfloat16" else 5e-3
    np.testing.assert_allclose(
        to_numpy(free).astype("float32"), to_numpy(forming).astype("float32"),
        rtol=tolerance, atol=tolerance,
    )  # fmt: skip


def test_zero_kernel_stays_finite(monkeypatch):
    """A zero kernel (epsilon inside the square root) gives the bias and
    finite gradients on the kernel-free path too."""
    forced(monkeypatch, True)
    wrapper = tfnorms.CenteredWeightNorm(keras.layers.Dense(3, kernel_initializer="zeros"))
    x = np.ones((2, 4), "float32")
    wrapper.build(x.shape)
    _, dx, grads = call_gradients(wrapper, x, keras.ops.sum)
    assert np.all(to_numpy(wrapper(x)) == 0)
    assert np.all(np.isfinite(dx)) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda: keras.layers.Conv2D(4, 3, groups=2),
        lambda: keras.layers.Conv2DTranspose(4, 3),
        lambda: keras.layers.DepthwiseConv2D(3),
        # The unit letter c is also the input's: no one-unit kernel gives x @ 1.
        lambda: keras.layers.EinsumDense("abc,bc->ac", output_shape=6),
        lambda: keras.layers.LSTM(3),
        lambda: keras.layers.Dense(3, activity_regularizer="l2"),
    ],
    ids=[
        "grouped_conv",
        "conv_transpose",
        "depthwise",
        "einsum_units_in_input",
        "lstm",
        "activity_reg",
    ],
)
def test_other_layers_keep_the_kernel_forming_path(make_layer):
    assert not kernel_free.supports(make_layer())


def test_a_subclass_keeps_the_kernel_forming_path():
    """A subclass of Dense may compute something else in `call`."""

    class ScaledDense(keras.layers.Dense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    assert kernel_free.supports(keras.layers.Dense(3))
    assert not kernel_free.supports(ScaledDense(3))


def test_the_path_is_taken_under_xla_only_while_the_output_is_the_smaller():
    """JAX: in its (compiled) steps; TensorFlow: in an XLA-compiled function
    only; PyTorch: never (eager is faster with W formed); never in float16,
    where `x @ V` could overflow; and only while the output has no more rows
    (batch times positions) than the kernel's fan-in; never with a batch
    size unknown until run time (None, or a symbolic dimension)."""
    backend = keras.backend.backend()
    dense = keras.layers.Dense(8)
    dense.build((None, 16))
    conv = keras.layers.Conv2D(8, 3, strides=2, padding="same")
    conv.build((None, 4, 4, 2))  # fan-in 18; output 2 x 2 positions per example
    einsum = keras.layers.EinsumDense("...tc,cu->...ut", (8, 3))  # fan-in 16
    einsum.build((None, 2, 3, 16))
    small, large = np.zeros((16, 16), "float32"), np.zeros((17, 16), "float32")
    under_xla = {
        "small batch": (dense, small, True),
        "more rows than the fan-in": (dense, large, False),
        "conv, 4 examples x 4 positions": (conv, np.zeros((4, 4, 4, 2), "float32"), True),
        "conv, 5 examples x 4 positions": (conv, np.zeros((5, 4, 4, 2), "float32"), False),
        "einsum, 2 examples x 2 x 3 positions": (einsum, np.zeros((2, 2, 3, 16), "float32"), True),
        "einsum, 3 examples x 2 x 3 positions": (einsum, np.zeros((3, 2, 3, 16), "float32"), False),
    }
    half = keras.layers.Dense(8, dtype="mixed_float16")
    half.build((None, 16))

    def decisions():
        return {name: kernel_free.pays(layer, x) for name, (layer, x, _) in under_xla.items()}

    want = {name: expected for name, (_, _, expected) in under_xla.items()}
    nothing = dict.fromkeys(under_xla, False)
    if backend == "jax":
        assert decisions() == want
        assert not kernel_free.pays(half, small)
        assert not kernel_free.pays(dense, keras.KerasTensor((None, 16)))  # unknown batch
        # A symbolic batch of JAX's shape inference (Keras's compute_output_spec
        # for a custom layer without compute_output_shape) cannot be compared.
        import jax

        (batch,) = jax.export.symbolic_shape("b")
        assert not kernel_free.pays(dense, jax.ShapeDtypeStruct((batch, 16), "float32"))
        assert not kernel_free.pays(conv, jax.ShapeDtypeStruct((batch, 4, 4, 2), "float32"))
    elif backend == "torch":
        assert decisions() == nothing
    else:
        import tensorflow as tf

        assert decisions() == nothing  # eager
        seen = {}

        def probe(jit):
            seen[jit] = decisions()
            seen[jit, "float16"] = kernel_free.pays(half, small)
            return tf.constant(0.0)

        tf.function(lambda: probe(True), jit_compile=True)()
        tf.function(lambda: probe(False))()
        assert seen == {True: want, False: nothing, (True, "float16"): False,
                        (False, "float16"): False}  # fmt: skip


@pytest.mark.skipif(not is_tensorflow(), reason="compares TensorFlow's XLA and graph steps")
def test_jit_compiled_fit_matches_the_graph_fit(rng, monkeypatch):
    """`fit` with `jit_compile=True` (both wrappers kernel-free: their outputs
    have fewer rows than their kernels) and without (W formed) end at the
    same weights."""
    x = rng.normal(size=(32, 4, 4, 16)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    taken = []
    real_call = kernel_free.call
    monkeypatch.setattr(
        kernel_free,
        "call",
        lambda layer, *args: taken.append(layer.name) or real_call(layer, *args),
    )
    final = {}
    for jit in (True, False):
        keras.utils.set_random_seed(3)
        model = keras.Sequential(
            [
                keras.Input((4, 4, 16)),
                tfnorms.CenteredWeightNorm(keras.layers.Conv2D(4, 3, activation="relu")),
                keras.layers.Flatten(),
                tfnorms.WeightNormalization(keras.layers.Dense(2)),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        final[jit] = model.get_weights()
        if jit:
            assert {type(w.layer) for w in model.layers if hasattr(w, "layer")} == {
                keras.layers.Conv2D,
                keras.layers.Dense,
            }
            assert len(set(taken)) == 2, taken  # each wrapper's inner layer, traced
    for a, b in zip(final[True], final[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
