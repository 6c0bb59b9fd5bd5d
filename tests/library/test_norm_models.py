"""The duties of every public class (docs/design.md, "Duties of every public
class") for the normalization layers, on two small models that hold every
family and preset between them: `fit` lowers the loss, `.keras` files load in
a fresh process, SavedModel export, mixed precision, `jit_compile` and (per
example) MirroredStrategy. The per-layer contract is test_norm_contract.py;
synchronized batch norms under a strategy are test_distribute.py."""

import keras
import numpy as np
import pytest
from layer_checks import (
    assert_export_roundtrip,
    assert_fit_lowers_loss,
    assert_jit_fit,
    assert_keras_roundtrip_fresh_process,
    assert_mirrored_matches_single,
    assert_mixed_precision,
    compile_for_regression,
)

import tfnorms


def batch_model():
    """Every batch norm: the presets, finite p, top-k, renorm and mean-only."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1),
            keras.layers.Dense(8, activation="tanh"),
            tfnorms.LinfBatchNormalization(top_k=3),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1.5, renorm=True, renorm_clipping={"rmax": 3.0}),
            keras.layers.Dense(8),
            tfnorms.LinfBatchNormalization(),
            keras.layers.Dense(8),
            tfnorms.MeanOnlyBatchNormalization(),
            keras.layers.Dense(1),
        ]
    )


def batch_data(rng, n=64):
    x = rng.normal(size=(n, 6)).astype("float32")
    y = (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]).astype("float32")
    return x, y


def per_example_model():
    """A small sequence model: every configuration of the layer, RMS and
    group norms."""
    inputs = keras.Input((5, 4))
    h = keras.layers.Dense(8)(inputs)
    h = tfnorms.L1LayerNormalization()(h)
    h = keras.layers.Dense(8, activation="tanh")(h)
    h = tfnorms.LpLayerNormalization(p="inf", top_k=3)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpLayerNormalization(p=3, axis=[1, 2])(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpLayerNormalization(p="inf", rms_scaling=True)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpRMSNormalization(p=1)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpGroupNormalization(4, p=1)(h)
    h = keras.layers.Dense(8)(h)
    h = tfnorms.LpGroupNormalization(2, p="inf", top_k=5)(h)
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    return keras.Model(inputs, outputs)


def per_example_data(rng, n=64):
    x = rng.normal(size=(n, 5, 4)).astype("float32")
    y = (np.sin(x[:, :, :1]).mean(axis=1) + 0.5 * x[:, 0, 1:2] * x[:, 1, 2:3]).astype("float32")
    return x, y


MODELS = {"batch": (batch_model, batch_data), "per_example": (per_example_model, per_example_data)}


def conv_model(rng):
    """Batch norms on images, run once in training mode (moving statistics)."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same"),
            tfnorms.LpBatchNormalization(p=1),
            keras.layers.Conv2D(4, 3, padding="same"),
            tfnorms.LinfBatchNormalization(top_k=10, renorm=True),
        ]
    )
    x = rng.normal(size=(4, 6, 6, 2)).astype("float32")
    model(x, training=True)
    return model, x


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fit_lowers_loss_and_saves(kind, rng, tmp_path):
    make_model, make_data = MODELS[kind]
    x, y = make_data(rng)
    model = compile_for_regression(make_model())
    assert_fit_lowers_loss(model, x, y)
    saved = [(model, x)] + ([conv_model(rng)] if kind == "batch" else [])
    assert_keras_roundtrip_fresh_process(saved, tmp_path, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_export_roundtrip(kind, rng, tmp_path):
    make_model, make_data = MODELS[kind]
    x, y = make_data(rng, n=32)
    model = compile_for_regression(make_model())
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_export_roundtrip(model, x, tmp_path, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_mixed_precision(kind, policy, rng):
    make_model, make_data = MODELS[kind]
    x, y = make_data(rng)
    assert_mixed_precision(make_model, x, y, policy)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_jit_compile(kind, rng):
    make_model, make_data = MODELS[kind]
    x, y = make_data(rng)
    assert_jit_fit(make_model, x, y)


@pytest.mark.tensorflow_only
def test_mirrored_strategy_matches_one_device(rng):
    """Per-example statistics need no synchronization: two replicas train
    like one device. (The batch norms' synchronized statistics are
    test_distribute.py.)"""
    x, y = per_example_data(rng, n=16)
    assert_mirrored_matches_single(per_example_model, x, y, steps=2)
