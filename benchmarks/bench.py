"""Training-step and inference time of tfnorms layers against Keras's own.

For each configuration (backend, jit_compile, dtype policy) and model
(a CIFAR-shaped ResNet-20 at batch 128, a 6-layer MLP at batch 1024) it
builds every candidate in one process, warms each up, then times steps
alternating the candidates (so drifts in machine load hit all of them alike)
and reports the median per candidate as a ratio to the Keras baseline:
`BatchNormalization` for the batch-norm candidates, the plain model for the
weight-norm candidates. Peak memory of a training step comes from XLA's
memory analysis of the compiled step on the JAX backend; TensorFlow's CPU
allocator keeps no statistics unless asked, which only the synchronized rows
do (below).

The synchronized rows time a small CNN on two replicas, each batch norm with
`synchronized=True`, against Keras's `BatchNormalization`: TensorFlow's
`MirroredStrategy` over two logical CPUs, JAX's `keras.distribution.DataParallel`
over two host devices (docs/distributed.md). Their TensorFlow memory is the
CPU allocator's peak during one step (`timing.tf_cpu_step_bytes`); they time
training only, since inference reads the moving statistics, which nothing
synchronizes.

Run `python benchmarks/bench.py --help`; `make bench` runs the default matrix
and writes docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "examples"))  # the ResNet of examples/cifar10

import multiworker  # noqa: E402
from timing import (  # noqa: E402
    alternate,
    jax_runners,
    keras_runners,
    medians,
    tf_cpu_step_bytes,
)

# The Keras backends timed. On PyTorch the step runs eagerly: `jit_compile=True`
# is `torch.compile`, whose code generation takes minutes per model; its
# synchronized layers need `torch.distributed` processes, which the bench does
# not start (tests/library/test_distribute_torch.py checks them).
BACKENDS = ("tensorflow", "jax", "torch")


class Config(NamedTuple):
    """One configuration: a worker process builds and times its candidates."""

    backend: str
    model: str
    jit: bool
    policy: str
    replicas: int = 1  # > 1: the synchronized batch norms over that many devices
    workers: int = 1  # > 1: those replicas in as many processes (MultiWorkerMirroredStrategy)


# The synchronized rows (docs/distributed.md): TensorFlow without jit, since
# Keras's `fit` fails with `jit_compile=True` under `MirroredStrategy`; on JAX
# the step is always compiled.
SYNC_STEPS_FACTOR = 3  # the synchronized rows time this many times --steps
SYNC_MATRIX = [
    Config("tensorflow", "cnn", False, "float32", 2),
    Config("tensorflow", "cnn", False, "float32", 2, workers=2),
    Config("jax", "cnn", True, "float32", 2),
]
# The default matrix: each axis (both models, jit off and on, float32 and
# mixed_float16, both backends, one and two replicas) at least once, leaving
# out the costliest rows (ResNet-20 under XLA), so that `make bench` stays
# near 10 minutes on 2 CPU cores. `--extended` adds those; `--full` runs
# every combination.
DEFAULT_MATRIX = [
    Config("tensorflow", "mlp", False, "float32"),
    Config("tensorflow", "mlp", True, "float32"),
    Config("tensorflow", "mlp", False, "mixed_float16"),
    Config("tensorflow", "resnet20", False, "float32"),
    Config("jax", "mlp", True, "float32"),
    Config("torch", "mlp", False, "float32"),
    *SYNC_MATRIX,
]
EXTENDED_MATRIX = DEFAULT_MATRIX + [
    Config("tensorflow", "resnet20", True, "float32"),
    Config("jax", "mlp", True, "mixed_float16"),
    Config("jax", "resnet20", True, "float32"),
    Config("torch", "resnet20", False, "float32"),
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


def synchronized_factories():
    """The synchronized batch norms. Keras's layer refuses `synchronized=True`
    off TensorFlow; on JAX the sharded step reduces globally without it."""
    import keras

    import tfnorms

    sync = keras.backend.backend() == "tensorflow"
    return {
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(synchronized=sync),
        "LpBN p=2": lambda: tfnorms.LpBatchNormalization(p=2, synchronized=True),
        "LpBN p=1": lambda: tfnorms.LpBatchNormalization(p=1, synchronized=True),
        "LinfBN": lambda: tfnorms.LinfBatchNormalization(synchronized=True),
        "LinfBN top-10": lambda: tfnorms.LinfBatchNormalization(top_k=10, synchronized=True),
        "MeanOnlyBN": lambda: tfnorms.MeanOnlyBatchNormalization(synchronized=True),
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


class CandidateLayers:
    """The layers `cifar10.models.resnet` asks its `norms` for, as a
    candidate makes them: bias-free convolutions and the classifier wrapped
    by `wrap`, each convolution followed by `norm()` (by nothing without a
    `norm`). Keras's default initializers: only the cost is measured."""

    def __init__(self, wrap, norm):
        self.wrap = wrap
        self.norm = norm

    def conv(self, filters, kernel_size, strides=1, padding="same", name=None, fan_in=None):
        from keras import layers

        conv = layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name
        )
        return self.wrap(conv)

    def bn(self, name=None, zero_gamma=False):
        return self.norm() if self.norm else None

    def classifier(self, units, fan_in=None):
        from keras import layers

        return self.wrap(layers.Dense(units))


