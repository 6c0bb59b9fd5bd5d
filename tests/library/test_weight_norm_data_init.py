"""WeightNormalization's tensorflow-addons signature `(layer, data_init, ...)`:
`data_init=True` initializes g and the bias from the first eager batch (unit
statistics per output unit), once: the record is a saved variable, so a
reloaded or resumed model is never initialized again; `fit` (graph,
jit_compile), MirroredStrategy and JAX work after it; a first call where it
cannot run raises an error naming `tfnorms.data_init`."""

import os

import keras
import numpy as np
import pytest
from layer_checks import _replica_values, mirrored_strategy, to_numpy

import tfnorms

L = keras.layers
WN = tfnorms.WeightNormalization


def make_model(data_init=True):
    return keras.Sequential(
        [
            keras.Input((6,)),
            WN(L.Dense(8, activation="relu"), data_init, name="hidden"),
            WN(L.Dense(3), data_init, name="out"),
        ]
    )


def batch(rng, n=128):
    return (2.0 * rng.normal(size=(n, 6)) + 1.5).astype("float32")


def pre_activation(wrapper, x):
    plain = wrapper.remove()
    plain.activation = keras.activations.linear
    return to_numpy(plain(x)).astype("float64")


def assert_unit_statistics(model, x):
    h = x
    for wrapper in model.layers:
        z = pre_activation(wrapper, h)
        np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4, err_msg=wrapper.name)
        np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=1e-4, err_msg=wrapper.name)
        h = to_numpy(wrapper(h))


def state(model):
    return [to_numpy(v.value).copy() for v in model.weights]


def test_the_signature_is_the_one_of_tensorflow_addons():
    dense = L.Dense(2)
    assert WN(dense, True).data_init is True
    plain = WN(L.Dense(2), False)  # was `scale=False` positionally before
    assert plain.data_init is False and plain.scale is True
    assert WN(L.Dense(2), data_init=True).get_config()["data_init"] is True
    with pytest.raises(TypeError):
        WN(L.Dense(2), False, False)  # the other options are keyword-only
    with pytest.raises(ValueError, match="data_init"):
        WN(L.Dense(2), data_init="yes")
    for layer, kwargs, why in [
        (L.Dense(2), {"scale": False}, "scale=False"),
        (L.LSTM(2), {}, "recurrent"),
    ]:
        with pytest.raises(ValueError, match=why):
            WN(layer, True, **kwargs)


def test_default_keeps_the_bare_layers_output(rng):
    dense = L.Dense(4)
    wrapped = WN(dense)  # data_init=False: g = ||V||
    x = batch(rng)
    np.testing.assert_allclose(to_numpy(wrapped(x)), to_numpy(dense(x)), rtol=1e-5, atol=1e-5)
    assert [v.name for v in wrapped.weights if not v.trainable] == []


