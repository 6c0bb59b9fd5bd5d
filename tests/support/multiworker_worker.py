"""One worker of the two-process MultiWorkerMirroredStrategy test.

    python tests/multiworker_worker.py INDEX PORT0 PORT1 DIRECTORY

Both workers train the two models of `make_model` (synchronized Lp, top-k,
max and mean-only batch norms, with and without a Masking layer in front)
with the initial weights in DIRECTORY/initial_{masked,unmasked}.npz, for
`STEPS` steps of the global batches of `global_batches()`, worker i's
replica taking rows [i*8, i*8+8) of each, then one last global batch of a
single row, which worker 0 takes whole and worker 1 sees empty. Keras's
`fit` fails under this strategy (keras-team/keras#20585; docs/distributed.md), so
the step is a custom one: `strategy.run` with `tf.GradientTape` and
`optimizer.apply`. Each worker saves its final weights to
DIRECTORY/worker_INDEX_{masked,unmasked}.npz. The test (tests/library/test_distribute.py) trains the
same model on one device on the global batches and compares.

Importing this module (the test does, for `make_model` and the data) touches
neither TensorFlow nor TF_CONFIG.
"""

import json
import os
import sys

import numpy as np

STEPS = 3
GLOBAL_BATCH = 16
TIMESTEPS, FEATURES = 5, 4
LEARNING_RATE = 0.1


def global_batches(seed=7):
    """`STEPS` batches (x, y) of padded sequences: zero rows are masked."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(STEPS):
        x = rng.normal(1.0, 2.0, size=(GLOBAL_BATCH, TIMESTEPS, FEATURES)).astype("float32")
        lengths = rng.integers(1, TIMESTEPS + 1, size=GLOBAL_BATCH)
        x[np.arange(TIMESTEPS)[None, :] >= lengths[:, None]] = 0.0
        y = rng.normal(size=(GLOBAL_BATCH, 1)).astype("float32")
        batches.append((x, y))
    last = rng.normal(1.0, 2.0, size=(1, TIMESTEPS, FEATURES)).astype("float32")
    batches.append((last, rng.normal(size=(1, 1)).astype("float32")))
    return batches


def make_model(masked=True):
    """Synchronized p=1, top-k, max, p=2 and mean-only batch norms; with
    `masked`, behind a Masking layer so that padded steps leave the statistics."""
    import keras

    import tfnorms

    def dense(units, **kwargs):
        # A random bias moves each batch norm's input mean away from 0, so that
        # every moving mean really moves (a zero bias after a normalization
        # leaves it at 0 up to rounding, and the test's check would be vacuous).
        bias = keras.initializers.RandomNormal(stddev=1.0)
        return keras.layers.Dense(units, bias_initializer=bias, **kwargs)

    inputs = keras.Input((TIMESTEPS, FEATURES))
    h = keras.layers.Masking(0.0)(inputs) if masked else inputs
    h = dense(6)(h)
    h = tfnorms.LpBatchNormalization(p=1, synchronized=True, momentum=0.5)(h)
    h = dense(6, activation="tanh")(h)
    h = tfnorms.LinfBatchNormalization(top_k=3, synchronized=True, momentum=0.5)(h)
    h = dense(6)(h)
    h = tfnorms.LinfBatchNormalization(synchronized=True, momentum=0.5)(h)
    h = dense(6)(h)
    h = tfnorms.LpBatchNormalization(p=2, synchronized=True, momentum=0.5)(h)
    h = dense(6)(h)
    h = tfnorms.MeanOnlyBatchNormalization(synchronized=True, momentum=0.5)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def step_loss(model, x, y, global_rows):
    """Squared error summed over the replica's rows, divided by the global
    batch size: the replicas' gradients then add up to the global mean's."""
    from keras import ops

    prediction = model(x, training=True)
    return ops.sum(ops.square(prediction - y)) / global_rows


def replica_rows(rows, replica, replicas=2):
    """The rows of a global batch of `rows` that `replica` takes: the first
    replicas take one more where `rows` does not divide (1 row: (1, 0))."""
    sizes = [rows // replicas + (r < rows % replicas) for r in range(replicas)]
    start = sum(sizes[:replica])
    return slice(start, start + sizes[replica])


def main(index, port0, port1, directory):
    os.environ["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{port0}", f"127.0.0.1:{port1}"]},
            "task": {"type": "worker", "index": index},
        }
    )
    import tensorflow as tf

    # The strategy first: it must start before TensorFlow initializes devices.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    for masked in (True, False):
        train(strategy, masked, index, directory)


def train(strategy, masked, index, directory):
    import keras
    import tensorflow as tf

    name = "masked" if masked else "unmasked"
    initial = np.load(os.path.join(directory, f"initial_{name}.npz"))
    with strategy.scope():
        model = make_model(masked)
        model.set_weights([initial[f"w{i}"] for i in range(len(initial.files))])
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(x, y, global_rows):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                loss = step_loss(model, x, y, global_rows)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            return loss

        return strategy.run(replica_step, args=(x, y))

    def part(array):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(array[replica_rows(len(array), ctx.replica_id_in_sync_group)])
        )

    for x, y in global_batches():
        train_step(part(x), part(y), float(len(x)))

    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    path = os.path.join(directory, f"worker_{index}_{name}.npz")
    np.savez(path, replicas=strategy.num_replicas_in_sync, **weights)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
