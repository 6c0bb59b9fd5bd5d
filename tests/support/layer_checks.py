"""The project's own layer-test helper (not keras.src.testing).

Each `assert_*` function checks one duty of every public class
(docs/design.md, "Duties of every public class") for any layer or model
factory, so every test module reuses the same checks: config round trip,
`.keras` save/load in a fresh process, SavedModel export, training (`fit`
lowers the loss), MirroredStrategy equivalence, mixed precision and
`jit_compile`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def is_tensorflow():
    return keras.backend.backend() == "tensorflow"


def is_torch():
    return keras.backend.backend() == "torch"


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def torch_input(x):
    """A NumPy array as a torch tensor of its dtype that records gradients."""
    import torch

    return torch.tensor(np.asarray(x), requires_grad=True)


def torch_gradients(loss, tensors):
    """The gradients of `loss` with respect to torch `tensors` (zeros for one
    the loss does not depend on), as NumPy arrays."""
    import torch

    grads = torch.autograd.grad(loss, list(tensors), allow_unused=True)
    return [
        to_numpy(torch.zeros_like(t) if g is None else g)
        for t, g in zip(tensors, grads, strict=True)
    ]


# ---------------------------------------------------------------- gradients
def loss_and_gradients(layer, x, loss_fn, variables=None):
    """Loss and its gradients with respect to `variables` (default: the
    layer's trainable variables), on any backend, as NumPy arrays."""
    variables = list(layer.trainable_variables if variables is None else variables)
    if is_tensorflow():
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(layer(x, training=True))
        grads = tape.gradient(loss, [v.value for v in variables])
        return to_numpy(loss), [to_numpy(g) for g in grads]
    if is_torch():
        loss = loss_fn(layer(x, training=True))
        return to_numpy(loss), torch_gradients(loss, [v.value for v in variables])
    import jax

    trainable = list(layer.trainable_variables)
    non_trainable = list(layer.non_trainable_variables)
    positions = [next(i for i, t in enumerate(trainable) if t is v) for v in variables]

    def compute(values):
        out, _ = layer.stateless_call(values, [v.value for v in non_trainable], x, training=True)
        return loss_fn(out)

    loss, grads = jax.value_and_grad(compute)([v.value for v in trainable])
    return to_numpy(loss), [to_numpy(grads[i]) for i in positions]


def loss_and_input_gradient(layer, x, loss_fn, training=True):
    """Loss and its gradient with respect to the input `x` (a NumPy array), on
    any backend. On JAX the layer runs through `stateless_call`, so its
    state updates (moving statistics) are not applied."""
    if is_tensorflow():
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(layer(x, training=training))
        return to_numpy(loss), to_numpy(tape.gradient(loss, x))
    if is_torch():
        x = torch_input(x)
        loss = loss_fn(layer(x, training=training))
        return to_numpy(loss), torch_gradients(loss, [x])[0]
    import jax

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def compute(inputs):
        out, _ = layer.stateless_call(trainable, non_trainable, inputs, training=training)
        return loss_fn(out)

    loss, grad = jax.value_and_grad(compute)(jax.numpy.asarray(x))
    return to_numpy(loss), to_numpy(grad)


def call_gradients(layer, x, loss_fn, **call_kwargs):
    """Loss and its gradients with respect to the input `x` (a NumPy array)
    and to the layer's trainable variables, calling `layer(x, **call_kwargs)`
    on any backend: pass `training` or `mask` only to layers that take
    them (Keras's layer and group norms take neither). On JAX the layer runs
    through `stateless_call`, so its state updates are not applied."""
    if is_tensorflow():
        import tensorflow as tf

        x = tf.constant(x)
        variables = [v.value for v in layer.trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = loss_fn(layer(x, **call_kwargs))
        dx, *grads = tape.gradient(loss, [x, *variables])
        return to_numpy(loss), to_numpy(dx), [to_numpy(g) for g in grads]
    if is_torch():
        x = torch_input(x)
        loss = loss_fn(layer(x, **call_kwargs))
        dx, *grads = torch_gradients(loss, [x, *(v.value for v in layer.trainable_variables)])
        return to_numpy(loss), dx, grads
    import jax

    non_trainable = [v.value for v in layer.non_trainable_variables]

    def compute(inputs, values):
        out, _ = layer.stateless_call(values, non_trainable, inputs, **call_kwargs)
        return loss_fn(out)

    trainable = [v.value for v in layer.trainable_variables]
    loss, (dx, grads) = jax.value_and_grad(compute, argnums=(0, 1))(jax.numpy.asarray(x), trainable)
    return to_numpy(loss), to_numpy(dx), [to_numpy(g) for g in grads]


def value_and_gradients(function, *arrays):
    """`function(*tensors)` (a scalar) and its gradients with respect to each
    of the NumPy `arrays` (as tensors of their dtypes), on any backend."""
    if is_tensorflow():
        import tensorflow as tf

        tensors = [tf.constant(a) for a in arrays]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = function(*tensors)
        return to_numpy(value), [to_numpy(g) for g in tape.gradient(value, tensors)]
    if is_torch():
        tensors = [torch_input(a) for a in arrays]
        value = function(*tensors)
        return to_numpy(value), torch_gradients(value, tensors)
    import jax

    tensors = [jax.numpy.asarray(a) for a in arrays]
    value, grads = jax.value_and_grad(function, argnums=tuple(range(len(arrays))))(*tensors)
    return to_numpy(value), [to_numpy(g) for g in grads]


def finite_difference_gradient(layer, x, loss_fn, variable, eps=1e-6, max_entries=12, seed=0):
    """Central differences of the loss for a few entries of `variable`.

    Returns (flat indices, numeric gradient at those indices). Use float64
    layers so that the differences are accurate.
    """
    base = to_numpy(variable.value).copy()
    rng = np.random.default_rng(seed)
    indices = rng.choice(base.size, size=min(max_entries, base.size), replace=False)
    numeric = []
    for index in indices:
        values = []
        for step in (eps, -eps):
            bumped = base.copy().reshape(-1)
            bumped[index] += step
            variable.assign(bumped.reshape(base.shape))
            values.append(float(to_numpy(loss_fn(layer(x, training=True)))))
        numeric.append((values[0] - values[1]) / (2 * eps))
    variable.assign(base)
    return indices, np.array(numeric)


# ---------------------------------------------------------- serialization
def _config_differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _config_differences(a.get(key), b.get(key), f"{path}/{key}")
        return out
    return [] if a == b else [(path, a, b)]


def assert_config_roundtrip(layer, x, atol=1e-6):
    """`from_config(get_config())` rebuilds an equal layer: same config and,
    with the weights copied over, the same outputs."""
    y = to_numpy(layer(x))
    config = layer.get_config()
    clone = type(layer).from_config(copy.deepcopy(config))  # from_config may pop keys
    clone(x)
    clone.set_weights(layer.get_weights())
    differences = _config_differences(clone.get_config(), config)
    assert differences == [], differences
    np.testing.assert_allclose(to_numpy(clone(x)), y, atol=atol)
    # The config must be JSON-able, as `.keras` files store it.
    json.dumps(keras.saving.serialize_keras_object(layer))
    return clone


_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import tfnorms  # registers the classes: required before load_model
    for stem in sys.argv[1:]:
        model = keras.saving.load_model(stem + ".keras")
        x = np.load(stem + ".x.npy")
        np.save(stem + ".loaded.npy", np.asarray(model.predict(x, verbose=0)))
    """
)


def assert_keras_roundtrip_fresh_process(models_and_inputs, directory, atol=1e-6):
    """Save each `(model, x)` as `.keras`, load all of them in one fresh Python
    process (after `import tfnorms`) and compare predictions."""
    stems, expected = [], []
    for index, (model, x) in enumerate(models_and_inputs):
        stem = os.path.join(str(directory), f"model_{index}")
        model.save(stem + ".keras")
        np.save(stem + ".x.npy", x)
        expected.append(np.asarray(model.predict(x, verbose=0)))
        stems.append(stem)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *stems],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for stem, want in zip(stems, expected, strict=True):
        np.testing.assert_allclose(np.load(stem + ".loaded.npy"), want, atol=atol)


def assert_export_roundtrip(model, x, directory, atol=1e-6):
    """`model.export()` then `tf.saved_model.load` and `TFSMLayer` reproduce
    the model's predictions (TensorFlow backend)."""
    import tensorflow as tf

    path = os.path.join(str(directory), "exported")
    model.export(path, verbose=False)
    want = np.asarray(model.predict(x, verbose=0))
    reloaded = tf.saved_model.load(path)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), want, atol=atol)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serve")
    np.testing.assert_allclose(to_numpy(layer(x)), want, atol=atol)