def resnet20(wrap=lambda layer: layer, norm=None):
    """He et al.'s CIFAR ResNet-20 (3 x 3 basic blocks, option-A shortcuts),
    the example's own definition: built-in Keras layers around the
    candidates', so that `tfnorms.strip` can clone it."""
    from cifar10 import models

    return models.resnet(CandidateLayers(wrap, norm), depth=20, shortcut="A")


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


def cnn(wrap=lambda layer: layer, norm=None, filters=(16, 32, 64)):
    """The synchronized rows' model: three bias-free 3x3 convolutions (the
    last two with stride 2), each followed by `norm()` and a ReLU, global
    average pooling and a classifier."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = inputs
    for index, width in enumerate(filters):
        strides = 1 if index == 0 else 2
        x = wrap(layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False))(x)
        if norm:
            x = norm()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, wrap(layers.Dense(10))(x))


# name: (model of `wrap` and `norm`, input shape, global batch)
MODELS = {
    "resnet20": (resnet20, (32, 32, 3), 128),
    "mlp": (mlp, (784,), 1024),
    "cnn": (cnn, (16, 16, 3), 64),
}
SYNC_GROUP = "synchronized batch norm"


def candidates(model_name, replicas=1):
    """{group: {name: model factory}}; the first name of a group is its baseline."""
    import tfnorms

    build = MODELS[model_name][0]
    if replicas > 1:
        factories = synchronized_factories()
        return {SYNC_GROUP: {name: (lambda f=f: build(norm=f)) for name, f in factories.items()}}
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


def time_group(factories, x, y, jit, steps, warmup, infer=True, tf_memory=False):
    """Per candidate: median seconds of a training step and (with `infer`)
    of inference, each timed in alternation with the other candidates, and
    step bytes (on TensorFlow only with `tf_memory`, read after the timing)."""
    import keras

    make_runners = jax_runners if keras.backend.backend() == "jax" else keras_runners
    runners = {
        # An inference-only candidate (the stripped model) is not trained.
        name: make_runners(compile_model(factory(), jit), x, y, train="(inference)" not in name)
        for name, factory in factories.items()
    }
    results = {name: {"step_bytes": r[2]} for name, r in runners.items()}
    for kind, index in [("train_s", 0)] + ([("infer_s", 1)] if infer else []):
        timed = {name: r[index] for name, r in runners.items() if r[index] is not None}
        for name, seconds in medians(alternate(timed, steps, warmup=warmup)).items():
            results[name][kind] = seconds
    if tf_memory and keras.backend.backend() == "tensorflow":
        for name, r in runners.items():
            results[name]["step_bytes"] = tf_cpu_step_bytes(r[0]) if r[0] else None
    return results


def replica_scope(replicas):
    """Where the candidates of a configuration are built and run: one device,
    or data parallel over `replicas` devices (the worker made them)."""
    import contextlib

    import keras

    if replicas == 1:
        return contextlib.nullcontext()
    if keras.backend.backend() == "jax":
        import jax

        devices = jax.devices()[:replicas]
        assert len(devices) == replicas, f"JAX sees {len(devices)} devices, not {replicas}"
        return keras.distribution.DataParallel(devices=devices).scope()
    import tensorflow as tf

    if multiworker.WORKERS == replicas and os.environ.get("TF_CONFIG"):
        return MULTI_WORKER[0].scope()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    assert len(cpus) == replicas, f"TensorFlow sees {len(cpus)} CPUs, not {replicas}"
    return tf.distribute.MirroredStrategy(devices=cpus).scope()


def run_configuration(model_name, jit, policy, steps, warmup, replicas=1):
    """The rows of one configuration, each with its ratios to its group's baseline."""
    import keras
    import numpy as np

    keras.config.set_dtype_policy(policy)
    _, shape, batch = MODELS[model_name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=(batch,)).astype("int32")
    rows = []
    with replica_scope(replicas):
        for group, factories in candidates(model_name, replicas).items():
            measured = time_group(
                factories,
                x,
                y,
                jit,
                steps,
                warmup,
                infer=replicas == 1,
                tf_memory=replicas > 1 and not MULTI_WORKER,  # workers must run step for step
            )
            rows += group_rows(group, measured)
    return rows


