"""Write the saved-model compatibility fixture: a `.keras` file holding every
public layer and constraint of tfnorms, and its outputs on fixed inputs.

The test (tests/library/test_saved_compat.py) loads the committed file with the
current code and checks that the outputs are unchanged, so a refactor that
breaks loading of files written by an earlier version fails there. Rerun only
when the file must deliberately change (a new format): the point of the
fixture is that it was written by older code.

    KERAS_BACKEND=tensorflow python scripts/make_compat_fixture.py --out tests/fixtures
"""

from __future__ import annotations

import argparse
import os


def build_model():
    import keras

    import tfnorms

    inputs = keras.Input((8, 6))
    h = tfnorms.WeightNormalization(keras.layers.Conv1D(8, 3, padding="causal"))(inputs)
    h = tfnorms.L1BatchNormalization()(h)
    h = tfnorms.CenteredWeightNorm(keras.layers.Conv1D(8, 3, padding="same"), scale=False)(h)
    h = tfnorms.LinfBatchNormalization(top_k=3)(h)
    h = tfnorms.LpGroupNormalization(groups=2, p=3)(h)
    h = tfnorms.BoundedWeightNorm(keras.layers.LSTM(6, return_sequences=True))(h)
    h = tfnorms.L1LayerNormalization()(h)
    h = tfnorms.LpLayerNormalization(p="inf", rms_scaling=True)(h)
    h = keras.layers.Flatten()(h)
    h = tfnorms.BoundedWeightNorm(keras.layers.Dense(12), per_unit_gain=True)(h)
    h = tfnorms.MeanOnlyBatchNormalization()(h)
    h = keras.layers.Dense(10, kernel_constraint=tfnorms.CenteredUnitNorm(axis=0), use_bias=False)(
        h
    )
    h = tfnorms.LpBatchNormalization(p=1.5)(h)
    h = keras.layers.Dense(4, kernel_constraint=tfnorms.FixedNorm(2.0, axis=0))(h)
    outputs = tfnorms.CenteredWeightNorm(keras.layers.Dense(3))(h)
    return keras.Model(inputs, outputs, name="compat")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures", help="folder for the two files")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    keras.utils.set_random_seed(7)
    model = build_model()
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 8, 6)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # moving statistics move
    os.makedirs(args.out, exist_ok=True)
    model.save(os.path.join(args.out, "compat_model.keras"))
    np.savez(
        os.path.join(args.out, "compat_model_outputs.npz"),
        x=x,
        inference=model(x, training=False).numpy(),
        training=model(x, training=True).numpy(),
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
