"""Where the time of the weight-norm wrappers and of top-k and L-inf batch norm goes.

The profile behind the optimizations recorded in docs/performance.md. For
each of the costs that `bench.py` showed, it times one training step's
worth of the operation alone (forward and backward, jit-compiled, candidates
alternated, median), the straightforward version against the one tfnorms
ships:

- the effective kernel of `CenteredWeightNorm`/`WeightNormalization`
  through plain autodiff, against `tfnorms._math.kernel.weight_norm_kernel` (the
  closed-form custom gradient of the CWN paper's eq. 3);
- the top-10 mean of batch norm through a transpose and a per-channel top_k
  over whole columns, against `tfnorms._math.select.top_k_values` (blockwise);
- L-inf batch norm's scale `max|x - mean|` through autodiff of a maximum and
  a minimum, against `tfnorms._math.select.max_abs_deviation` (closed-form gradient);

and, on JAX, what XLA compiles for a whole MLP training step: the number of
fused kernels and the planned bytes.

Run it on either backend: `KERAS_BACKEND=jax python benchmarks/profile_ops.py`.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from timing import alternate, jax_train_step, medians, model_state, planned_bytes  # noqa: E402


def autodiff_weight_norm_kernel(v, scale, reduce_axes, center, epsilon=1e-12):
    """The effective kernel with no custom gradient (what autodiff differentiates)."""
    from keras import ops

    from tfnorms._math import kernel

    w = kernel.unit_normalize(v, reduce_axes, center, epsilon)
    return w * ops.reshape(scale, (1,) * (len(v.shape) - 1) + (-1,))


def autodiff_max_deviation(x):
    """Per-channel max|x - mean| as max(max x - mean, mean - min x), differentiated
    by autodiff (both reductions' gradients in full)."""
    from keras import ops

    axes = tuple(range(len(x.shape) - 1))
    mean = ops.mean(x, axis=axes)
    return ops.maximum(ops.max(x, axis=axes) - mean, mean - ops.min(x, axis=axes))


def closed_form_max_deviation(x):
    from keras import ops

    from tfnorms._math import select

    axes = tuple(range(len(x.shape) - 1))
    return select.max_abs_deviation(x, ops.mean(x, axis=axes), -1)


def full_sort_top_k_mean(magnitude, k):
    """Mean of each channel's k largest entries: channels-first, top_k per row."""
    from keras import ops

    columns = ops.transpose(ops.reshape(magnitude, (-1, magnitude.shape[-1])))
    top, _ = ops.top_k(columns, k, sorted=False)
    return ops.mean(top, axis=-1)


def blockwise_top_k_mean(magnitude, k):
    """What the layers run: the blockwise selection with its written-out gradient."""
    from tfnorms._math import top_k

    return top_k.top_k_deviation_mean(magnitude, None, k, -1)


JIT = True  # TensorFlow: XLA-compile the measured functions (JAX always does)


def compiled_gradient(function, *arrays):
    """A jit-compiled `arrays -> gradients of sum(function(*arrays) * weights)`."""
    import keras
    import numpy as np

    out_shape = keras.ops.shape(function(*arrays))
    weights = np.random.default_rng(1).normal(size=tuple(out_shape)).astype("float32")
    if keras.backend.backend() == "jax":
        import jax

        grad = jax.jit(
            jax.grad(lambda *a: (function(*a) * weights).sum(), argnums=tuple(range(len(arrays))))
        )
        return lambda: jax.block_until_ready(grad(*arrays))
    import tensorflow as tf

    tensors = [tf.constant(a) for a in arrays]

    @tf.function(jit_compile=JIT)
    def grad():
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(function(*tensors) * weights)
        return tape.gradient(loss, tensors)

    return lambda: [g.numpy() for g in grad()]


def median_times(candidates, steps):
    return medians(alternate(candidates, steps, warmup=3))


def print_ratios(title, times):
    base = next(iter(times.values()))
    print(f"\n{title}")
    for name, seconds in times.items():
        print(f"  {name:<44} {seconds * 1e3:8.3f} ms  {seconds / base:6.3f}x")


def profile_weight_norm(steps):
    import numpy as np

    from tfnorms._math import kernel

    rng = np.random.default_rng(0)
    for shape in [(512, 512), (3, 3, 64, 64)]:
        v = rng.normal(size=shape).astype("float32")
        g = np.ones(shape[-1], "float32")
        axes = tuple(range(len(shape) - 1))
        broadcast = (1,) * (len(shape) - 1) + (shape[-1],)
        for center in (True, False):
            times = median_times(
                {
                    "autodiff": compiled_gradient(
                        lambda v, g, c=center, a=axes: autodiff_weight_norm_kernel(v, g, a, c),
                        v,
                        g,
                    ),
                    "tfnorms (closed-form gradient)": compiled_gradient(
                        lambda v, g, c=center, a=axes, b=broadcast: kernel.weight_norm_kernel(
                            v, g, a, b, c, 1e-12
                        ),
                        v,
                        g,
                    ),
                },
                steps,
            )
            name = "CWN" if center else "WN"
            print_ratios(f"{name} effective kernel {shape}, forward + backward", times)


def profile_top_k(steps):
    import numpy as np

    rng = np.random.default_rng(0)
    for shape in [(128, 32, 32, 16), (128, 8, 8, 64), (1024, 512)]:
        x = np.abs(rng.normal(size=shape)).astype("float32")
        times = median_times(
            {
                "full sort (transpose + top_k per channel)": compiled_gradient(
                    lambda m: full_sort_top_k_mean(m, 10), x
                ),
                "tfnorms (blockwise)": compiled_gradient(lambda m: blockwise_top_k_mean(m, 10), x),
            },
            steps,
        )
        print_ratios(f"top-10 mean of {shape}, forward + backward", times)


def profile_max_deviation(steps):
    import numpy as np

    rng = np.random.default_rng(0)
    for shape in [(128, 32, 32, 16), (128, 8, 8, 64), (1024, 512)]:
        x = rng.normal(size=shape).astype("float32")
        times = median_times(
            {
                "autodiff (both extremes differentiated)": compiled_gradient(
                    autodiff_max_deviation, x
                ),
                "tfnorms (closed-form gradient)": compiled_gradient(closed_form_max_deviation, x),
            },
            steps,
        )
        print_ratios(f"L-inf scale max|x - mean| of {shape}, forward + backward", times)


def profile_jax_mlp_step():
    """XLA's view of a whole MLP training step (what bench.py times), plain
    against CWN."""
    import bench
    import candidates
    import numpy as np

    import tfnorms

    build, shape, batch = candidates.MODELS["mlp"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch,)).astype("int32")
    print("\nJAX MLP training step, as compiled by XLA")
    for name, wrap in [("plain", lambda layer: layer), ("CWN", tfnorms.CenteredWeightNorm)]:
        model = bench.compile_model(build(wrap=wrap), True)
        compiled = jax_train_step(model, model_state(model), x, y)
        temporaries = compiled.memory_analysis().temp_size_in_bytes
        print(
            f"  {name:<6} fused kernels {compiled.as_text().count(' fusion('):4d}  planned "
            f"{planned_bytes(compiled) / 2**20:6.1f} MiB "
            f"(temporaries {temporaries / 2**20:5.1f} MiB)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument(
        "--no-jit",
        action="store_true",
        help="TensorFlow: a plain tf.function graph instead of XLA (what fit runs by default)",
    )
    args = parser.parse_args(argv)
    global JIT
    JIT = not args.no_jit
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    print(
        f"backend: {keras.backend.backend()}, jit={JIT or keras.backend.backend() == 'jax'}, "
        f"median of {args.steps} alternated steps"
    )
    profile_weight_norm(args.steps)
    profile_top_k(args.steps)
    profile_max_deviation(args.steps)
    if keras.backend.backend() == "jax":
        profile_jax_mlp_step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