def group_rows(group, measured):
    """Report rows of one group (its first candidate the baseline) with ratios."""
    baseline = next(iter(measured))
    rows = []
    for name, values in measured.items():
        row = {
            "group": group,
            "candidate": name,
            "baseline": baseline,
            "train_s": values.get("train_s"),
            "infer_s": values.get("infer_s"),
            "step_bytes": None if "(inference)" in name else values["step_bytes"],
        }
        for key in ("train_s", "infer_s", "step_bytes"):
            value, ref = row[key], measured[baseline].get(key)
            ratio_key = "memory_ratio" if key == "step_bytes" else key[:-2] + "_ratio"
            row[ratio_key] = value / ref if value and ref else None
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report
WEIGHT_NORM_WRAPPERS = ["CenteredWeightNorm", "WeightNormalization", "BoundedWeightNorm"]
BN, WN, SYNC = ["batch norm"], ["weight norm"], [SYNC_GROUP]
TFNORMS_CANDIDATES = ["LpBN p=2", "LpBN p=1", "LpBN p=inf", "LpBN top-10"] + WEIGHT_NORM_WRAPPERS
# (label, groups, candidates, measure, limit) of the performance targets,
# checked per configuration (docs/performance.md, "Targets"); candidates None:
# every row of those groups. The synchronized rows have their own limits.
TARGETS = [
    ("LpBN p=2 training step", BN, ["LpBN p=2"], "train_ratio", 1.03),
    ("LpBN p=1 and p=inf training step", BN, ["LpBN p=1", "LpBN p=inf"], "train_ratio", 1.08),
    ("LpBN top-10 training step", BN, ["LpBN top-10"], "train_ratio", 1.10),
    ("CWN, WN, BWN training step", WN, WEIGHT_NORM_WRAPPERS, "train_ratio", 1.03),
    ("stripped model inference", WN, ["CWN stripped (inference)"], "infer_ratio", 1.01),
    ("training-step memory (JAX)", BN + WN, TFNORMS_CANDIDATES, "memory_ratio", 1.05),
    ("synchronized LpBN p=2 training step", SYNC, ["LpBN p=2"], "train_ratio", 1.00),
    (
        "synchronized LpBN p=1, L-inf and mean-only training step",
        SYNC,
        ["LpBN p=1", "LinfBN", "MeanOnlyBN"],
        "train_ratio",
        1.05,
    ),
    ("synchronized L-inf top-10 training step", SYNC, ["LinfBN top-10"], "train_ratio", 1.15),
]
NOTES = os.path.join(HERE, "performance_notes.md")


def target_summary(results):
    """Markdown lines: each target, its worst ratio per configuration, met or not."""
    lines = [
        "## Targets",
        "",
        "Each target against the worst candidate it covers in every configuration above "
        "(generated from the tables; the weight-norm wrappers are also compared with Keras's "
        "`SpectralNormalization`).",
        "",
        "| target | limit | worst ratio per configuration | met |",
        "|---|---|---|---|",
    ]
    for label, groups, names, key, limit in TARGETS:
        worst = [w for config in results if (w := worst_ratio(config, groups, names, key))]
        if not worst:
            continue
        met = sum(ratio <= limit for ratio, _ in worst)
        lines.append(
            f"| {label} | {limit:.2f} | {'; '.join(text for _, text in worst)} | "
            f"{met} of {len(worst)} |"
        )
    spectral = []
    for config in results:
        ratios = {row["candidate"]: row.get("train_ratio") for row in config["rows"]}
        reference = ratios.get("keras SpectralNormalization")
        wrappers = [ratios[n] for n in WEIGHT_NORM_WRAPPERS if ratios.get(n)]
        if reference and wrappers:
            spectral.append(max(wrappers) <= reference * 1.02)
    if spectral:
        lines.append(
            f"| CWN, WN, BWN no slower than SpectralNormalization (within 2%) | – | – | "
            f"{sum(spectral)} of {len(spectral)} |"
        )
    lines.append("")
    return lines


