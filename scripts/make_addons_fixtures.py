"""Write the tensorflow-addons weight fixtures: small models wrapped in
`tfa.layers.WeightNormalization`, trained a few steps, saved as `.h5` weights,
as Keras 2 TF-format weights and as a `tf.train.Checkpoint`, with fixed inputs
and the outputs tensorflow-addons computes on them.

tests/library/test_addons.py loads every file into the same architecture built
with `tfnorms.WeightNormalization` and checks the outputs. This script needs
TensorFlow 2.15 (Keras 2) and tensorflow-addons, which do not install next to
Keras 3, so it runs in its own virtual environment:

    python3 -m venv build/addons-venv
    build/addons-venv/bin/pip install tensorflow-cpu==2.15.1 tensorflow-addons==0.23.0
    build/addons-venv/bin/python scripts/make_addons_fixtures.py --out tests/fixtures/addons

For each model NAME it writes NAME.h5, NAME_tf.index/.data-* (Keras 2
`save_weights` in TF format), NAME_trackable.index/.data-* (a
`tf.train.Checkpoint(model=..., optimizer=...)`) and NAME.npz (`x`, `y`),
plus lstm_model.h5, a whole model saved as .h5.
"""

from __future__ import annotations

import argparse
import glob
import os

SEED = 13


def tcn(tf, tfa):
    """A TCN-like stack: causal, dilated, weight-normalized Conv1D layers with
    a plain 1x1 residual projection, an Add and a plain Dense head."""
    wn = tfa.layers.WeightNormalization
    layers = tf.keras.layers
    inputs = tf.keras.Input((16, 3))
    h = wn(layers.Conv1D(6, 3, padding="causal", dilation_rate=1, activation="relu"))(inputs)
    h = wn(layers.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"))(h)
    h = wn(layers.Conv1D(6, 3, padding="causal", dilation_rate=4))(h)
    skip = layers.Conv1D(6, 1)(inputs)
    h = layers.Activation("relu")(layers.Add()([h, skip]))
    outputs = layers.Dense(2)(h)
    return tf.keras.Model(inputs, outputs, name="tcn"), (16, 3)


def upsampler(tf, tfa):
    """A MelGAN-like upsampler: a Conv1D, then a weight-normalized
    Conv1DTranspose whose input and output channel counts differ (tfa
    normalizes it per input channel). tfa's data-dependent init fails on
    such a layer (its g has one entry per input channel, the statistics one
    per output channel), so that layer uses `data_init=False`."""
    wn = tfa.layers.WeightNormalization
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 5)),
            wn(layers.Conv1D(4, 3, padding="same", activation="tanh")),
            wn(layers.Conv1DTranspose(3, 4, strides=2, padding="same"), data_init=False),
        ],
        name="upsampler",
    )
    return model, (8, 5)


def lstm(tf, tfa):
    """tfa's WeightNormalization around an LSTM (`data_init=False`, as tfa
    advises for RNNs), then a plain Dense."""
    wn = tfa.layers.WeightNormalization
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((7, 4)),
            wn(layers.LSTM(5, return_sequences=True), data_init=False),
            layers.Dense(2),
        ],
        name="lstm",
    )
    return model, (7, 4)


def timedistributed(tf, tfa):
    """tfa's WeightNormalization inside TimeDistributed (tfa refuses the
    opposite nesting: a TimeDistributed has no `kernel`): a Conv1D applied to
    each of 4 frames of a 4-D input, a plain Flatten per frame, a Dense per
    frame, then a plain TimeDistributed Dense head."""
    wn = tfa.layers.WeightNormalization
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((4, 6, 3)),
            layers.TimeDistributed(wn(layers.Conv1D(4, 3, padding="same", activation="relu"))),
            layers.TimeDistributed(layers.Flatten()),
            layers.TimeDistributed(wn(layers.Dense(4, activation="tanh"))),
            layers.TimeDistributed(layers.Dense(2)),
        ],
        name="timedistributed",
    )
    return model, (4, 6, 3)


MODELS = {"tcn": tcn, "upsampler": upsampler, "lstm": lstm, "timedistributed": timedistributed}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", default="tests/fixtures/addons", help="folder for the files")
    parser.add_argument(
        "--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="which models"
    )
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    import tensorflow_addons as tfa

    os.makedirs(args.out, exist_ok=True)
    for name in args.models:
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(SEED)
        model, input_shape = MODELS[name](tf, tfa)
        rng = np.random.default_rng(SEED)
        x = rng.normal(size=(6, *input_shape)).astype("float32")
        targets = rng.normal(size=model(x[:1]).shape[1:]).astype("float32")
        y_train = np.broadcast_to(targets, (len(x), *targets.shape))
        # The first call ran tfa's (data-dependent) initialization; a few steps
        # of training then move g away from ||v||, so a loader that ignored g
        # or recomputed it from v would fail the test.
        model.compile(tf.keras.optimizers.Adam(0.05), "mse")
        model.fit(x, y_train, epochs=3, batch_size=3, verbose=0)
        y = model.predict(x, verbose=0)

        for old in glob.glob(os.path.join(args.out, f"{name}.*")) + glob.glob(
            os.path.join(args.out, f"{name}_*")
        ):
            os.remove(old)
        model.save_weights(os.path.join(args.out, f"{name}.h5"))
        if name == "lstm":  # one whole-model .h5 (weights under "model_weights")
            model.save(os.path.join(args.out, f"{name}_model.h5"), include_optimizer=False)
        model.save_weights(os.path.join(args.out, f"{name}_tf"), save_format="tf")
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(
            os.path.join(args.out, f"{name}_trackable")
        )
        # The bookkeeping file `checkpoint` is not needed to read a prefix.
        checkpoint_file = os.path.join(args.out, "checkpoint")
        if os.path.exists(checkpoint_file):
            os.remove(checkpoint_file)
        np.savez_compressed(os.path.join(args.out, f"{name}.npz"), x=x, y=y)

        for layer in model.layers:
            if isinstance(layer, tf.keras.layers.TimeDistributed):
                layer = layer.layer
            if isinstance(layer, tfa.layers.WeightNormalization):
                norms = np.linalg.norm(layer.v.numpy().reshape(-1, layer.layer_depth), axis=0)
                print(
                    f"{name}/{layer.name}: max |g - ||v||| = "
                    f"{np.abs(layer.g.numpy() - norms).max():.3g}"
                )
        print(f"{name}: wrote {args.out}/{name}.*, output shape {y.shape}")


if __name__ == "__main__":
    main()
