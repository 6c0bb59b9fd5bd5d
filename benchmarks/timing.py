"""The benchmarks' timing harness, and the training and inference steps they time.

Every candidate is built in one process and warmed up (tracing and
compilation happen outside the timed rounds); then each round times every
candidate once, in the opposite order every other round, so that drifts of
the machine (other jobs, clock changes) hit all of them alike and no
candidate always runs right after the same other one. Report the median
round: single rounds catch interruptions.
"""

from __future__ import annotations

import statistics
import time


def alternate(runners, rounds, *, warmup=0, calls=1):
    """`{name: [seconds per call, one value per round]}` for `runners`
    (`{name: function of no arguments}` that returns only when its work is
    done); each round calls every runner `calls` times in a row, after
    `warmup` untimed calls of each."""
    order = list(runners)
    for _ in range(warmup):
        for name in order:
            runners[name]()
    times = {name: [] for name in order}
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            run = runners[name]
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def medians(times):
    return {name: statistics.median(values) for name, values in times.items()}


# ---------------------------------------------------------- what is timed
def keras_runners(model, x, y, train=True):
    """`(train, infer, None)` through `train_on_batch`/`predict_on_batch`
    (TensorFlow: a `tf.function`, XLA-compiled with `jit_compile=True`);
    both return host values, so they wait for the result. A model of a
    `tf.distribute` strategy with several replicas trains on the batch split
    across them (`mirrored_train_step`)."""
    train_step = None
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only
    if train and strategy is not None and _multi_worker(strategy):
        train_step = custom_train_step(model, x, y)
    elif train and strategy is not None and strategy.num_replicas_in_sync > 1:
        train_step = mirrored_train_step(model, x, y)
    elif train:
        train_step = lambda: model.train_on_batch(x, y)  # noqa: E731
    return train_step, (lambda: model.predict_on_batch(x)), None


def mirrored_train_step(model, x, y):
    """`train_on_batch` with `x` and `y` split across the strategy's replicas
    (placed once): Keras's own hands every replica the whole batch.

    The first call, on one replica's share, builds the metrics and the
    optimizer as `train_on_batch` does; then each step runs the compiled
    train function on the per-replica values, as `fit` does.
    """
    import tensorflow as tf

    strategy = model.distribute_strategy
    share = len(x) // strategy.num_replicas_in_sync

    def split(array):
        def value(context):
            start = context.replica_id_in_sync_group * share
            return tf.constant(array[start : start + share])

        return strategy.experimental_distribute_values_from_function(value)

    model.train_on_batch(x[:share], y[:share])
    batch = (split(x), split(y), None)

    def train_step():
        model.reset_metrics()
        logs = model.train_function(iter([batch]))
        return {name: float(value) for name, value in logs.items()}

    return train_step


