"""synchronized=True across replicas (docs/design.md, "Distribution").

Under MirroredStrategy on the two logical CPUs of conftest.py, and under
MultiWorkerMirroredStrategy with two local worker processes, the
synchronized statistics equal one device's statistics on the global batch,
masks included, the replicas' moving statistics stay identical, and
gradients (hence training) match the one-device run. On JAX, a jitted step
over a batch sharded across two host devices does the same with no
collective of ours. The weight-norm wrappers' kernel-free path, taken on
the replicas under XLA, trains as one device with the kernel formed.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from layer_checks import (
    REPO_ROOT,
    assert_mirrored_matches_single,
    compile_for_regression,
    kernel_free_model,
    mirrored_strategy,
    replica_values,
    to_numpy,
)
from processes import free_ports, run_together

import tfnorms

tensorflow_only = pytest.mark.tensorflow_only

CONFIGS = {
    "p1": lambda **kw: tfnorms.LpBatchNormalization(p=1, **kw),
    "p2": lambda **kw: tfnorms.LpBatchNormalization(p=2, **kw),
    "p1.5": lambda **kw: tfnorms.LpBatchNormalization(p=1.5, **kw),
    "pinf": lambda **kw: tfnorms.LinfBatchNormalization(**kw),
    "top3": lambda **kw: tfnorms.LinfBatchNormalization(top_k=3, **kw),
    # 10 > the 6 or 9 elements a replica may hold under the mask: sentinels.
    "top10": lambda **kw: tfnorms.LinfBatchNormalization(top_k=10, **kw),
    "mean_only": lambda **kw: tfnorms.MeanOnlyBatchNormalization(**kw),
}


def split(array, sizes=(5, 3)):
    """Uneven per-replica batches: replica 0 takes 5 rows, replica 1 the rest."""
    return [array[: sizes[0]], array[sizes[0] :]]


def on_replicas(strategy, fn, *arrays):
    """Run `fn(*per_replica_tensors)` on each replica with its own slice of
    every array (a list of one array per replica, or None); return the
    per-replica results as lists of NumPy arrays."""
    import tensorflow as tf

    def distribute(parts):
        if parts is None:
            return None
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts[ctx.replica_id_in_sync_group])
        )

    result = strategy.run(fn, args=tuple(distribute(a) for a in arrays))
    return tf.nest.map_structure(
        lambda r: [t.numpy() for t in strategy.experimental_local_results(r)], result
    )


def moving_statistics(layer):
    return [v for v in layer.non_trainable_variables]


@tensorflow_only
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_synchronized_statistics_equal_global_batch(name, masked, rng):
    strategy = mirrored_strategy()
    with strategy.scope():
        synced = CONFIGS[name](synchronized=True, momentum=0.5)
        synced.build((None, 3, 4))
    single = CONFIGS[name](momentum=0.5)
    single.build((None, 3, 4))
    initial = [rng.uniform(0.5, 2.0, size=w.shape) for w in single.weights]
    single.set_weights(initial)
    synced.set_weights(initial)
    for _ in range(2):  # two steps: the moving averages too
        x = rng.normal(2.0, 3.0, size=(8, 3, 4)).astype("float32")
        mask = rng.uniform(size=(8, 3)) < 0.6 if masked else None
        want = to_numpy(single(x, training=True, mask=mask))
        outputs = on_replicas(
            strategy,
            lambda x, m: synced(x, training=True, mask=m),
            split(x),
            split(mask) if masked else None,
        )
        np.testing.assert_allclose(np.concatenate(outputs), want, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(moving_statistics(synced), moving_statistics(single), strict=True):
            first, second = replica_values(mine)
            np.testing.assert_array_equal(first, second, err_msg=mine.path)
            np.testing.assert_allclose(first, to_numpy(theirs), rtol=1e-5, err_msg=mine.path)


# Global batches split unevenly, with a replica holding no rows, and one
# whose rows are all masked: the statistics stay those of the global batch.
SPLITS = {"1+0": (1, 0), "0+2": (0, 2), "3+2": (3, 2), "3+2 masked out": (3, 2)}


def uneven_batches(sizes, masked, fully_masked, rng):
    rows = sum(sizes)
    x = rng.normal(2.0, 3.0, size=(rows, 3, 4)).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    mask = None
    if masked or fully_masked:
        mask = rng.uniform(size=(rows, 3)) < 0.6
        mask[0, 0] = True  # at least one valid element in the global batch
        if fully_masked:
            mask[sizes[0] :] = False
    return x, w, mask


@tensorflow_only
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("split_name", sorted(SPLITS))
@pytest.mark.parametrize("name", ["p1", "p2", "p3", "pinf", "top3", "top10", "mean_only"])
def test_any_split_of_the_global_batch_is_exact(name, split_name, masked, traced, rng):
    """Outputs, input and weight gradients and moving statistics of the
    synchronized layer equal one device's on the global batch, whatever the
    split: a replica with zero rows, or with every row masked, included.
    Each replica's step eager, or traced into a TensorFlow graph (what `fit`
    runs), where the local extremes, the top-k selection and the gradients
    of `|x - mean|`, of the extremes and of the top-k mean are XLA clusters
    of their own."""
    import tensorflow as tf

    sizes = SPLITS[split_name]
    make = CONFIGS.get(name) or (lambda **kw: tfnorms.LpBatchNormalization(p=3, **kw))
    strategy = mirrored_strategy()
    with strategy.scope():
        synced = make(synchronized=True, momentum=0.5)
        synced.build((None, 3, 4))
    single = make(momentum=0.5)
    single.build((None, 3, 4))
    initial = [rng.uniform(0.5, 2.0, size=v.shape) for v in single.weights]
    single.set_weights(initial)
    synced.set_weights(initial)
    x, w, mask = uneven_batches(sizes, masked, "masked out" in split_name, rng)

    def run(layer, x, w, m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True, mask=m)
            loss = tf.reduce_sum(w * y * y * y)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    want = [g.numpy() for g in run(single, tf.constant(x), tf.constant(w), mask)]

    def parts(a):
        return None if a is None else [a[: sizes[0]], a[sizes[0] :]]

    step = (tf.function if traced else lambda f: f)(lambda *a: run(synced, *a))
    got = on_replicas(strategy, step, parts(x), parts(w), parts(mask))
    for i in (0, 1):  # outputs and input gradients: each replica its rows
        np.testing.assert_allclose(np.concatenate(got[i]), want[i], rtol=1e-4, atol=1e-4)
    for replicas, total in zip(got[2:], want[2:], strict=True):
        assert np.all(np.isfinite(replicas[0])) and np.all(np.isfinite(replicas[1]))
        np.testing.assert_allclose(replicas[0] + replicas[1], total, rtol=1e-4, atol=1e-4)
    for mine, theirs in zip(moving_statistics(synced), moving_statistics(single), strict=True):
        first, second = replica_values(mine)
        np.testing.assert_array_equal(first, second, err_msg=mine.path)
        np.testing.assert_allclose(first, to_numpy(theirs), rtol=1e-5, err_msg=mine.path)


@tensorflow_only
def test_fit_with_a_last_batch_smaller_than_the_replicas_stays_finite(rng):
    """`fit` of 33 samples with batch size 32 on two replicas: the last batch
    splits (1, 0). Every weight stays finite and identical on both replicas.
    (Keras's `fit` scales the uneven last step's loss per replica, so the run
    is not the one-device run; the exactness of the layers for any split is
    the test above.)"""
    x = rng.normal(size=(33, 6)).astype("float32")
    y = rng.normal(size=(33, 1)).astype("float32")
    strategy = mirrored_strategy()
    with strategy.scope():
        model = compile_for_regression(sync_model())
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for variable in model.weights:
        first, second = replica_values(variable)
        assert np.all(np.isfinite(first)), variable.path
        np.testing.assert_array_equal(first, second, err_msg=variable.path)


@tensorflow_only
@pytest.mark.parametrize("name", ["p1", "top3", "mean_only"])
def test_synchronized_low_precision_statistics(name, rng):
    """float16 elementwise work (low_precision=True, mixed_float16): the
    per-replica partial statistics are combined in float32."""
    strategy = mirrored_strategy()
    kwargs = {"momentum": 0.0, "low_precision": True, "dtype": "mixed_float16"}
    with strategy.scope():
        synced = CONFIGS[name](synchronized=True, **kwargs)
        synced.build((None, 3, 4))
    single = CONFIGS[name](**kwargs)
    x = rng.normal(0.0, 500.0, size=(8, 3, 4)).astype("float16")
    mask = rng.uniform(size=(8, 3)) < 0.6
    want = to_numpy(single(x, training=True, mask=mask)).astype("float32")
    outputs = on_replicas(
        strategy, lambda x, m: synced(x, training=True, mask=m), split(x), split(mask)
    )
    got = np.concatenate(outputs).astype("float32")
    assert np.all(np.isfinite(got))
    # float16 rounding of the per-replica means: an ulp of the outputs' scale.
    atol = 2e-2 if name != "mean_only" else 0.25
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=atol)
    for mine, theirs in zip(moving_statistics(synced), moving_statistics(single), strict=True):
        first, second = replica_values(mine)
        np.testing.assert_array_equal(first, second)
        np.testing.assert_allclose(first, to_numpy(theirs), rtol=2e-3, atol=1e-2)


@tensorflow_only
def test_unsynchronized_replicas_use_their_own_statistics(rng):
    strategy = mirrored_strategy()
    with strategy.scope():
        local = tfnorms.L1BatchNormalization(momentum=0.0)
        local.build((None, 4))
    x = rng.normal(size=(8, 4)).astype("float32")
    outputs = on_replicas(strategy, lambda x: local(x, training=True), split(x))
    for part, out in zip(split(x), outputs, strict=True):
        reference = tfnorms.L1BatchNormalization()
        np.testing.assert_allclose(out, to_numpy(reference(part, training=True)), atol=1e-5)


@tensorflow_only
@pytest.mark.parametrize("name", ["p1", "p2", "top3", "mean_only"])
def test_synchronized_gradients_equal_global_batch(name, rng):
    """Each replica's input gradient is its slice of the one-device gradient
    of the summed loss, and the replicas' gamma/beta gradients add up to the
    one-device ones (the collectives' backward passes do the coupling)."""
    import tensorflow as tf

    strategy = mirrored_strategy()
    with strategy.scope():
        synced = CONFIGS[name](synchronized=True)
        synced.build((None, 3, 4))
    single = CONFIGS[name]()
    single.build((None, 3, 4))
    initial = [rng.uniform(0.5, 2.0, size=w.shape) for w in single.weights]
    single.set_weights(initial)
    synced.set_weights(initial)
    x = rng.normal(1.0, 2.0, size=(8, 3, 4)).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    mask = rng.uniform(size=(8, 3)) < 0.7

    def gradients(layer, x, w, m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True, mask=m)
            loss = tf.reduce_sum(w * y * y * y)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    want = [g.numpy() for g in gradients(single, tf.constant(x), tf.constant(w), mask)]
    got = on_replicas(strategy, lambda *a: gradients(synced, *a), split(x), split(w), split(mask))
    np.testing.assert_allclose(np.concatenate(got[0]), want[0], rtol=1e-4, atol=1e-4)
    for replicas, total in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(replicas[0] + replicas[1], total, rtol=1e-4, atol=1e-4)


def counted_all_reduces(monkeypatch):
    """A list that grows by one at each `ReplicaContext.all_reduce` call
    (the collectives' gradients call it too)."""
    import tensorflow as tf

    calls = []
    original = tf.distribute.ReplicaContext.all_reduce

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
    return calls


@tensorflow_only
def test_one_collective_per_statistics_stage(rng, monkeypatch):
    """Stacked reductions per replica and training call: two all-reduces for
    LpBatchNormalization (mean; scale), one for p=2 (the replicas' moments
    gathered), one for the maximum (mean, max and min together) and for
    MeanOnlyBatchNormalization, where Keras's synchronized
    BatchNormalization issues three."""

    calls = counted_all_reduces(monkeypatch)
    strategy = mirrored_strategy()
    x = rng.normal(size=(8, 4)).astype("float32")
    counts = {}
    for name, make in {
        "lp1": lambda: tfnorms.LpBatchNormalization(p=1, synchronized=True),
        "lp2": lambda: tfnorms.LpBatchNormalization(p=2, synchronized=True),
        "max": lambda: tfnorms.LinfBatchNormalization(synchronized=True),
        "top3": lambda: tfnorms.LinfBatchNormalization(top_k=3, synchronized=True),
        "mean_only": lambda: tfnorms.MeanOnlyBatchNormalization(synchronized=True),
        "keras": lambda: keras.layers.BatchNormalization(synchronized=True),
    }.items():
        with strategy.scope():
            layer = make()
            layer.build((None, 4))
        calls.clear()
        on_replicas(strategy, lambda x, layer=layer: layer(x, training=True), split(x))
        counts[name] = len(calls) // strategy.num_replicas_in_sync
    expected = {"lp1": 2, "lp2": 1, "max": 1, "top3": 2, "mean_only": 1, "keras": 3}
    assert counts == expected, counts


@tensorflow_only
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_synchronized_top_k_gradient_shares_ties_as_one_device(masked, rng):
    """Where many deviations tie at the k-th largest, more of them on one
    replica than k, the replicas' input gradients are one device's, which
    shares what the entries above the tie leave among all tied ones: the
    replicas must count ties they did not gather."""
    import tensorflow as tf

    strategy = mirrored_strategy()
    with strategy.scope():
        synced = CONFIGS["top3"](synchronized=True)
        synced.build((None, 3, 4))
    single = CONFIGS["top3"]()
    single.build((None, 3, 4))
    # Per channel: +-3 once each and +-1 eleven times each, scaled per
    # channel (mean 0 exactly); |x - mean| ties at the 3rd largest 22 times.
    column = np.array([3.0, -3.0] + [1.0, -1.0] * 11)
    x = np.stack([rng.permutation(column) * (c + 1) for c in range(4)], axis=-1)
    x = x.reshape(8, 3, 4).astype("float32")
    w = rng.normal(size=x.shape).astype("float32")
    mask = np.ones((8, 3), bool)
    if masked:  # mask a pair of tied entries of opposite signs: the mean stays 0
        pair = [np.flatnonzero(np.abs(x[..., 0]) == 1)[0]]
        pair.append(np.flatnonzero(x[..., 0].reshape(-1) == -x[..., 0].reshape(-1)[pair[0]])[0])
        x[..., 1:] = np.abs(x[..., :1]) * np.sign(x[..., 1:]) * np.arange(2, 5)
        mask.reshape(-1)[pair] = False

    def gradients(layer, x, w, m):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(w * layer(x, training=True, mask=m) ** 3)
        return tape.gradient(loss, x)

    want = gradients(single, tf.constant(x), tf.constant(w), mask).numpy()
    got = on_replicas(strategy, lambda *a: gradients(synced, *a), split(x), split(w), split(mask))
    np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-4, atol=1e-5)


