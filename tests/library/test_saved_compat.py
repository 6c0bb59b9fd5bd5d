"""A `.keras` file written by tfnorms 0.1.0 before the package was reorganized
(scripts/make_compat_fixture.py) loads with the current code and computes the
same outputs, in inference and in training mode, on every backend."""

import os

import keras
import numpy as np

import tfnorms  # noqa: F401  (registers the classes)

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def test_file_from_0_1_0_loads_with_the_same_outputs():
    expected = np.load(os.path.join(FIXTURES, "compat_model_outputs.npz"))
    model = keras.saving.load_model(os.path.join(FIXTURES, "compat_model.keras"))
    x = expected["x"]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=False)), expected["inference"], atol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x, training=True)), expected["training"], atol=1e-5
    )
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"WeightNormalization", "CenteredWeightNorm", "BoundedWeightNorm"} <= kinds
    assert {"L1BatchNormalization", "LinfBatchNormalization", "LpBatchNormalization"} <= kinds
    assert {"LpGroupNormalization", "L1LayerNormalization", "MeanOnlyBatchNormalization"} <= kinds