def worst_ratio(config, groups, names, key):
    """`(ratio, cell text)` of the worst row of `config` a target covers, or None."""
    values = [
        (row[key], row["candidate"])
        for row in config["rows"]
        if row.get(key) and row["group"] in groups and (names is None or row["candidate"] in names)
    ]
    if not values:
        return None
    ratio, name = max(values)
    tag = [config["model"], config["backend"], f"jit={config['jit']}", config["policy"]]
    if config.get("replicas", 1) > 1:
        tag.append(f"{config['replicas']} replicas")
        if "MultiWorker" in config.get("distribution", ""):
            tag.append("in 2 processes")
    if len(values) > 1:
        tag.append(name)
    return ratio, f"{ratio:.3f} ({' '.join(tag)})"


SYNC_HEADER = (
    f"Synchronized rows ({SYNC_STEPS_FACTOR}x the timed steps): every batch norm with "
    "`synchronized=True` over the replicas, "
    "against Keras's `BatchNormalization` (on JAX Keras refuses `synchronized=True`, and the "
    "step over the sharded batch reduces over the global batch for every candidate); "
    "training steps only (inference reads the moving statistics, nothing synchronized); "
    "their TensorFlow memory is the peak of the CPU allocator during one training step "
    "above what was live before it."
)


def format_report(results, meta, notes=None):
    synchronized = any(config.get("replicas", 1) > 1 for config in results)
    lines = [
        "# Performance",
        "",
        f"Generated by `{meta.get('command', 'python benchmarks/bench.py')}` on {meta['date']}"
        + (f" (wall time {meta['wall_minutes']:.1f} min)" if "wall_minutes" in meta else "")
        + ": "
        f"{meta['machine']}, Python {meta['python']}, Keras {meta['keras']}, "
        f"TensorFlow {meta['tensorflow']}, JAX {meta['jax']}, PyTorch {meta.get('torch', '–')}. "
        f"Median of {meta['steps']} timed "
        f"steps after {meta['warmup']} warm-up steps, candidates alternated in one process. "
        "Ratios are against the first row of each group (Keras `BatchNormalization`, or "
        "the plain model); memory is XLA's planned bytes for one compiled training step "
        + ("(JAX rows only)." if not synchronized else f"on JAX. {SYNC_HEADER}"),
        "",
    ]
    for config in results:
        lines += [
            f"## {describe(config)}",
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
    lines += target_summary(results)
    if notes:
        with open(notes) as f:
            lines.append(f.read().rstrip())
        lines.append("")
    return "\n".join(lines)


def worker(args):
    """Run `args.worker`'s configurations (one backend, one replica count)
    and print their results as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    configs = [Config(*c) for c in json.loads(args.worker)]
    replicas = configs[0].replicas
    if configs[0].workers > 1:
        MULTI_WORKER.append(multiworker.strategy())
    elif os.environ.get("KERAS_BACKEND") == "tensorflow" and replicas > 1:
        import tensorflow as tf

        # Logical CPUs for MirroredStrategy, before TensorFlow initializes its devices.
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    import keras

    results = []
    for config in configs:
        assert config.backend == keras.backend.backend(), (config, keras.backend.backend())
        print(f"[{describe(config._asdict())}] ...", file=sys.stderr, flush=True)
        # The synchronized steps are short (a few ms) and noisier: more of them.
        steps = args.steps * SYNC_STEPS_FACTOR if config.replicas > 1 else args.steps
        rows = run_configuration(
            config.model, config.jit, config.policy, steps, args.warmup, config.replicas
        )
        result = {key: getattr(config, key) for key in ("backend", "model", "jit", "policy")}
        if config.replicas > 1:
            result["replicas"] = config.replicas
            result["distribution"] = DISTRIBUTIONS[config.backend, config.workers > 1]
        accelerator = accelerator_name()
        if accelerator:
            result["device"] = accelerator
        results.append({**result, "rows": rows})
    json.dump(results, sys.stdout)


def accelerator_name():
    """The GPU the backend computes on, or None on the CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else None


# (backend, several processes): how the synchronized rows are distributed.
DISTRIBUTIONS = {
    ("tensorflow", False): "MirroredStrategy over logical CPUs",
    ("tensorflow", True): "MultiWorkerMirroredStrategy, two local processes",
    ("jax", False): "DataParallel over host devices",
}
MULTI_WORKER = []  # the worker process's MultiWorkerMirroredStrategy, made first


def describe(config):
    """A configuration (a result's dict) in words: its section heading."""
    text = (
        f"{config['model']}, {config['backend']}, jit_compile={config['jit']}, {config['policy']}"
    )
    if config.get("device"):
        text += f", on {config['device']}"
    replicas = config.get("replicas", 1)  # older results have no synchronized rows
    if replicas > 1:
        where = (
            config.get("distribution")
            or DISTRIBUTIONS[config["backend"], config.get("workers", 1) > 1]
        )
        text += f", synchronized on {replicas} replicas ({where})"
    return text


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS))
    breadth = parser.add_mutually_exclusive_group()
    breadth.add_argument(
        "--extended",
        action="store_true",
        help="the default rows plus ResNet-20 with jit and JAX mixed precision (~23 min)",
    )
    breadth.add_argument(
        "--full",
        action="store_true",
        help="every backend x model x jit x policy combination, and the synchronized rows",
    )
    breadth.add_argument(
        "--sync",
        action="store_true",
        help="only the synchronized rows (a CNN on 2 replicas, both backends)",
    )
    parser.add_argument(
        "--output",
        default=os.path.join(REPO, "docs", "performance.md"),
        help="where to write the Markdown table ('-' for stdout only)",
    )
    parser.add_argument(
        "--rerender",
        metavar="JSON",
        help="measure nothing: rewrite --output from an earlier run's JSON (with the notes "
        "of --notes)",
    )
    parser.add_argument(
        "--notes",
        default=None,
        help="Markdown appended to the report (default benchmarks/performance_notes.md; "
        "'none' for no notes)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 20:
        parser.error(f"--steps must be at least 20 (got {args.steps})")
    if args.worker:
        return worker(args)
    if args.notes is None:  # the default notes, where the checkout has them
        notes = NOTES if os.path.exists(NOTES) else None
    else:
        notes = None if args.notes == "none" else args.notes
        if notes and not os.path.exists(notes):
            parser.error(f"--notes: no file {notes!r}")
    if args.rerender:
        with open(args.rerender) as f:
            saved = json.load(f)
        write_report(saved["results"], saved["meta"], args.output, notes)
        return 0
    started = time.perf_counter()
    results = measure(chosen_matrix(args), args)
    meta = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python benchmarks/bench.py", *(argv or sys.argv[1:])]),
        "wall_minutes": (time.perf_counter() - started) / 60,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        **_versions(),
    }
    write_report(results, meta, args.output, notes)
    return 0