@tensorflow_only
def test_synchronized_top_k_backward_makes_one_collective(rng, monkeypatch):
    """The top-k statistics' backward pass sums the replicas' upstream
    gradients in one all-reduce (autodiff of the two forward collectives
    would make two)."""
    import tensorflow as tf

    calls = counted_all_reduces(monkeypatch)
    strategy = mirrored_strategy()
    with strategy.scope():
        layer = tfnorms.LinfBatchNormalization(top_k=3, synchronized=True)
        layer.build((None, 4))

    def forward(x):
        return layer(x, training=True)

    def forward_and_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) ** 3)
        return tape.gradient(loss, x)

    x = rng.normal(size=(8, 4)).astype("float32")
    counts = {}
    for name, step in (("forward", forward), ("both", forward_and_backward)):
        calls.clear()
        on_replicas(strategy, step, split(x))
        counts[name] = len(calls) // strategy.num_replicas_in_sync
    counts["backward"] = counts.pop("both") - counts["forward"]
    assert counts == {"forward": 2, "backward": 1}, counts


def sync_model():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1, synchronized=True),
            keras.layers.Dense(8, activation="tanh"),
            tfnorms.LinfBatchNormalization(top_k=3, synchronized=True),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=2, synchronized=True),
            keras.layers.Dense(8),
            tfnorms.MeanOnlyBatchNormalization(synchronized=True),
            keras.layers.Dense(1),
        ]
    )


