"""The centered effective kernel as TensorFlow's fused batch norm
(`tfnorms._math.fused_tf`): the same kernel and gradients as the written-out
path and the NumPy reference, and taken only where it is meant to be."""

import keras
import numpy as np
import pytest
from kernel_reference import assert_close_per_unit, cwn_and_gradients, kernel_with_degenerate_units
from layer_checks import assert_export_roundtrip, assert_mirrored_matches_single

import tfnorms
from tfnorms._math import fused_tf, kernel

pytestmark = pytest.mark.tensorflow_only

tf = pytest.importorskip("tensorflow")

EPSILON = 1e-12


def onednn_enabled():
    from tensorflow.python.util import _pywrap_util_port

    return _pywrap_util_port.IsMklEnabled()


def effective_kernel_and_gradients(v, g, fused, monkeypatch):
    """W, dL/dv, dL/dg in a TensorFlow graph, with the fused path on or off;
    also whether the graph holds a FusedBatchNormV3."""
    with monkeypatch.context() as patch:
        if not fused:
            patch.setattr(fused_tf, "applies", lambda *args: False)
        reduce_axes = tuple(range(v.ndim - 1))
        broadcast = (1,) * len(reduce_axes) + v.shape[-1:]
        v_var = tf.Variable(v.astype("float32"))
        g_var = None if g is None else tf.Variable(np.float32(g) if np.ndim(g) == 0 else g)
        upstream = tf.constant(UPSTREAM[v.shape].astype("float32"))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                w = kernel.weight_norm_kernel(v_var, g_var, reduce_axes, broadcast, True, EPSILON)
                loss = tf.reduce_sum(w * upstream)
            variables = [v_var] + ([] if g_var is None else [g_var])
            return [w, *tape.gradient(loss, variables)]

        graph = step.get_concrete_function().graph
        ops = {op.type for op in graph.get_operations()}
        return [t.numpy() for t in step()], "FusedBatchNormV3" in ops


UPSTREAM = {}


@pytest.mark.skipif(not onednn_enabled(), reason="oneDNN is off: the fused path is not taken")
@pytest.mark.parametrize(
    "shape, scale",
    [((512, 256), "per unit"), ((512, 256), None), ((3, 3, 128, 128), "scalar")],
)
def test_fused_kernel_equals_the_written_out_one_and_numpy(shape, scale, rng, monkeypatch):
    v = kernel_with_degenerate_units(shape, rng)
    UPSTREAM[shape] = rng.normal(size=shape)
    g = None
    if scale == "per unit":
        g = rng.uniform(0.5, 2.0, size=shape[-1:]).astype("float32")
    elif scale == "scalar":
        g = np.float32(1.7)
    fused, took_fused = effective_kernel_and_gradients(v, g, True, monkeypatch)
    written, took_written = effective_kernel_and_gradients(v, g, False, monkeypatch)
    assert took_fused and not took_written
    expected = cwn_and_gradients(v, g, UPSTREAM[shape], EPSILON)
    if g is not None and np.ndim(g) == 0:
        expected = (*expected[:2], expected[2].sum())
    for name, f, w, e in zip(("W", "dL/dv", "dL/dg"), fused, written, expected, strict=False):
        for path in (f, w):
            assert_close_per_unit(np.reshape(path, np.shape(e)), e, 1e-4, name)


@pytest.mark.parametrize(
    "shape, dtype, center, unit_axes_last, jit, expected",
    [
        ((512, 256), "float32", True, True, False, True),
        ((256, 256), "float32", True, True, False, False),  # below MIN_FUSED_WEIGHTS
        ((512, 256), "float32", False, True, False, False),  # no centering
        ((512, 256), "float64", True, True, False, False),
        ((512, 256), "float32", True, False, False, False),  # a transposed convolution's units
        ((512, 256), "float32", True, True, True, False),  # under XLA
    ],
)
def test_fused_path_is_taken_only_where_it_applies(
    shape, dtype, center, unit_axes_last, jit, expected
):
    reduce_axes = (0,) if unit_axes_last else (1,)
    seen = []

    @tf.function(jit_compile=jit)
    def trace(v):
        seen.append(fused_tf.applies(v, reduce_axes, center))
        return v

    trace(tf.zeros(shape, dtype=dtype))
    assert seen == [expected and onednn_enabled()]


@pytest.mark.skipif(not onednn_enabled(), reason="oneDNN is off: the fused path is not taken")
def test_centered_weight_norm_trains_through_the_fused_path(rng, monkeypatch):
    """A CWN Dense layer with a 512 x 256 kernel in `fit`'s graph: its output
    equals the NumPy reference, and one SGD step moves V by the learning
    rate times the eq. (3) gradient."""
    calls = []
    fused_kernel = fused_tf.centered_kernel
    monkeypatch.setattr(
        fused_tf, "centered_kernel", lambda *args: calls.append(1) or fused_kernel(*args)
    )
    layer = tfnorms.CenteredWeightNorm(keras.layers.Dense(256, use_bias=False))
    model = keras.Sequential([keras.Input((512,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    x = rng.normal(size=(8, 512)).astype("float32")
    y = rng.normal(size=(8, 256)).astype("float32")
    v = layer.layer.kernel.numpy().astype("float64")
    g = layer.scale_variables()["kernel"].numpy().astype("float64")
    w, _, _ = cwn_and_gradients(v, g, np.zeros_like(v), EPSILON)
    np.testing.assert_allclose(model.predict_on_batch(x), x @ w, rtol=1e-4, atol=1e-5)
    upstream = x.T.astype("float64") @ (2 * (x @ w - y) / y.size)  # dL/dW of the mean squared error
    _, grad_v, _ = cwn_and_gradients(v, g, upstream, EPSILON)
    model.train_on_batch(x, y)
    np.testing.assert_allclose(layer.layer.kernel.numpy(), v - 0.1 * grad_v, rtol=1e-4, atol=1e-6)
    assert calls  # traced through the fused op


@pytest.mark.skipif(not onednn_enabled(), reason="oneDNN is off: the fused path is not taken")
def test_fused_path_under_mirrored_strategy_matches_one_device(rng):
    def make_model():
        dense = keras.layers.Dense(256, kernel_initializer=keras.initializers.GlorotUniform(3))
        return keras.Sequential([keras.Input((512,)), tfnorms.CenteredWeightNorm(dense)])

    x = rng.normal(size=(16, 512)).astype("float32")
    y = rng.normal(size=(16, 256)).astype("float32")
    assert_mirrored_matches_single(make_model, x, y)


@pytest.mark.skipif(not onednn_enabled(), reason="oneDNN is off: the fused path is not taken")
def test_exported_model_with_a_fused_kernel_reproduces_predictions(rng, tmp_path):
    """The exported serving graph holds the fused op (it runs on any CPU
    kernel TensorFlow has for it) and gives the model's predictions."""
    dense = keras.layers.Dense(256, kernel_initializer=keras.initializers.GlorotUniform(4))
    model = keras.Sequential([keras.Input((512,)), tfnorms.CenteredWeightNorm(dense)])
    x = rng.normal(size=(4, 512)).astype("float32")
    assert_export_roundtrip(model, x, tmp_path, atol=1e-5)
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    graph_def = loaded.serve.get_concrete_function(tf.TensorSpec((None, 512))).graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for f in graph_def.library.function for node in f.node_def}
    assert "FusedBatchNormV3" in op_types
