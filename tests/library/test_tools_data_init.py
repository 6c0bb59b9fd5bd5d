"""tfnorms.data_init: every wrapper a model tracks (Sequential, functional,
nested, TimeDistributed, subclassed, custom layers holding layers in lists,
dicts and tuples) gets unit statistics, in forward order, on TensorFlow and
JAX, under MirroredStrategy and mixed precision; what it leaves is reported."""

import keras
import numpy as np
import pytest
from layer_checks import _replica_values, mirrored_strategy, to_numpy
from tools_models import make_melgan, make_mixed_model, make_tcn_model

import tfnorms
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper

L = keras.layers
WN, CWN, BWN = tfnorms.WeightNormalization, tfnorms.CenteredWeightNorm, tfnorms.BoundedWeightNorm


def all_layers(layer):
    """Every layer under `layer`, through models, wrappers and Bidirectional
    (the old model walk: enough for the Sequential test model)."""
    yield layer
    if isinstance(layer, L.Bidirectional):
        children = [layer.forward_layer, layer.backward_layer]
    elif isinstance(layer, L.Wrapper):
        children = [layer.layer]
    elif isinstance(layer, keras.Model):
        children = layer.layers
    else:
        children = []
    for child in children:
        yield from all_layers(child)


def wrappers_of(model):
    return [layer for layer in all_layers(model) if isinstance(layer, KernelNormWrapper)]