@tensorflow_only
def test_mirrored_fit_matches_one_device(rng):
    """Keras `fit` with synchronized batch norms under MirroredStrategy ends
    where one device on the global batch ends: weights and moving statistics,
    identical on both replicas."""
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (np.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]).astype("float32")
    assert_mirrored_matches_single(sync_model, x, y, steps=3, atol=1e-4)


# ------------------------------------------------- MultiWorkerMirroredStrategy
def one_device_run(worker, masked, directory):
    """Initial weights saved for the workers; the final weights of the same
    training on one device on the global batches."""
    import tensorflow as tf

    name = "masked" if masked else "unmasked"
    model = worker.make_model(masked)
    initial = model.get_weights()
    np.savez(directory / f"initial_{name}.npz", **{f"w{i}": w for i, w in enumerate(initial)})
    optimizer = keras.optimizers.SGD(worker.LEARNING_RATE)
    for x, y in worker.global_batches():
        with tf.GradientTape() as tape:
            loss = worker.step_loss(model, tf.constant(x), tf.constant(y), float(len(x)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
    return model, initial


@tensorflow_only
def test_multiworker_two_processes_match_one_device(tmp_path):
    """Two local worker processes (one replica each) train with synchronized
    p=1, top-k, max, p=2 and mean-only batch norms, with and without a mask,
    the last global batch a single row (worker 1 holds none): both end with
    identical weights and moving statistics, equal to one device's on the
    global batches."""
    import multiworker_worker as worker

    references = {masked: one_device_run(worker, masked, tmp_path) for masked in (True, False)}

    env = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    script = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "support",
        "multiworker_worker.py",
    )
    ports = free_ports(2)
    command = [sys.executable, script, "{index}", str(ports[0]), str(ports[1]), str(tmp_path)]
    run_together([([part.format(index=i) for part in command], env) for i in range(2)])

    for masked, (model, initial) in references.items():
        name = "masked" if masked else "unmasked"
        results = [np.load(tmp_path / f"worker_{i}_{name}.npz") for i in range(2)]
        assert int(results[0]["replicas"]) == 2
        for i, expected in enumerate(model.get_weights()):
            first, second = (r[f"w{i}"] for r in results)
            path = f"{name}: {model.weights[i].path}"
            np.testing.assert_array_equal(first, second, err_msg=path)  # identical replicas
            np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5, err_msg=path)
        # The moving statistics did move (the check is not vacuous).
        moving = [i for i, w in enumerate(model.weights) if "moving" in w.path]
        assert all(not np.allclose(model.get_weights()[i], initial[i]) for i in moving)


