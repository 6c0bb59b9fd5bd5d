"""The benchmarks' shared pieces: the alternating timing harness (timing.py),
bench.py's ResNet-20 (the example's definition, with the candidates' layers)
and throughput.py on a tiny ResNet."""

import os
import sys

import keras
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench  # noqa: E402
import candidates  # noqa: E402
import timing  # noqa: E402

import tfnorms  # noqa: E402


def test_alternate_warms_up_then_reverses_the_order_every_other_round():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = timing.alternate(runners, 3, warmup=1, calls=2)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up
    timed = calls[3:]
    assert timed == ["a", "a", "b", "b", "c", "c"] + ["c", "c", "b", "b", "a", "a"] + [
        "a", "a", "b", "b", "c", "c"
    ]  # fmt: skip
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(v >= 0 for values in times.values() for v in values)
    assert timing.medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}


def _layer_kinds(model):
    return sorted(type(layer).__name__ for layer in model.layers)


@pytest.mark.parametrize("candidate", ["batch norm", "weight norm"])
def test_bench_resnet20_is_the_papers_network_and_strips(candidate):
    if candidate == "batch norm":
        model = candidates.resnet20(norm=lambda: tfnorms.LpBatchNormalization(p=1))
        assert _layer_kinds(model).count("LpBatchNormalization") == 19
    else:
        model = candidates.resnet20(wrap=tfnorms.CenteredWeightNorm)
        assert _layer_kinds(model).count("CenteredWeightNorm") == 20  # 19 convs, classifier
    inner = [getattr(layer, "layer", layer) for layer in model.layers]
    convs = [layer for layer in inner if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 19 and not any(conv.use_bias for conv in convs)
    assert model.output.shape == (None, 10)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    stripped = tfnorms.strip(model)
    np.testing.assert_allclose(
        stripped.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4
    )
    assert _layer_kinds(stripped).count("ZeroPadding3D") == 2  # option A, built-in layers


@pytest.mark.slow  # trains small ResNets; the TensorFlow pass runs it
def test_throughput_times_each_candidate(capsys):
    import throughput

    results = throughput.main(
        ["--depth", "8", "--width", "0.25", "--batch-size", "16", "--steps", "1",
         "--rounds", "2", "--only", "keras", "l1"]
    )  # fmt: skip
    assert set(results["images_per_second"]) == {"keras BatchNormalization", "L1 BN"}
    assert all(v > 0 for v in results["images_per_second"].values())
    assert "L1 BN" in capsys.readouterr().out


class _Count(keras.layers.Layer):
    """Counts the examples each replica trains on (the replicas' mean)."""

    def build(self, input_shape):
        self.seen = self.add_weight(
            shape=(), initializer="zeros", trainable=False, aggregation="mean", name="seen"
        )

    def call(self, x, training=False):
        if training:
            self.seen.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
        return x


@pytest.mark.tensorflow_only  # tf.distribute, on the conftest's two logical CPUs
def test_a_mirrored_training_step_splits_the_batch_across_the_replicas():
    """Keras's `train_on_batch` hands each replica the whole batch; the
    synchronized rows' step trains on the global batch once."""
    from layer_checks import mirrored_strategy

    # The one strategy of the test process: a second MirroredStrategy would
    # reuse its collective keys and collide with the other tests' collectives.
    strategy = mirrored_strategy()
    with strategy.scope():
        model = bench.compile_model(
            keras.Sequential([keras.Input((3,)), _Count(), keras.layers.Dense(10)]), jit=False
        )
        x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
        train, _, _ = timing.keras_runners(model, x, np.zeros(8, "int32"))
        counter = model.layers[0].seen
        before = float(counter.numpy())
        train()
    assert before == 4  # the building call: one replica's share on each
    assert float(counter.numpy()) - before == 4  # not 8, the whole batch


@pytest.mark.tensorflow_only
def test_tf_step_bytes_reads_the_requested_peak():
    """Two float32 tensors of 700 x 700 (1.96 MB each) are live together at
    the step's peak; the allocator's chunks would round each up."""
    import tensorflow as tf

    @tf.function
    def step():
        a = tf.random.normal((700, 700))
        b = tf.random.normal((700, 700))
        return tf.reduce_sum(a * b)

    step()  # traced outside the measured steps
    size = 700 * 700 * 4
    measured = timing.tf_step_bytes(lambda: step().numpy(), repeats=2)
    assert 2 * size <= measured < 3 * size


def test_peak_of_changes_is_the_largest_running_total_in_time_order():
    changes = [(30, -10), (10, 10), (20, 5), (40, 20), (50, -5)]
    assert timing.peak_of_changes(changes) == 25  # 10 + 5, then 5 + 20 after the free
    # A free and an allocation at the same time: the free first.
    assert timing.peak_of_changes([(0, 8), (5, 8), (5, -8)]) == 8
    assert timing.peak_of_changes([(0, -4), (1, 3)]) == 0  # frees of what was live before


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="keras.distribution on JAX")
def test_jax_batches_are_sharded_under_data_parallel():
    import jax

    x = np.zeros((4, 3), "float32")
    assert timing.placed(x).sharding.is_fully_replicated  # one device, no distribution
    with keras.distribution.DataParallel(devices=jax.devices()).scope():
        spec = timing.placed(x).sharding.spec
    assert tuple(spec)[0] == "batch"