# ------------------------------------------------------------------ training
def compile_for_regression(model, learning_rate=0.05, **kwargs):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="mse", **kwargs)
    return model


def assert_fit_lowers_loss(model, x, y, epochs=5, batch_size=16):
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    return losses


def assert_mixed_precision(make_model, x, y, policy):
    """Under `policy`, variables stay float32, outputs come in the compute
    dtype, and training gives finite, decreasing loss."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = compile_for_regression(make_model())
        out = model(x)
        assert (
            keras.backend.standardize_dtype(out.dtype)
            == keras.mixed_precision.Policy(policy).compute_dtype
        )
        for variable in model.weights:
            if keras.backend.is_float_dtype(variable.dtype):
                assert keras.backend.standardize_dtype(variable.dtype) == "float32", variable
        assert_fit_lowers_loss(model, x, y)
    finally:
        keras.config.set_dtype_policy(previous)


def assert_jit_fit(make_model, x, y):
    """`jit_compile=True` trains and predicts like the eager model."""
    eager = compile_for_regression(make_model())
    jitted = compile_for_regression(make_model(), jit_compile=True)
    jitted.set_weights(eager.get_weights())
    np.testing.assert_allclose(
        jitted.predict(x, verbose=0), eager.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
    assert_fit_lowers_loss(jitted, x, y)


def _replica_values(variable):
    """The per-replica tensors of a mirrored Keras variable (TF backend)."""
    inner = getattr(variable, "_value", variable)
    values = getattr(inner, "values", None)
    return [v.numpy() for v in values] if values is not None else [np.asarray(inner)]


def replica_values(variable):
    """The per-replica values of a mirrored Keras variable, as NumPy arrays
    (TF backend; one value when the variable is not mirrored)."""
    return _replica_values(variable)


_STRATEGY = []


def kernel_free_model():
    """Weight-norm wrappers (CWN Dense, WN EinsumDense) on 32 inputs: with
    at most 16 rows per step, under XLA they take the kernel-free path
    (tfnorms.layers.kernel_free)."""
    import tfnorms

    return keras.Sequential(
        [
            keras.Input((32,)),
            tfnorms.CenteredWeightNorm(keras.layers.Dense(16, activation="tanh")),
            tfnorms.WeightNormalization(keras.layers.EinsumDense("ab,bc->ac", 4, bias_axes="c")),
        ]
    )


def mirrored_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole process.

    Several strategies in one process share TensorFlow's collective instance
    keys and then fail with shape mismatches, so every test reuses this one.
    """
    import tensorflow as tf

    if not _STRATEGY:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
        assert len(devices) == 2, "conftest.py must set up two logical CPUs"
        _STRATEGY.append(tf.distribute.MirroredStrategy(devices))
    return _STRATEGY[0]


def assert_mirrored_matches_single(make_model, x, y, steps=3, atol=1e-5):
    """Under MirroredStrategy on two logical CPUs the replicas end with
    identical variables, equal to a one-device run on the same global batch."""
    single = compile_for_regression(make_model())
    initial = single.get_weights()
    strategy = mirrored_strategy()
    with strategy.scope():
        mirrored = compile_for_regression(make_model())
    mirrored.set_weights(initial)
    batch = len(x)
    single.fit(x, y, epochs=steps, batch_size=batch, shuffle=False, verbose=0)
    mirrored.fit(x, y, epochs=steps, batch_size=batch, shuffle=False, verbose=0)
    for want, variable in zip(single.weights, mirrored.weights, strict=True):
        replicas = _replica_values(variable)
        assert len(replicas) == 2, variable.path
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)
        np.testing.assert_allclose(
            replicas[0], to_numpy(want.value), atol=atol, err_msg=variable.path
        )
    return single, mirrored
