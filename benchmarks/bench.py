"""Training-step and inference time of tfnorms layers against Keras's own.

For each configuration (backend, jit_compile, dtype policy) and model
(a CIFAR-shaped ResNet-20 at batch 128, a 6-layer MLP at batch 1024) it
builds every candidate in one process, warms each up, then times steps
alternating the candidates (so drifts in machine load hit all of them alike)
and reports the median per candidate as a ratio to the Keras baseline:
`BatchNormalization` for the batch-norm candidates, the plain model for the
weight-norm candidates. Peak memory of a training step comes from XLA's
memory analysis of the compiled step on the JAX backend (TensorFlow has no
allocator statistics on the CPU).

Run `python benchmarks/bench.py --help`; `make bench` runs the default matrix
and writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# (backend, model, jit, policy) rows of the default matrix, chosen to fit in
# about 10 minutes on 2 CPU cores; `--full` runs every combination.
DEFAULT_MATRIX = [
    ("tensorflow", "mlp", False, "float32"),
    ("tensorflow", "mlp", True, "float32"),
    ("tensorflow", "mlp", False, "mixed_float16"),
    ("tensorflow", "resnet20", False, "float32"),
    ("tensorflow", "resnet20", True, "float32"),
    ("jax", "mlp", True, "float32"),
    ("jax", "mlp", True, "mixed_float16"),
    ("jax", "resnet20", True, "float32"),
]


# ------------------------------------------------------------------ models
def batch_norm_factories():
    import keras

    import tfnorms

    return {
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(),
        "LpBN p=2": lambda: tfnorms.LpBatchNormalization(p=2),
        "LpBN p=1": lambda: tfnorms.LpBatchNormalization(p=1),
        "LpBN p=inf": lambda: tfnorms.LpBatchNormalization(p="inf"),
        "LpBN top-10": lambda: tfnorms.LpBatchNormalization(p="inf", top_k=10),
    }


def weight_norm_factories():
    import keras

    import tfnorms

    return {
        "plain": lambda layer: layer,
        "CenteredWeightNorm": tfnorms.CenteredWeightNorm,
        "WeightNormalization": tfnorms.WeightNormalization,
        "BoundedWeightNorm": tfnorms.BoundedWeightNorm,
        "keras SpectralNormalization": keras.layers.SpectralNormalization,
    }


def resnet20(wrap=lambda layer: layer, norm=None, width=16):
    """He et al.'s CIFAR ResNet-20 (3 x 3 basic blocks, option-A shortcuts)."""
    import keras
    from keras import layers

    def conv(filters, stride=1):
        return wrap(layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False))

    def bn():
        return norm() if norm else layers.Identity()

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(bn()(conv(width)(inputs)))
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = layers.ReLU()(bn()(conv(filters, stride)(x)))
            y = bn()(conv(filters)(y))
            if stride != 1:  # option A: subsample and zero-pad the channels
                # Built-in layers only (no Lambda), so that tfnorms.strip can clone it.
                x = layers.MaxPooling2D(pool_size=1, strides=2)(x)
                h, w, c = x.shape[1:]
                pad = (filters - c) // 2
                x = layers.Reshape((h, w, c, 1))(x)
                x = layers.ZeroPadding3D(((0, 0), (0, 0), (pad, pad)))(x)
                x = layers.Reshape((h, w, filters))(x)
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = wrap(layers.Dense(10))(x)
    return keras.Model(inputs, outputs)


def mlp(wrap=lambda layer: layer, norm=None, width=512, depth=6, input_dim=784):
    import keras
    from keras import layers

    inputs = keras.Input((input_dim,))
    x = inputs
    for _ in range(depth - 1):
        x = wrap(layers.Dense(width, use_bias=norm is None))(x)
        if norm:
            x = norm()(x)
        x = layers.ReLU()(x)
    outputs = wrap(layers.Dense(10))(x)
    return keras.Model(inputs, outputs)


MODELS = {"resnet20": (resnet20, (32, 32, 3), 128), "mlp": (mlp, (784,), 1024)}


def candidates(model_name):
    """{group: {name: model factory}}; the first name of a group is its baseline."""
    import tfnorms

    build = MODELS[model_name][0]
    norms = batch_norm_factories()
    wrappers = weight_norm_factories()
    groups = {
        "batch norm": {name: (lambda f=f: build(norm=f)) for name, f in norms.items()},
        "weight norm": {name: (lambda w=w: build(wrap=w)) for name, w in wrappers.items()},
    }
    groups["weight norm"]["CWN stripped (inference)"] = lambda: tfnorms.strip(
        build(wrap=tfnorms.CenteredWeightNorm)
    )
    return groups


# ----------------------------------------------------------------- timing
def compile_model(model, jit):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def jax_step_memory(model, x, y):
    """Bytes XLA plans for one compiled training step (arguments, outputs
    and temporaries), from the compiled executable's memory analysis."""
    import jax
    import keras

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)

    def step(trainable, non_trainable, opt_vars, x, y):
        def loss_of(trainable):
            logits, non_trainable_new = model.stateless_call(
                trainable, non_trainable, x, training=True
            )
            return loss_fn(y, logits), non_trainable_new

        (loss, non_trainable_new), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, trainable, non_trainable_new, opt_vars

    args = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
        x,
        y,
    )
    analysis = jax.jit(step).lower(*args).compile().memory_analysis()
    if analysis is None:
        return None
    return int(
        analysis.temp_size_in_bytes
        + analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
    )


