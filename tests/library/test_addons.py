"""`tfnorms.load_addons_weights`: weights written by tensorflow-addons itself
(tests/fixtures/addons, from scripts/make_addons_fixtures.py under TensorFlow
2.15 and tensorflow-addons 0.23) load into the same architectures built with
tfnorms, which then compute what tensorflow-addons computed."""

import inspect
import os
import shutil

import keras
import numpy as np
import pytest

import tfnorms

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "addons"
)
# format -> file name pattern; checkpoints are given by their prefix.
FORMATS = {"h5": "{}.h5", "tf": "{}_tf", "trackable": "{}_trackable"}
WN = tfnorms.WeightNormalization
layers = keras.layers


def tcn(wrap=WN):
    inputs = keras.Input((16, 3))
    h = wrap(layers.Conv1D(6, 3, padding="causal", dilation_rate=1, activation="relu"))(inputs)
    h = wrap(layers.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"))(h)
    h = wrap(layers.Conv1D(6, 3, padding="causal", dilation_rate=4))(h)
    skip = layers.Conv1D(6, 1)(inputs)
    h = layers.Activation("relu")(layers.Add()([h, skip]))
    return keras.Model(inputs, layers.Dense(2)(h))


def upsampler(wrap=WN, channels=3):
    return keras.Sequential(
        [
            keras.Input((8, 5)),
            wrap(layers.Conv1D(4, 3, padding="same", activation="tanh")),
            wrap(layers.Conv1DTranspose(channels, 4, strides=2, padding="same")),
        ]
    )


def lstm(wrap=WN):
    return keras.Sequential(
        [keras.Input((7, 4)), wrap(layers.LSTM(5, return_sequences=True)), layers.Dense(2)]
    )


def timedistributed(wrap=WN):
    td = layers.TimeDistributed
    return keras.Sequential(
        [
            keras.Input((4, 6, 3)),
            td(wrap(layers.Conv1D(4, 3, padding="same", activation="relu"))),
            td(layers.Flatten()),
            td(wrap(layers.Dense(4, activation="tanh"))),
            td(layers.Dense(2)),
        ]
    )


MODELS = {"tcn": tcn, "upsampler": upsampler, "lstm": lstm, "timedistributed": timedistributed}


def plain(layer):
    return layer


def fixture(name, fmt="h5"):
    if fmt != "h5":
        # Reading a checkpoint needs the tensorflow package, on any backend.
        pytest.importorskip("tensorflow")
    return os.path.join(FIXTURES, FORMATS[fmt].format(name))


def expected(name):
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
        return data["x"], data["y"]


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def weights_of(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_match_tensorflow_addons(name, fmt):
    model = MODELS[name]()
    x, y = expected(name)
    pairs = tfnorms.load_addons_weights(model, fixture(name, fmt))
    assert len(pairs) == len([layer for layer in model.layers if layer.weights])
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)


def test_the_fixtures_are_trained_away_from_the_initial_norm():
    # A loader that dropped g (or recomputed it from v) would fail the output
    # test only if g differs from ||v||: make sure the fixtures have that.
    h5py = pytest.importorskip("h5py")
    with h5py.File(fixture("upsampler"), "r") as f:
        group = f["weight_normalization_1"]["weight_normalization_1"]
        g, v = np.asarray(group["g:0"]), np.asarray(group["kernel:0"])
    assert v.shape == (4, 3, 4)  # (width, out, in): tfa's g is per input channel
    assert np.abs(g - np.linalg.norm(v.reshape(-1, 4), axis=0)).max() > 0.1


def test_transposed_and_recurrent_kernels_are_remapped():
    model = upsampler()
    tfnorms.load_addons_weights(model, fixture("upsampler"))
    transposed = model.layers[1]
    g = keras.ops.convert_to_numpy(transposed.scale_variables()["kernel"])
    assert g.shape == (3,)  # ours: one scale per output channel
    kernel = keras.ops.convert_to_numpy(transposed.layer.kernel)
    np.testing.assert_allclose(g, np.sqrt(np.sum(kernel**2, axis=(0, 2))), rtol=1e-6)

    model = lstm()
    tfnorms.load_addons_weights(model, fixture("lstm"))
    scales = model.layers[0].scale_variables()
    assert sorted(scales) == ["kernel", "recurrent_kernel"]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("name", ["upsampler", "timedistributed"])
def test_loads_into_plain_layers_too(name, fmt):
    # Plain layers receive tensorflow-addons' effective kernels W.
    model = MODELS[name](wrap=plain)
    x, y = expected(name)
    tfnorms.load_addons_weights(model, fixture(name, fmt))
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_wrappers_inside_time_distributed_are_loaded_and_initialized(fmt):
    # Unloaded, a data_init=True wrapper inside TimeDistributed refuses its
    # first call (it would see one time step); loading marks it initialized.
    model = timedistributed(wrap=lambda layer: WN(layer, data_init=True))
    x, y = expected("timedistributed")
    pairs = tfnorms.load_addons_weights(model, fixture("timedistributed", fmt))
    assert list(pairs) == [layer.name for layer in model.layers if layer.weights]
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)
    conv = model.layers[0].layer
    g = keras.ops.convert_to_numpy(conv.scale_variables()["kernel"])
    kernel = keras.ops.convert_to_numpy(conv.layer.kernel)
    np.testing.assert_allclose(g, np.sqrt(np.sum(kernel**2, axis=(0, 1))), rtol=1e-6)


