"""strip and convert_model on models built from custom layers that hold their
layers in attributes, lists, dicts and tuples (a TCN, a MelGAN-like
generator, a functional model mixing both, blocks that make their layers in
`__init__` and build them in `build`, a keras-hub BERT backbone): every
layer the model tracks is converted or stripped, outputs are kept, the
original is untouched, the class is kept where Keras allows it, and what
cannot be rebuilt is named."""

import functools
import os

import keras
import numpy as np
import pytest
from layer_checks import to_numpy
from tools_models import (
    MelGANGenerator,
    make_gated_model,
    make_keras_tcn_model,
    make_melgan,
    make_mixed_model,
    make_tcn_model,
)

import tfnorms
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.tools.walk import children

L = keras.layers


def tracked(model):
    """Keras's own list of every layer the model tracks: an oracle that is
    independent of the tools' walk."""
    return model._flatten_layers(include_self=True, recursive=True)


def count(model, cls):
    return sum(isinstance(layer, cls) for layer in tracked(model))


def randomize(model, rng):
    for variable in model.trainable_variables:  # as after training
        variable.assign(to_numpy(variable) + 0.2 * rng.normal(size=variable.shape))


MODELS = {
    # name: (make, input shape, kernel layers)
    "tcn": (make_tcn_model, (16, 3), 8),
    "melgan": (make_melgan, (8, 5), 16),
    "mixed": (make_mixed_model, (10, 4), 11),
    "gated": (make_gated_model, (6,), 5),  # layers made in __init__, built in build
    "keras_tcn": (make_keras_tcn_model, (16, 3), 8),
    "keras_tcn_registered": (functools.partial(make_keras_tcn_model, registered=True), (16, 3), 8),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_convert_then_strip_reach_every_layer_and_keep_outputs(name, rng):
    make, shape, kernels = MODELS[name]
    model = make()
    randomize(model, rng)
    x = rng.normal(size=(4, *shape)).astype("float32")
    want = to_numpy(model(x))
    converted, report = tfnorms.convert_model(model, weight_norm="wn", return_report=True)
    assert count(converted, tfnorms.WeightNormalization) == kernels == len(report.done)
    assert report.left == []
    assert type(converted) is type(model)
    np.testing.assert_allclose(to_numpy(converted(x)), want, atol=1e-5)
    assert count(model, KernelNormWrapper) == 0  # the original is untouched
    np.testing.assert_array_equal(to_numpy(model(x)), want)

    randomize(converted, rng)  # training moves g and V apart
    trained = to_numpy(converted(x))
    stripped, report = tfnorms.strip(converted, return_report=True)
    assert count(stripped, KernelNormWrapper) == 0
    assert len(report.done) == kernels
    assert type(stripped) is type(model)
    np.testing.assert_allclose(to_numpy(stripped(x)), trained, atol=1e-5)
    assert count(converted, KernelNormWrapper) == kernels  # untouched too
    # No weight of a replaced layer is left behind in a custom layer.
    assert len(stripped.weights) == len(model.weights)


@pytest.mark.parametrize("name", ["tcn", "melgan", "gated", "keras_tcn", "keras_tcn_registered"])
def test_strip_a_model_built_with_wrappers(name, rng):
    make, shape, kernels = MODELS[name]
    model = make(wn=True)
    randomize(model, rng)
    x = rng.normal(size=(4, *shape)).astype("float32")
    stripped = tfnorms.strip(model)
    assert count(model, KernelNormWrapper) == kernels
    assert count(stripped, KernelNormWrapper) == 0
    np.testing.assert_allclose(to_numpy(stripped(x)), to_numpy(model(x)), atol=1e-5)


def test_a_converted_custom_model_reloads_its_weights_into_the_same_conversion(tmp_path, rng):
    """What the report's note says to do: the weights file of a converted
    model loads into a fresh model converted the same way."""
    model = make_melgan()
    converted, report = tfnorms.convert_model(model, weight_norm="cwn", return_report=True)
    assert any("get_config() does not describe" in note for note in report.notes)
    randomize(converted, rng)
    path = os.path.join(tmp_path, "melgan.weights.h5")
    converted.save_weights(path)
    again = tfnorms.convert_model(make_melgan(), weight_norm="cwn")
    again.load_weights(path)
    x = rng.normal(size=(2, 8, 5)).astype("float32")
    np.testing.assert_allclose(to_numpy(again(x)), to_numpy(converted(x)), atol=1e-6)


def test_convert_options_reach_inside_custom_layers(rng):
    model = make_mixed_model()
    converted, report = tfnorms.convert_model(
        model,
        weight_norm="bwn",
        layer_filter=lambda layer: layer.name not in ("conv1d_0", "head"),
        return_report=True,
    )
    assert count(converted, tfnorms.BoundedWeightNorm) == 9
    left = {e.path: e.detail for e in report.left}
    assert left == {
        "mixed/block/convs[0]": "layer_filter returned False",
        "mixed/head": "layer_filter returned False",
    }


@pytest.mark.parametrize("registered", [False, True], ids=["plain", "registered"])
def test_a_keras_tcn_strips_back_to_plain_keras_layers(registered, rng):
    """keras-tcn's TCN: its config holds a tracked list, copied without the
    sub-layers the list refers to (a deep copy would pickle them), and its
    Lambdas, which nothing replaces, are the rebuilt layers' own: Keras
    refuses to rebuild a Lambda of a Python lambda from its config."""
    model = make_keras_tcn_model(registered=registered)
    x = rng.normal(size=(4, 16, 3)).astype("float32")
    converted = tfnorms.convert_model(model, weight_norm="wn")
    randomize(converted, rng)
    want = to_numpy(converted(x))
    stripped = tfnorms.strip(converted)
    np.testing.assert_allclose(to_numpy(stripped(x)), want, atol=1e-5)
    assert [type(layer) for layer in tracked(stripped)] == [type(layer) for layer in tracked(model)]
    assert count(stripped, L.Lambda) == 3  # two identity shortcuts and the slicer
    # The slicer reads the TCN that holds it, not the one it was copied from.
    converted.get_layer("tcn").output_slice_index = 0
    np.testing.assert_allclose(to_numpy(stripped(x)), want, atol=1e-5)


def test_a_sub_layer_nothing_replaces_keeps_its_weights_and_trainable_flag(rng):
    """A block left out by layer_filter is the rebuilt TCN's own block, with
    the original's weights and its trainable flag, not the original block."""
    model = make_keras_tcn_model()
    randomize(model, rng)
    kept = model.get_layer("tcn").residual_blocks[2]
    kept.trainable = False
    skip = {id(layer) for layer in kept.layers}
    x = rng.normal(size=(4, 16, 3)).astype("float32")
    converted = tfnorms.convert_model(
        model, weight_norm="wn", layer_filter=lambda layer: id(layer) not in skip
    )
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), atol=1e-5)
    assert count(converted, tfnorms.WeightNormalization) == 6
    copy = converted.get_layer("tcn").residual_blocks[2]
    assert copy is not kept and type(copy.layers[0]) is L.Conv1D
    assert not copy.trainable and not copy.layers[0].trainable
    for got, original in zip(copy.weights, kept.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(original))