def time_group(factories, x, y, jit, steps, warmup, train):
    """Median seconds per step of each candidate, timed in alternation."""
    models = {name: compile_model(factory(), jit) for name, factory in factories.items()}
    # An inference-only candidate (the stripped model) is not trained.
    timed = {name: m for name, m in models.items() if not (train and "(inference)" in name)}
    run = (lambda m: m.train_on_batch(x, y)) if train else (lambda m: m.predict_on_batch(x))
    for model in timed.values():
        for _ in range(warmup):
            run(model)
    times = {name: [] for name in timed}
    for _ in range(steps):
        for name, model in timed.items():
            start = time.perf_counter()
            out = run(model)
            if not train:
                _ = float(out.reshape(-1)[0])  # wait for the result
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items() if t}, models


def run_configuration(model_name, jit, policy, steps, warmup):
    import keras
    import numpy as np

    keras.config.set_dtype_policy(policy)
    _, shape, batch = MODELS[model_name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch,)).astype("int32")
    rows = []
    for group, factories in candidates(model_name).items():
        train_times, models = time_group(factories, x, y, jit, steps, warmup, train=True)
        infer_times, _ = time_group(factories, x, y, jit, steps, warmup, train=False)
        baseline = next(iter(factories))
        for name in factories:
            memory = None
            if keras.backend.backend() == "jax" and "(inference)" not in name:
                memory = jax_step_memory(models[name], x, y)
            rows.append(
                {
                    "group": group,
                    "candidate": name,
                    "baseline": baseline,
                    "train_s": train_times.get(name),
                    "infer_s": infer_times.get(name),
                    "step_bytes": memory,
                }
            )
        base_memory = next(r["step_bytes"] for r in rows if r["candidate"] == baseline)
        for row in rows:
            if row["group"] != group:
                continue
            for key, ref in (
                ("train", train_times.get(baseline)),
                ("infer", infer_times.get(baseline)),
            ):
                value = row[f"{key}_s"]
                row[f"{key}_ratio"] = value / ref if value and ref else None
            row["memory_ratio"] = (
                row["step_bytes"] / base_memory if row["step_bytes"] and base_memory else None
            )
    return rows


# ---------------------------------------------------------------- report
def format_report(results, meta):
    lines = [
        "# Performance",
        "",
        f"Generated by `make bench` (`benchmarks/bench.py`) on {meta['date']}: "
        f"{meta['machine']}, Python {meta['python']}, Keras {meta['keras']}, "
        f"TensorFlow {meta['tensorflow']}, JAX {meta['jax']}. Median of {meta['steps']} timed "
        f"steps after {meta['warmup']} warm-up steps, candidates alternated in one process. "
        "Ratios are against the first row of each group (Keras `BatchNormalization`, or "
        "the plain model); memory is XLA's planned bytes for one compiled training step "
        "(JAX rows only).",
        "",
    ]
    for config in results:
        lines += [
            f"## {config['model']}, {config['backend']}, jit_compile={config['jit']}, "
            f"{config['policy']}",
            "",
            "| group | candidate | train step (ms) | train ratio | inference (ms) | "
            "inference ratio | step memory ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in config["rows"]:

            def ms(value):
                return f"{value * 1000:.1f}" if value else "–"

            def ratio(value):
                return f"{value:.3f}" if value else "–"

            lines.append(
                f"| {row['group']} | {row['candidate']} | {ms(row['train_s'])} | "
                f"{ratio(row.get('train_ratio'))} | {ms(row['infer_s'])} | "
                f"{ratio(row.get('infer_ratio'))} | {ratio(row.get('memory_ratio'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    results = []
    for backend, model_name, jit, policy in json.loads(args.worker):
        assert backend == keras.backend.backend(), (backend, keras.backend.backend())
        print(f"[{backend}] {model_name} jit={jit} {policy} ...", file=sys.stderr, flush=True)
        rows = run_configuration(model_name, jit, policy, args.steps, args.warmup)
        results.append(
            {"backend": backend, "model": model_name, "jit": jit, "policy": policy, "rows": rows}
        )
    json.dump(results, sys.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--backends", nargs="+", choices=["tensorflow", "jax"], default=["tensorflow", "jax"]
    )
    parser.add_argument(
        "--full", action="store_true", help="every backend x model x jit x policy combination"
    )
    parser.add_argument(
        "--output",
        default=os.path.join(REPO, "docs", "performance.md"),
        help="where to write the Markdown table ('-' for stdout only)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 20:
        parser.error(f"--steps must be at least 20 (got {args.steps})")
    if args.worker:
        return worker(args)
    matrix = (
        [
            (b, m, j, p)
            for b in ("tensorflow", "jax")
            for m in MODELS
            for j in (False, True)
            for p in ("float32", "mixed_float16")
            if not (b == "jax" and not j)
        ]
        if args.full
        else DEFAULT_MATRIX
    )
    matrix = [c for c in matrix if c[0] in args.backends and c[1] in args.models]
    results = []
    versions = {}
    for backend in args.backends:
        configs = [c for c in matrix if c[0] == backend]
        if not configs:
            continue
        env = dict(
            os.environ,
            KERAS_BACKEND=backend,
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        command = [
            sys.executable,
            __file__,
            "--worker",
            json.dumps(configs),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ]
        output = subprocess.run(
            command, env=env, check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        results += json.loads(output)
    for module in ("keras", "tensorflow", "jax"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        **versions,
    }
    report = format_report(results, meta)
    print(report)
    if args.output != "-":
        with open(args.output, "w") as f:
            f.write(report + "\n")
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