def test_loading_counts_as_the_data_dependent_initialization():
    if "data_init" not in inspect.signature(WN.__init__).parameters:
        pytest.skip("this WeightNormalization has no data_init argument")
    model = tcn(wrap=lambda layer: WN(layer, data_init=True))
    x, y = expected("tcn")
    tfnorms.load_addons_weights(model, fixture("tcn"))
    # The first call would initialize g and the bias from x, were the
    # loaded layers not marked initialized.
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)


def test_a_whole_model_h5_is_read():
    # `model.save("x.h5")` under Keras 2 keeps the weights in "model_weights".
    model = lstm()
    x, y = expected("lstm")
    tfnorms.load_addons_weights(model, os.path.join(FIXTURES, "lstm_model.h5"))
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)


def test_a_checkpoint_folder_is_read(tmp_path):
    pytest.importorskip("tensorflow")
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(fixture("lstm", "tf") + suffix, tmp_path / f"ckpt{suffix}")
    model = lstm()
    x, y = expected("lstm")
    tfnorms.load_addons_weights(model, tmp_path)
    np.testing.assert_allclose(outputs(model, x), y, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ errors


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="no_such_weights"):
        tfnorms.load_addons_weights(upsampler(), os.path.join(FIXTURES, "no_such_weights.h5"))


def test_a_different_number_of_layers_is_an_error():
    with pytest.raises(ValueError, match=r"holds 2 layers with weights.*has 5"):
        tfnorms.load_addons_weights(tcn(), fixture("lstm"))


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_a_shape_mismatch_names_the_layer_and_the_shapes(fmt):
    model = upsampler(channels=2)
    before = weights_of(model)
    with pytest.raises(ValueError) as error:
        tfnorms.load_addons_weights(model, fixture("upsampler", fmt))
    message = str(error.value)
    assert model.layers[1].name in message
    assert "(4, 2, 4)" in message and "(4, 3, 4)" in message
    # Nothing was assigned: every pair is checked first.
    for old, new in zip(before, weights_of(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_centered_wrapper_cannot_hold_addons_weights():
    model = upsampler(wrap=tfnorms.CenteredWeightNorm)
    with pytest.raises(ValueError, match="only tfnorms.WeightNormalization"):
        tfnorms.load_addons_weights(model, fixture("upsampler"))


def test_an_error_names_the_time_distributed_layer_and_what_it_wraps():
    model = timedistributed(wrap=tfnorms.CenteredWeightNorm)
    name = model.layers[0].name
    with pytest.raises(ValueError) as error:
        tfnorms.load_addons_weights(model, fixture("timedistributed"))
    message = str(error.value)
    assert f"'{name}' (TimeDistributed(CenteredWeightNorm(Conv1D)): kernel (3, 3, 4)" in message
    assert "only tfnorms.WeightNormalization" in message


def test_a_never_called_addons_layer_warns(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "untrained.h5"
    shutil.copy(fixture("upsampler"), path)
    with h5py.File(path, "r+") as f:
        f["weight_normalization"]["weight_normalization"]["initialized:0"][()] = False
    with pytest.warns(UserWarning, match="'weight_normalization'.*never called"):
        tfnorms.load_addons_weights(upsampler(), path)


def test_an_unknown_object_path_lists_the_models():
    with pytest.raises(ValueError, match=r"no model at object_path 'generator'.*'model'"):
        tfnorms.load_addons_weights(lstm(), fixture("lstm", "trackable"), object_path="generator")