NORMS = {  # norm: (the option, the Keras layer, what replaces it)
    "batch": ("batch_norm", L.BatchNormalization, tfnorms.L1BatchNormalization),
    "layer": ("layer_norm", L.LayerNormalization, tfnorms.L1LayerNormalization),
}


@pytest.mark.parametrize("weight_norm", [None, "wn"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_a_keras_tcn_with_unnamed_norms_converts_them_and_strips(norm, weight_norm, rng):
    """keras-tcn's `use_batch_norm` / `use_layer_norm`: each unnamed norm is
    also an attribute named after it, and a block rebuilt from its config
    names its own norms anew (`batch_normalization_7`, not
    `batch_normalization_1`). The places pair up, every norm is replaced,
    and strip keeps the converted model's outputs and norms."""
    option, keras_class, replaced_by = NORMS[norm]
    model = make_keras_tcn_model(norm=norm)
    randomize(model, rng)
    x = rng.normal(size=(4, 16, 3)).astype("float32")
    converted, report = tfnorms.convert_model(
        model, weight_norm=weight_norm, return_report=True, **{option: "l1"}
    )
    assert count(model, keras_class) == 6
    assert count(converted, keras_class) == 0 and count(converted, replaced_by) == 6
    assert len(report.done) == 6 + (8 if weight_norm else 0)
    blocks = converted.get_layer("tcn").residual_blocks
    places = [child.layer for block in blocks for child in children(block)]
    assert sum(type(layer) is replaced_by for layer in places) == 12  # in the list and by name
    assert not any(type(layer) is keras_class for layer in places)
    randomize(converted, rng)
    want = to_numpy(converted(x))
    stripped = tfnorms.strip(converted)
    assert count(stripped, KernelNormWrapper) == 0
    assert count(stripped, keras_class) == 0 and count(stripped, replaced_by) == 6
    assert len(stripped.weights) == len(model.weights)
    np.testing.assert_allclose(to_numpy(stripped(x)), want, atol=1e-5)


class Extended(L.Layer):
    """A custom layer given one more sub-layer after it was made: its
    config does not describe it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(3)

    def call(self, x):
        return self.extra(self.dense(x)) if hasattr(self, "extra") else self.dense(x)


def test_a_custom_layer_whose_config_gives_other_sub_layers_is_named():
    """Places that differ in more than the fresh layers' automatic names are
    refused, with the differing places."""
    inputs = keras.Input((3,))
    extended = Extended(name="extended")
    extended.extra = L.BatchNormalization()
    model = keras.Model(inputs, extended(inputs), name="m")
    with pytest.raises(ValueError, match=r"m/extended \(Extended\).*other places.*\('extra',\)"):
        tfnorms.convert_model(model, weight_norm="wn")


class Holder(L.Layer):
    """A custom layer that takes a layer object: Keras cannot write its
    constructor arguments into a config."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x):
        return self.inner(x)


def test_a_custom_layer_that_cannot_be_rebuilt_is_named():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Holder(L.Dense(2), name="holder")(inputs), name="m")
    with pytest.raises(ValueError, match=r"m/holder \(Holder\) cannot be rebuilt from its config"):
        tfnorms.convert_model(model, weight_norm="wn")


def test_a_subclassed_model_keeps_its_class_and_its_compile_settings(rng):
    model = make_melgan()
    model.compile(optimizer="sgd", loss="mse")
    converted = tfnorms.convert_model(model, weight_norm="wn")
    assert isinstance(converted, MelGANGenerator) and converted.compiled
    x = rng.normal(size=(4, 8, 5)).astype("float32")
    y = rng.normal(size=(4, 32, 1)).astype("float32")
    loss = converted.fit(x, y, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(loss).all()


# ------------------------------------------------------------- keras-hub BERT
def make_bert():
    keras_hub = pytest.importorskip(
        "keras_hub", reason="keras-hub is not installed (pip install keras-hub)"
    )
    return keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
    )


def bert_inputs(rng, n=8):
    return {
        "token_ids": rng.integers(0, 50, size=(n, 8)).astype("int32"),
        "segment_ids": rng.integers(0, 2, size=(n, 8)).astype("int32"),
        "padding_mask": np.ones((n, 8), "int32"),
    }


def assert_same_outputs(a, b, atol):
    for key in a:
        np.testing.assert_allclose(to_numpy(a[key]), to_numpy(b[key]), atol=atol, err_msg=key)


@pytest.mark.filterwarnings("ignore:tfnorms.convert_model left")  # the 3-D EinsumDense
def test_bert_backbone_converts_every_dense_and_layer_norm(rng):
    """2 encoder layers: 2 feed-forward Dense and 2 LayerNormalization each,
    plus the embeddings' LayerNormalization and the pooler Dense; the
    attention projections are EinsumDense with 3-D kernels (left, named)."""
    model = make_bert()
    x = bert_inputs(rng)
    want = model(x)
    l1, report = tfnorms.convert_model(model, layer_norm="l1", return_report=True)
    assert count(model, L.LayerNormalization) == 5
    assert count(l1, tfnorms.L1LayerNormalization) == len(report.done) == 5
    assert not any(type(layer) is L.LayerNormalization for layer in tracked(l1))
    assert any("came back as a Functional" in note for note in report.notes)

    wn, report = tfnorms.convert_model(model, weight_norm="wn", return_report=True)
    assert count(wn, tfnorms.WeightNormalization) == len(report.done) == 5
    assert len(report.left) == 8 and all("3-D kernel" in e.detail for e in report.left)
    assert_same_outputs(wn(x), want, atol=1e-5)
    assert count(model, KernelNormWrapper) == 0

    initialized = tfnorms.data_init(wn, x)
    assert len(initialized.done) == 5
    stripped = tfnorms.strip(wn)
    assert count(stripped, KernelNormWrapper) == 0
    assert_same_outputs(stripped(x), wn(x), atol=1e-5)
