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
    both return NumPy values, so they wait for the result."""
    train_step = (lambda: model.train_on_batch(x, y)) if train else None
    return train_step, (lambda: model.predict_on_batch(x)), None


def jax_runners(model, x, y, train=True):
    """`(train, infer, step_bytes)` for a compiled model on JAX.

    `train()` runs one jit-compiled training step (`jax_train_step`) and
    carries the updated state to the next call; `infer()` runs the compiled
    forward pass. `step_bytes` is what XLA plans for the training step
    (arguments, outputs and temporaries), from the same compiled executable,
    so each candidate is compiled once for training.
    """
    import jax

    x, y = jax.numpy.asarray(x), jax.numpy.asarray(y)
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