def make_data_init_model():
    """A chain of top-level stages (so the test can recompute each stage's
    input itself): every feed-forward kind, a layer without bias, layers
    data_init must leave alone, TimeDistributed and a nested model."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            WN(L.Conv2D(6, 3, activation="relu"), name="conv"),
            CWN(
                L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu"),
                name="dw",
            ),
            WN(L.SeparableConv2D(5, 1, activation="relu"), name="sep"),
            CWN(L.Conv2DTranspose(4, 3, activation="relu"), name="convt"),
            WN(L.Conv2D(4, 1, use_bias=False), name="nobias"),
            BWN(L.Conv2D(4, 1), name="bwn"),
            CWN(L.Conv2D(4, 1), scale=False, name="noscale"),
            L.Reshape((8, 32)),
            L.TimeDistributed(WN(L.Dense(3, activation="relu"), name="td_dense"), name="td"),
            keras.Sequential(
                [keras.Input((8, 3)), CWN(L.Dense(5, activation="relu"), name="inner")]
            ),
            WN(L.LSTM(3), name="lstm"),
            WN(L.Dense(2, activation="tanh"), name="head"),
        ]
    )


INITIALIZED = ["conv", "dw", "sep", "convt", "nobias", "td_dense", "inner", "head"]
LEFT_ALONE = ["bwn", "noscale", "lstm"]


def pre_activations(model, x):
    """{wrapper name: its pre-activation on this batch}, from plain copies
    (wrapper.remove()) without their activation, applied to the inputs the
    model's own forward pass gives each top-level stage: independent of
    data_init's mechanism, and the same float16 path as the model's."""
    feeds = keras.Model(model.inputs[0], [layer.input for layer in model.layers])(x)
    out = {}
    for layer, h in zip(model.layers, feeds, strict=True):
        if isinstance(layer, keras.Sequential):
            (layer,) = layer.layers  # the nested model holds one wrapper
        wrapper = layer.layer if isinstance(layer, L.TimeDistributed) else layer
        if isinstance(wrapper, KernelNormWrapper) and not isinstance(wrapper.layer, L.RNN):
            plain = wrapper.remove()
            plain.activation = keras.activations.linear
            out[wrapper.name] = to_numpy(plain(h)).astype("float64")
    return out


def assert_standardized(model, stats, names, mean_atol, var_rtol, bias_rtol=0.0):
    """Mean 0 (up to `mean_atol` plus `bias_rtol` times the largest bias: a
    float16 bias is rounded to about 1e-3 of its size) and variance 1."""
    wrappers = {w.name: w for w in wrappers_of(model)}
    for name in names:
        z = stats[name]
        z = z.reshape(-1, z.shape[-1])
        np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=var_rtol, err_msg=name)
        if name != "nobias":  # no bias: only the variance can be set
            bias = np.abs(to_numpy(wrappers[name].layer.bias.value)).max()
            atol = mean_atol + bias_rtol * bias
            np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=atol, err_msg=name)


def data_init_batch(rng, n=64):
    return (3.0 * rng.normal(size=(n, 8, 8, 3)) + 1.0).astype("float32")


def variables_by_wrapper(model, names):
    found = {w.name: w for w in wrappers_of(model)}
    return {n: [to_numpy(v.value).copy() for v in found[n].weights] for n in names}


def test_data_init_standardizes_every_pre_activation_in_order(rng):
    model = make_data_init_model()
    x = data_init_batch(rng)
    before = pre_activations(model, x)
    assert np.abs(before["head"].std(axis=0) - 1).max() > 0.05  # not already standardized
    untouched = variables_by_wrapper(model, LEFT_ALONE)
    report = tfnorms.data_init(model, x)
    done = report.layers
    assert [w.name for w in done] == INITIALIZED  # in forward order
    assert sorted(e.layer.name for e in report.left) == sorted(LEFT_ALONE)  # with reasons
    assert all(e.detail for e in report.left)
    # Checked on the final model: every layer's input comes from the already
    # initialized layers before it.
    assert_standardized(model, pre_activations(model, x), INITIALIZED, 1e-4, var_rtol=1e-4)
    for name, values in variables_by_wrapper(model, LEFT_ALONE).items():
        for a, b in zip(untouched[name], values, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert all("call" not in w.__dict__ for w in wrappers_of(model))  # no hook left
    # A second pass finds nothing left to do.
    g = {w.name: to_numpy(w.scale_variables()[next(iter(w.scale_variables()))].value) for w in done}
    tfnorms.data_init(model, x)
    for w in done:
        now = to_numpy(w.scale_variables()[next(iter(w.scale_variables()))].value)
        np.testing.assert_allclose(now, g[w.name], rtol=1e-4, err_msg=w.name)


def test_data_init_rescales_the_pointwise_scale_of_a_separable_conv(rng):
    model = make_data_init_model()
    sep = model.get_layer("sep")
    depthwise_g = to_numpy(sep.scale_variables()["depthwise_kernel"].value).copy()
    pointwise_g = to_numpy(sep.scale_variables()["pointwise_kernel"].value).copy()
    tfnorms.data_init(model, data_init_batch(rng))
    np.testing.assert_array_equal(
        to_numpy(sep.scale_variables()["depthwise_kernel"].value), depthwise_g
    )
    assert not np.allclose(to_numpy(sep.scale_variables()["pointwise_kernel"].value), pointwise_g)


@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer")  # Keras's, not ours
def test_data_init_on_a_subclassed_model_warns_about_unused_layers(rng):
    class TwoHeads(keras.Model):
        def __init__(self):
            super().__init__(name="two_heads")
            self.used = WN(L.Dense(4, activation="relu"), name="used")
            self.unused = WN(L.Dense(4), name="unused")

        def call(self, x):
            return self.used(x)

    model = TwoHeads()
    x = (2.0 * rng.normal(size=(32, 5)) + 3.0).astype("float32")
    with pytest.warns(UserWarning, match="not called by the model"):
        report = tfnorms.data_init(model, x)
    assert [w.name for w in report.layers] == ["used"]
    assert [(e.layer.name, e.path) for e in report.left] == [("unused", "two_heads/unused")]
    plain = model.used.remove()
    plain.activation = keras.activations.linear
    z = to_numpy(plain(x)).astype("float64")
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=0), 1, rtol=1e-4)


@pytest.mark.tensorflow_only
def test_data_init_under_mirrored_strategy(rng):
    strategy = mirrored_strategy()
    with strategy.scope():
        model = make_data_init_model()
        x = data_init_batch(rng)
        done = tfnorms.data_init(model, x).layers
    assert [w.name for w in done] == INITIALIZED
    for wrapper in done:
        for variable in wrapper.weights:
            replicas = _replica_values(variable)
            assert len(replicas) == 2, variable.path
            np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)
    assert_standardized(model, pre_activations(model, x), INITIALIZED, 1e-4, var_rtol=1e-4)


def test_data_init_under_mixed_float16(rng):
    keras.config.set_dtype_policy("mixed_float16")
    model = make_data_init_model()
    x = data_init_batch(rng)
    done = tfnorms.data_init(model, x).layers
    assert [w.name for w in done] == INITIALIZED
    for wrapper in done:
        for variable in wrapper.weights:
            assert keras.backend.standardize_dtype(variable.dtype) == "float32"
    # float16 pre-activations: about three significant digits.
    stats = pre_activations(model, x)
    assert_standardized(model, stats, INITIALIZED, 5e-3, var_rtol=2e-2, bias_rtol=2e-3)


# ------------------------------------------- models built from custom layers
def tracked_wrappers(model):
    """Keras's own list of every layer the model tracks (independent of the
    walk under test), its weight-norm wrappers only."""
    layers = model._flatten_layers(include_self=True, recursive=True)
    return [layer for layer in layers if isinstance(layer, KernelNormWrapper)]


def eager_wrapper_outputs(model, x, monkeypatch):
    """{id(wrapper): (wrapper, output)} of every WeightNormalization called
    eagerly in one forward pass (TimeDistributed traces its inner layer:
    those calls are skipped)."""
    seen = {}
    original = WN.call

    def recording(self, inputs, *args, **kwargs):
        out = original(self, inputs, *args, **kwargs)
        try:
            seen.setdefault(id(self), (self, to_numpy(out).astype("float64")))
        except Exception:  # a traced call: no values
            pass
        return out

    monkeypatch.setattr(WN, "call", recording)
    model(x, training=False)
    monkeypatch.undo()
    return seen


CUSTOM = {
    # name: (make, input shape, wrappers, wrappers data_init leaves alone)
    "tcn": (make_tcn_model, (16, 3), 8, 0),
    "melgan": (make_melgan, (8, 5), 16, 0),
}


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_data_init_reaches_wrappers_inside_custom_layers(name, rng, monkeypatch):
    make, shape, count, _ = CUSTOM[name]
    model = make(wn=True)
    assert len(tracked_wrappers(model)) == count
    x = (2.0 * rng.normal(size=(64, *shape)) + 0.5).astype("float32")
    report = tfnorms.data_init(model, x)
    assert len(report.done) == count and report.left == []
    assert {id(w) for w in report.layers} == {id(w) for w in tracked_wrappers(model)}
    outputs = eager_wrapper_outputs(model, x, monkeypatch)
    checked = 0
    for wrapper, z in outputs.values():
        if wrapper.layer.get_config()["activation"] != "linear":
            continue  # MelGAN's tanh output: its output is not the pre-activation
        z = z.reshape(-1, z.shape[-1])
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4, err_msg=wrapper.path)
        np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=1e-3, err_msg=wrapper.path)
        checked += 1
    assert checked == count - (name == "melgan")


def test_data_init_on_a_mixed_model_names_what_it_leaves(rng):
    model = tfnorms.convert_model(make_mixed_model(), weight_norm="wn")
    x = rng.normal(size=(32, 10, 4)).astype("float32")
    report = tfnorms.data_init(model, x)
    assert len(report.done) == 9  # 11 wrappers less the two LSTM directions
    assert [e.path for e in report.left] == [
        "mixed/bilstm/forward_layer",
        "mixed/bilstm/backward_layer",
    ]
    assert all("recurrent" in e.detail for e in report.left)
    paths = [e.path for e in report.done]
    assert "mixed/block/convs[0]" in paths and "mixed/encoder/net/hidden_wn" in paths


@pytest.mark.tensorflow_only
def test_data_init_names_a_wrapper_called_only_inside_a_tf_function(rng):
    import tensorflow as tf

    class Compiled(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = WN(L.Dense(3), name="inside")

        @tf.function
        def call(self, x):
            return self.dense(x)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Compiled(name="compiled")(WN(L.Dense(4), name="outer")(inputs)))
    # Keras traced the tf.function when it built the model: the layer inside
    # is not called again, and data_init says so.
    with pytest.warns(UserWarning, match="compiled/dense: not called .* tf.function"):
        report = tfnorms.data_init(model, rng.normal(size=(16, 4)).astype("float32"))
    assert [w.name for w in report.layers] == ["outer"]
    assert [e.layer.name for e in report.left] == ["inside"]


@pytest.mark.parametrize("entry", ["data_init", "data_init=True"])
def test_data_init_leaves_masked_positions_out(entry, rng):
    """Padded (masked) time steps are not in the statistics: the same valid
    tokens padded to 5 or 20 steps give the same initialization, and the
    valid positions come out with mean 0 and variance 1 per unit."""
    tokens = rng.integers(1, 20, size=(32, 5))

    def initialized(steps):
        keras.utils.set_random_seed(1)
        wrapper = tfnorms.WeightNormalization(
            keras.layers.Dense(4), data_init=entry == "data_init=True"
        )
        model = keras.Sequential(
            [keras.Input((steps,), dtype="int32"), keras.layers.Embedding(20, 6, mask_zero=True)]
        )
        model.add(wrapper)
        x = np.zeros((32, steps), "int32")
        x[:, :5] = tokens
        if entry == "data_init":
            tfnorms.data_init(model, x)
        valid = to_numpy(model(x))[:, :5].reshape(-1, 4)
        return to_numpy(wrapper.scale_variables()["kernel"]), valid

    g_unpadded, _ = initialized(5)
    g_padded, valid = initialized(20)
    np.testing.assert_allclose(g_padded, g_unpadded, rtol=1e-4)
    np.testing.assert_allclose(valid.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(valid.std(axis=0), 1.0, rtol=1e-3)