# -------------------------------------------------------------------- JAX
_JAX_DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import jax
    import keras
    import tfnorms

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")

    def make():
        model = keras.Sequential([
            keras.Input((6,)),
            keras.layers.Dense(8),
            tfnorms.LpBatchNormalization(p=1, synchronized=True, momentum=0.5),
            keras.layers.Dense(8),
            tfnorms.LinfBatchNormalization(top_k=3, synchronized=True, momentum=0.5),
            keras.layers.Dense(1),
        ])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        return model

    keras.utils.set_random_seed(1)
    single = make()
    initial = single.get_weights()
    single.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    sharded = make()
    sharded.set_weights(initial)
    sharded.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    distribution = keras.distribution.distribution()
    batch = keras.distribution.distribute_tensor(x, distribution.get_data_layout(x.shape))
    diffs = [float(np.max(np.abs(a - b))) for a, b in
             zip(single.get_weights(), sharded.get_weights())]
    print(json.dumps({"diffs": diffs, "data": str(batch.sharding.spec),
                      "shards": len(batch.addressable_shards)}))
    """
)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's data parallelism")
def test_jax_data_parallel_step_uses_global_batch_statistics():
    """On JAX, synchronized=True needs no collective of ours: a jitted step
    over a batch sharded across two (host) devices with
    `keras.distribution.DataParallel` reduces over the global batch, so the
    model trains exactly as on one device."""
    report = run_on_two_jax_devices(_JAX_DATA_PARALLEL)
    assert report["shards"] == 2 and "batch" in report["data"], report  # really sharded
    assert max(report["diffs"]) < 1e-5, report


_JAX_SHARDED_TOP_K = textwrap.dedent(
    """
    import json
    import numpy as np
    import jax
    import keras
    from jax.sharding import NamedSharding, PartitionSpec
    from keras import ops
    from tfnorms._math.top_k import top_k_deviation_mean

    rng = np.random.default_rng(0)
    # (shape, kept axis, k, ties, rows masked out): shards of 8 rows; blocks
    # within each share; channels first; ties; fewer rows per device than k;
    # one device's share wholly masked; a batch the devices do not divide.
    CASES = [
        ((16, 8), -1, 3, False, ()),
        ((8, 5, 5, 6), -1, 10, False, ()),
        ((8, 6, 3, 3), 1, 4, False, ()),
        ((16, 4), -1, 5, True, ()),
        ((4, 3), -1, 3, False, ()),
        ((8, 4), -1, 3, False, (0, 1, 2, 3)),
        ((5, 3), -1, 2, False, ()),
    ]

    def statistic(x, mean, k, axis, mask, weights):
        value = top_k_deviation_mean(x, mean, k, axis, mask)
        return ops.sum(value * weights), value

    def numpy_value(x, mean, k, axis, mask):
        deviation = np.where(mask, np.abs(x - mean), -1.0)
        columns = np.moveaxis(deviation, axis, -1).reshape(-1, x.shape[axis])
        return [np.sort(c[c >= 0])[::-1][:k].mean() for c in columns.T]

    def run(case, sharded):
        shape, axis, k, ties, masked_rows = case
        x = rng.normal(size=shape)
        if ties:
            x = np.round(x * 2) / 2
        kept = [1] * len(shape)
        kept[axis] = shape[axis]
        mean = rng.normal(size=kept) * 0.1
        mask = np.ones((shape[0],) + (1,) * (len(shape) - 1), bool)
        mask[list(masked_rows)] = False
        weights = rng.uniform(1.0, 2.0, size=shape[axis])
        args = [a.astype("float32") for a in (x, mean, weights)]
        mask_arg = mask if masked_rows else None
        if sharded and shape[0] % 2 == 0:
            mesh = keras.distribution.distribution().device_mesh.backend_mesh
            batch = NamedSharding(mesh, PartitionSpec("batch"))
            args[0] = jax.device_put(args[0], batch)
            if mask_arg is not None:
                mask_arg = jax.device_put(mask_arg, batch)

        def f(x, mean, weights, mask):
            return statistic(x, mean, k, axis, mask, weights)

        grad = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
        (_, value), (grad_x, grad_mean) = grad(*args, mask_arg)
        jaxpr = str(jax.make_jaxpr(f)(*args, mask_arg))
        return {
            "value": np.asarray(value).tolist(),
            "numpy": [float(v) for v in numpy_value(x, mean, k, axis, mask)],
            "grad_x": np.asarray(grad_x).ravel().tolist(),
            "grad_mean": np.asarray(grad_mean).ravel().tolist(),
            "per_device": "shard_map" in jaxpr,
        }

    single = []
    for case in CASES:
        state = rng.bit_generator.state
        single.append(run(case, sharded=False))
        rng.bit_generator.state = state  # the same data for both
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices()))
        single[-1]["sharded"] = run(case, sharded=True)
        keras.distribution.set_distribution(None)
        rng.bit_generator.state = state
        run(case, sharded=False)  # keep the generator in step
    print(json.dumps(single))
    """
)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's data parallelism")
def test_top_k_statistic_over_a_jax_sharded_batch_selects_per_device():
    """Under `DataParallel` over two host devices, the top-k statistic of a
    batch sharded along its first axis selects each device's k largest and
    merges them (a shard_map) wherever the devices divide the batch, and
    its value and gradients equal one device's, the value also NumPy's:
    blocks within a share, channels first, ties, fewer rows per device
    than k, a wholly masked share; a batch of 5 takes the global path."""
    report = run_on_two_jax_devices(_JAX_SHARDED_TOP_K)
    for index, case in enumerate(report):
        sharded = case["sharded"]
        assert sharded["per_device"] == (index != len(report) - 1), (index, sharded)
        assert not case["per_device"], index  # no distribution, no shard_map
        np.testing.assert_allclose(case["value"], case["numpy"], rtol=1e-5, err_msg=str(index))
        for key in ("value", "grad_x", "grad_mean"):
            np.testing.assert_allclose(
                sharded[key], case[key], rtol=1e-5, atol=1e-6, err_msg=f"{index} {key}"
            )


def run_on_two_jax_devices(script):
    """The JSON report that `script` prints last, run on the JAX backend
    with two host devices (a process of its own: the device count is fixed
    when JAX starts); the tests' support modules are importable."""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    support = os.path.join(REPO_ROOT, "tests", "support")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, support, env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------ kernel-free weight norm