def test_first_eager_call_initializes_once(rng):
    model = make_model()
    x = batch(rng)
    model(x)
    assert_unit_statistics(model, x)
    assert all(int(to_numpy(w.weights[1].value)) == 1 for w in model.layers)  # initialized
    after = state(model)
    model(batch(rng) * 3.0 + 1.0)  # other data: nothing changes
    for a, b in zip(after, state(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_reloaded_model_is_never_initialized_again(tmp_path, rng):
    model = make_model()
    x = batch(rng)
    model(x)
    for variable in model.trainable_variables:  # as after training
        variable.assign(variable.value + 0.1)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    saved = state(model)
    loaded = keras.saving.load_model(path)
    assert [w.data_init for w in loaded.layers] == [True, True]
    loaded(batch(rng) + 5.0)
    for a, b in zip(saved, state(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    # Straight into fit, with no eager call first (on JAX the record is read
    # when the weights are loaded).
    fresh = keras.saving.load_model(path)
    fresh.compile(optimizer="sgd", loss="mse")
    fresh.fit(x, x[:, :3], epochs=1, batch_size=32, verbose=0)


def test_a_first_call_inside_fit_names_tfnorms_data_init(rng):
    model = make_model()
    model.compile(optimizer="sgd", loss="mse")
    x = batch(rng, 32)
    if keras.backend.backend() == "torch":
        # Keras's torch `fit` calls the model eagerly (unless jit_compile):
        # the first batch initializes the wrappers, as `model(batch)` does.
        model.fit(x, x[:, :3], epochs=1, verbose=0)
        assert all(int(to_numpy(w.weights[1].value)) == 1 for w in model.layers)
        return
    with pytest.raises(RuntimeError, match=r"tfnorms\.data_init\(model"):
        model.fit(x, x[:, :3], epochs=1, verbose=0)


def test_weights_set_from_an_initialized_model_need_no_eager_call(rng):
    """`set_weights` from an initialized model carries its `initialized`
    record: `predict` and `fit` run straight away and keep the weights
    set (JAX traces them with the variables emptied, where the record is
    read from a mirror that `set_weights` once left stale)."""
    source = make_model()
    x = batch(rng)
    source(x)
    target = make_model()
    target.set_weights(source.get_weights())
    np.testing.assert_allclose(target.predict(x, verbose=0), to_numpy(source(x)), atol=1e-5)
    target.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    target.fit(x, x[:, :3], epochs=1, batch_size=32, verbose=0)
    for a, b in zip(state(source), state(target), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.tensorflow_only
def test_a_first_call_inside_tf_function_on_an_unbuilt_layer_names_data_init(rng):
    """Built inside the function, its `initialized` variable has no value
    yet while the function is traced: the error is still the one naming
    `tfnorms.data_init`, not an unreadable variable's."""
    import tensorflow as tf

    wrapper = WN(L.Dense(4), True)
    with pytest.raises(RuntimeError, match=r"traced function.*tfnorms\.data_init\(model"):
        tf.function(wrapper)(batch(rng, 8))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_trains_after_the_eager_initialization(jit_compile, rng):
    model = make_model()
    x = batch(rng)
    model(x)
    initialized = state(model)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=jit_compile)
    history = model.fit(x, x[:, :3], epochs=3, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < history[0]
    assert not np.allclose(initialized[0], state(model)[0])  # trained, not re-initialized
    assert all(int(to_numpy(w.weights[1].value)) == 1 for w in model.layers)


def test_tfnorms_data_init_marks_the_wrappers_initialized(rng):
    model = make_model()
    x = batch(rng)
    report = tfnorms.data_init(model, x)
    assert len(report.done) == 2
    assert_unit_statistics(model, x)
    after = state(model)
    model(batch(rng) - 4.0)
    for a, b in zip(after, state(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_inside_time_distributed_the_error_names_tfnorms_data_init(rng):
    """TimeDistributed calls its layer's `call` once per time step: the first
    step alone would set the statistics, so the layer refuses, and
    tfnorms.data_init (which sees all steps at once) does it."""
    model = keras.Sequential(
        [keras.Input((5, 6)), L.TimeDistributed(WN(L.Dense(4), True, name="step"))]
    )
    x = rng.normal(size=(16, 5, 6)).astype("float32")
    with pytest.raises(RuntimeError, match=r"time step.*tfnorms\.data_init"):
        model(x)
    assert len(tfnorms.data_init(model, x).done) == 1
    z = to_numpy(model(x)).reshape(-1, 4)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.var(axis=0), 1.0, rtol=1e-4)


def test_mark_data_initialized_after_setting_trained_weights(rng):
    trained = make_model(data_init=False)
    target = make_model()
    for source, wrapper in zip(trained.layers, target.layers, strict=True):
        wrapper.layer.set_weights(source.layer.get_weights())
        wrapper.scale_variables()["kernel"].assign(source.scale_variables()["kernel"].value)
        wrapper.mark_data_initialized()
    x = batch(rng)
    np.testing.assert_allclose(to_numpy(target(x)), to_numpy(trained(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_only
def test_under_mirrored_strategy(rng):
    strategy = mirrored_strategy()
    x = batch(rng)
    with strategy.scope():
        model = make_model()
        with pytest.raises(RuntimeError, match=r"tfnorms\.data_init"):
            strategy.run(model, args=(x[:8],))  # a replica sees its share only
        model(x)  # cross-replica: the whole batch, assigned to every replica
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    for variable in model.weights:
        first, second = _replica_values(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
    assert_unit_statistics(model, x)
    model.fit(x, x[:, :3], epochs=1, batch_size=32, verbose=0)
    for variable in model.trainable_variables:
        first, second = _replica_values(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.path)