def _multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def custom_train_step(model, x, y):
    """A training step under MultiWorkerMirroredStrategy, where Keras 3's
    `fit` and `train_function` do not work: `strategy.run` of a
    `tf.GradientTape` step and `optimizer.apply`, each worker's replica on
    its share of `x` and `y` (the global batch), placed once."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    resolver = strategy.cluster_resolver
    share = len(x) // resolver.cluster_spec().num_tasks("worker")  # one replica each
    rows = slice(resolver.task_id * share, (resolver.task_id + 1) * share)
    batch = [
        strategy.experimental_distribute_values_from_function(lambda _, a=a: tf.constant(a[rows]))
        for a in (x, y)
    ]
    model.optimizer.build(model.trainable_variables)
    loss_fn = model.loss

    @tf.function
    def step(x, y):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                # Keras's loss divides by the replicas itself in a replica
                # context: the replicas' gradients add up to the global mean's.
                loss = loss_fn(y, model(x, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply(grads, model.trainable_variables)
            return loss

        losses = strategy.run(replica_step, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return lambda: float(step(*batch))


def jax_runners(model, x, y, train=True):
    """`(train, infer, step_bytes)` for a compiled model on JAX.

    `train()` runs one jit-compiled training step (`jax_train_step`) and
    carries the updated state to the next call; `infer()` runs the compiled
    forward pass. `step_bytes` is what XLA plans for the training step
    (arguments, outputs and temporaries), from the same compiled executable,
    so each candidate is compiled once for training.
    """
    import jax

    x, y = placed(x), placed(y)
    state = model_state(model)

    def forward(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=False)[0]

    predict = jax.jit(forward)

    def infer():
        return jax.block_until_ready(predict(state[0], state[1], x))

    if not train:
        return None, infer, None
    compiled = jax_train_step(model, state, x, y)

    def train_step():
        loss, *state[:] = compiled(*state, x, y)
        return jax.block_until_ready(loss)

    return train_step, infer, planned_bytes(compiled)


def placed(array):
    """`array` on the device: sharded along the batch under a Keras
    distribution (`DataParallel`), so that the jitted step runs data parallel
    and its batch statistics reduce over the global batch."""
    import jax
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        return jax.numpy.asarray(array)
    return keras.distribution.distribute_tensor(array, distribution.get_data_layout(array.shape))


def model_state(model):
    """`[trainable, non-trainable, optimizer variables]` as JAX arrays (the
    optimizer built first)."""
    model.optimizer.build(model.trainable_variables)
    return [
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in model.optimizer.variables],
    ]


def jax_train_step(model, state, x, y):
    """What `fit` compiles on JAX: forward, backward and the optimizer update
    through Keras's stateless API, `(*state, x, y) -> (loss, *state)`,
    compiled for these arguments."""
    import jax
    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = model.optimizer

    def step(trainable, non_trainable, opt_vars, x, y):
        def loss_of(trainable):
            logits, non_trainable_new = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return loss_fn(y, logits), non_trainable_new

        (loss, non_trainable_new), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, trainable, non_trainable_new, opt_vars

    return jax.jit(step).lower(*state, x, y).compile()


def planned_bytes(compiled):
    """XLA's planned bytes (arguments, outputs, temporaries) of a compiled
    executable; None where the platform does not say."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )


def tf_step_bytes(train_step, repeats=3):
    """Peak bytes requested from TensorFlow's allocator during one
    `train_step()` above what was live before it, from the profiler's
    memory events; the median of `repeats` traced steps, or None where the
    trace holds no memory events.

    Requested bytes, not the allocator's own peak: its chunks can be much
    larger than the request they serve (a free 32 MiB chunk is not split
    for a 16.9 MB XLA buffer), so its peak moved by whole chunks with the
    order of earlier allocations (docs/performance.md, "Memory on
    TensorFlow"). A profiler session leaves the CPU allocator counting for
    the rest of the process, which costs every allocation a lock: read this
    after the timing, in a process that times nothing more. Memory
    allocated outside TensorFlow's allocator (Python objects, libraries'
    own buffers) is not counted.
    """
    import tempfile

    import tensorflow as tf

    peaks = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as logdir:
            tf.profiler.experimental.start(logdir)
            try:
                train_step()
            finally:
                tf.profiler.experimental.stop()
            changes = traced_memory_changes(logdir, _profiled_plane(tf))
        if not changes:
            return None
        peaks.append(peak_of_changes(changes))
    return int(statistics.median(peaks))


def _profiled_plane(tf):
    """The profiler plane of the device TensorFlow computes on."""
    return "/device:GPU:0" if tf.config.list_logical_devices("GPU") else "/host:CPU"


def traced_memory_changes(logdir, plane_name):
    """`[(picoseconds, bytes), ...]`: every allocation (+ its requested
    bytes) and deallocation (-) that a profiler trace in `logdir` holds for
    the plane `plane_name`."""
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    signs = {"MemoryAllocation": 1, "MemoryDeallocation": -1}
    changes = []
    for path in glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            if plane.name != plane_name:
                continue
            events = {key: meta.name for key, meta in plane.event_metadata.items()}
            stats = {key: meta.name for key, meta in plane.stat_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    sign = signs.get(events.get(event.metadata_id))
                    if sign is None:
                        continue
                    requested = next(
                        s.int64_value or s.uint64_value
                        for s in event.stats
                        if stats.get(s.metadata_id) == "requested_bytes"
                    )
                    changes.append((line.timestamp_ns * 1000 + event.offset_ps, sign * requested))
    return changes


def peak_of_changes(changes):
    """The largest running total of `(time, bytes)` changes taken in time
    order from 0 (frees first among changes at the same time)."""
    total = peak = 0
    for _, change in sorted(changes):
        total += change
        peak = max(peak, total)
    return peak