@tensorflow_only
def test_kernel_free_weight_norm_on_mirrored_replicas(rng, monkeypatch):
    """Each replica's XLA-compiled step takes the kernel-free path; the
    replicas' outputs, and their gradients summed, equal one device's
    kernel-forming outputs and gradients on the global batch."""
    import tensorflow as tf

    from tfnorms.layers import kernel_free

    x = rng.normal(size=(8, 32)).astype("float32")
    y = rng.normal(size=(8, 4)).astype("float32")
    strategy = mirrored_strategy()
    with strategy.scope():
        model = kernel_free_model()
    reference = kernel_free_model()
    reference.set_weights(model.get_weights())

    def step(model, x, y):
        with tf.GradientTape() as tape:
            outputs = model(x)
            loss = tf.reduce_sum(tf.square(outputs - y))
        return outputs, tape.gradient(loss, model.trainable_variables)

    taken = []
    real_call = kernel_free.call
    monkeypatch.setattr(
        kernel_free, "call", lambda layer, *a: taken.append(layer.name) or real_call(layer, *a)
    )

    def replica_step(x, y):
        # One XLA function per replica: a shared one would read the second
        # replica's variables from the first device.
        return tf.function(lambda x, y: step(model, x, y), jit_compile=True)(x, y)

    outputs, grads = on_replicas(strategy, replica_step, split(x), split(y))
    assert len(taken) == 4 and len(set(taken)) == 2, taken  # both wrappers, on each replica
    taken.clear()
    expected_outputs, expected_grads = step(reference, tf.constant(x), tf.constant(y))
    assert not taken  # eager: the kernel-forming path
    np.testing.assert_allclose(np.concatenate(outputs), expected_outputs, rtol=1e-5, atol=1e-5)
    for variable, per_replica, expected in zip(
        model.trainable_variables, grads, expected_grads, strict=True
    ):
        np.testing.assert_allclose(
            sum(per_replica), expected, rtol=1e-4, atol=1e-5, err_msg=variable.path
        )


