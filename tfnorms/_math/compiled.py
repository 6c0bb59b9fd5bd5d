"""Whether the code being traced is compiled by XLA, where a chain of
elementwise ops and reductions fuses into one pass: some kernels pick
another formulation there (docs/design.md: "Kernel-free weight norm", and
the top-k selection under "Lp batch normalization")."""

from __future__ import annotations

import math

import keras

# Below this many elements (1 MiB of float32) a cluster of a few elementwise
# passes (the gradient of |x - mean|) costs more to launch than its fusion
# saves, and what the unfused graph holds for the backward pass instead stays
# small. The top-k and extremes clusters pay at any size (docs/design.md,
# "Lp batch normalization", top-k selection, has both measurements).
MIN_CLUSTER_ELEMENTS = 2**18


def in_tf_xla() -> bool:
    """Whether TensorFlow is tracing a function that XLA compiles."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TensorFlow is the backend here
        return False
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def by_xla() -> bool:
    """JAX (always compiled), or TensorFlow inside `jit_compile=True`."""
    backend = keras.backend.backend()
    if backend == "jax":
        return True
    if backend == "tensorflow":
        return in_tf_xla()
    return False


def by_xla_on_cpu() -> bool:
    """`by_xla()`, compiling for the CPU (no GPU in sight)."""
    if not by_xla():
        return False
    if keras.backend.backend() == "jax":
        import jax

        return jax.devices()[0].platform == "cpu"
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def in_tf_graph() -> bool:
    """Whether TensorFlow is tracing a function that XLA does not compile
    (`fit` without `jit_compile`, a SavedModel's graph)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.inside_function() and not in_tf_xla()


def runs_every_step() -> bool:
    """Whether the Python of the code being run runs again at every step:
    PyTorch, or TensorFlow executing eagerly (not tracing a graph); JAX's
    training steps are traced once."""
    backend = keras.backend.backend()
    if backend == "torch":
        return True
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    return False


def worth_a_cluster(x) -> bool:
    """Whether `x` is large enough for a cluster of a few elementwise passes
    over it to pay: at least `MIN_CLUSTER_ELEMENTS`, or a size unknown until
    run time (then the cluster, which bounds what the step holds)."""
    if any(d is None for d in x.shape):
        return True
    return math.prod(x.shape) >= MIN_CLUSTER_ELEMENTS


def as_xla_cluster(function):
    """`function` compiled by XLA as a cluster of its own where TensorFlow
    traces an unfused graph, which runs each elementwise op as a separate
    pass over memory; `function` itself elsewhere. XLA compiles the cluster
    for each shape it meets at run time."""
    if not in_tf_graph():
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)
