"""Training-step and inference time of tfnorms layers against Keras's own.

For each configuration (backend, jit_compile, dtype policy) and model
(a CIFAR-shaped ResNet-20 at batch 128, a 6-layer MLP at batch 1024) it
builds every candidate in one process, warms each up, then times steps
alternating the candidates (so drifts in machine load hit all of them alike)
and reports the median per candidate as a ratio to the Keras baseline:
`BatchNormalization` for the batch-norm candidates, the plain model for the
weight-norm candidates. Each baseline is built and timed twice: the
second instance's ratio (A/A) is the resolution of the group's other
ratios in that run. Peak memory of a training step comes from XLA's
memory analysis of the compiled step on the JAX backend, and on TensorFlow
from the profiler's memory events: the bytes requested from its allocator
during one step (`timing.tf_step_bytes`, read after the timing; none on
PyTorch, and none for two worker processes, which must run step for step).
Each configuration runs in a worker process of its own.

The synchronized rows time a small CNN on two replicas, each batch norm with
`synchronized=True`, against Keras's `BatchNormalization`: TensorFlow's
`MirroredStrategy` over two logical CPUs, its `MultiWorkerMirroredStrategy`
over two local processes (multiworker.py), JAX's
`keras.distribution.DataParallel` over two host devices (docs/distributed.md).
They time training only, since inference reads the moving statistics,
which nothing synchronizes.

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

import multiworker
from candidates import MODELS, candidates
from report import DISTRIBUTIONS, describe, group_rows, write_report
from timing import (
    alternate,
    jax_runners,
    keras_runners,
    medians,
    tf_step_bytes,
)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NOTES = os.path.join(HERE, "performance_notes.md")

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
# mixed_float16, every backend, one and two replicas) at least once, leaving
# out the costliest rows (ResNet-20 under XLA and on PyTorch), so that
# `make bench` stays near 4 minutes on 2 CPU cores. `--extended` adds those; `--full` runs
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


# ----------------------------------------------------------------- timing
def compile_model(model, jit):
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def time_group(factories, x, y, jit, steps, warmup, infer=True):
    """`(results, runners)`: per candidate, median seconds of a training
    step and (with `infer`) of inference, each timed in alternation with the
    other candidates, and step bytes where the backend plans them (JAX);
    and the candidates' step functions (`keras_runners`)."""
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
    return results, runners


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
    measured = {}
    with replica_scope(replicas):
        for group, factories in candidates(model_name, replicas).items():
            measured[group] = time_group(factories, x, y, jit, steps, warmup, infer=replicas == 1)
        # TensorFlow's memory after every group's timing: reading it slows
        # the rest of the process (`tf_step_bytes`). Multi-worker steps are
        # not read: the workers must run step for step.
        if keras.backend.backend() == "tensorflow" and not MULTI_WORKER:
            for results, runners in measured.values():
                for name, (train_step, _, _) in runners.items():
                    results[name]["step_bytes"] = tf_step_bytes(train_step) if train_step else None
    return [row for group, (results, _) in measured.items() for row in group_rows(group, results)]


def worker(args):
    """Run `args.worker`'s configurations (one backend, one replica count;
    `measure` passes one) and print their results as JSON."""
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
            result["steps"] = steps
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


MULTI_WORKER = []  # the worker process's MultiWorkerMirroredStrategy, made first


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
        help="the default rows plus ResNet-20 with jit on TensorFlow, ResNet-20 and mixed "
        "precision on JAX, and ResNet-20 on PyTorch (~12 min)",
    )
    breadth.add_argument(
        "--full",
        action="store_true",
        help="every backend x model x jit x policy combination, and the synchronized rows",
    )
    breadth.add_argument(
        "--sync",
        action="store_true",
        help="only the synchronized rows (a CNN on 2 replicas: TensorFlow MirroredStrategy and "
        "two MultiWorkerMirroredStrategy processes, JAX DataParallel)",
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
    """Each configuration in a worker process of its own: the backend is
    chosen when Keras is imported, devices are fixed before the backend
    starts, and reading TensorFlow's memory slows the rest of a process
    (`timing.tf_step_bytes`)."""
    results = []
    for backend in args.backends:
        for config in (c for c in matrix if c.backend == backend):
            results += json.loads(
                run_worker(backend, config.replicas, config.workers, [config], args)
            )
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


if __name__ == "__main__":
    sys.exit(main())