_JAX_KERNEL_FREE = textwrap.dedent(
    """
    import json
    import numpy as np
    import jax
    import keras
    from layer_checks import kernel_free_model
    from tfnorms.layers import kernel_free

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32)).astype("float32")
    y = rng.normal(size=(16, 4)).astype("float32")
    taken = []
    real_call, real_pays = kernel_free.call, kernel_free.pays
    kernel_free.call = lambda layer, *a: taken.append(layer.name) or real_call(layer, *a)

    def trained():
        keras.utils.set_random_seed(1)
        model = kernel_free_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=True)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model

    kernel_free.pays = lambda layer, x: False
    forming = trained()
    kernel_free.pays = real_pays
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    sharded = trained()
    print(json.dumps({
        "taken": sorted(set(taken)),
        "diffs": [float(np.max(np.abs(a - b)))
                  for a, b in zip(forming.get_weights(), sharded.get_weights())],
    }))
    """
)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's data parallelism")
def test_kernel_free_weight_norm_under_jax_data_parallel():
    """A jitted training step over a batch sharded across two host devices
    takes the kernel-free path (16 rows against fan-ins of 32 and 16) and
    trains as one device does with the kernel formed."""
    report = run_on_two_jax_devices(_JAX_KERNEL_FREE)
    assert len(report["taken"]) == 2, report  # both wrappers
    assert max(report["diffs"]) < 1e-5, report