def chosen_matrix(args):
    if args.sync:
        matrix = SYNC_MATRIX
    elif args.full:
        matrix = [
            Config(b, m, j, p)
            for b in BACKENDS
            for m in ("resnet20", "mlp")
            for j in (False, True)
            for p in ("float32", "mixed_float16")
            if not (b == "jax" and not j) and not (b == "torch" and j)
        ] + SYNC_MATRIX
    else:
        matrix = EXTENDED_MATRIX if args.extended else DEFAULT_MATRIX
    return [c for c in matrix if c.backend in args.backends and c.model in args.models]


def measure(matrix, args):
    """Each backend's configurations in a worker process of its own (the
    backend is chosen when Keras is imported), and the synchronized ones in
    another: their devices are fixed before the backend starts."""
    results = []
    for backend in args.backends:
        for layout in sorted({(c.replicas, c.workers) for c in matrix if c.backend == backend}):
            configs = [
                c for c in matrix if (c.backend, c.replicas, c.workers) == (backend, *layout)
            ]
            results += json.loads(run_worker(backend, *layout, configs, args))
    return results


def run_worker(backend, replicas, workers, configs, args):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    if backend == "jax" and replicas > 1:
        # Host devices for DataParallel: read once, when JAX starts.
        flag = f"--xla_force_host_platform_device_count={replicas}"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flag).strip()
    command = [sys.executable, __file__, "--worker", json.dumps(configs)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    if workers > 1:
        return multiworker.run(command, env)
    return subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout


def _versions():
    import importlib.metadata

    # Keras's version without importing it: here no backend is chosen.
    versions = {"keras": importlib.metadata.version("keras")}
    for module in BACKENDS:
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return versions


def write_report(results, meta, output, notes=None):
    """Print the report; unless `output` is '-', write it there and the raw
    numbers beside it (`.json`, what `--rerender` reads)."""
    report = format_report(results, meta, notes)
    print(report)
    if output != "-":
        with open(output, "w") as f:
            f.write(report + "\n")
        with open(os.path.splitext(output)[0] + ".json", "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
