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
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "examples"))  # the ResNet of examples/cifar10

from timing import alternate, jax_runners, keras_runners, medians  # noqa: E402

# (backend, model, jit, policy) rows of the default matrix: each axis (both
# models, jit off and on, float32 and mixed_float16, both backends) at least
# once, leaving out the costliest rows (ResNet-20 under XLA), so that
# `make bench` stays near 10 minutes on 2 CPU cores. `--extended` adds those;
# `--full` runs every combination.
DEFAULT_MATRIX = [
    ("tensorflow", "mlp", False, "float32"),
    ("tensorflow", "mlp", True, "float32"),
    ("tensorflow", "mlp", False, "mixed_float16"),
    ("tensorflow", "resnet20", False, "float32"),
    ("jax", "mlp", True, "float32"),
]
EXTENDED_MATRIX = DEFAULT_MATRIX[:4] + [
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


def time_group(factories, x, y, jit, steps, warmup):
    """Per candidate: median seconds of a training step and of inference,
    each timed in alternation with the other candidates, and step bytes."""
    import keras

    make_runners = jax_runners if keras.backend.backend() == "jax" else keras_runners
    runners = {
        # An inference-only candidate (the stripped model) is not trained.
        name: make_runners(compile_model(factory(), jit), x, y, train="(inference)" not in name)
        for name, factory in factories.items()
    }
    results = {name: {"step_bytes": r[2]} for name, r in runners.items()}
    for kind, index in (("train_s", 0), ("infer_s", 1)):
        timed = {name: r[index] for name, r in runners.items() if r[index] is not None}
        for name, seconds in medians(alternate(timed, steps, warmup=warmup)).items():
            results[name][kind] = seconds
    return results


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
        measured = time_group(factories, x, y, jit, steps, warmup)
        baseline = next(iter(factories))
        for name in factories:
            rows.append(
                {
                    "group": group,
                    "candidate": name,
                    "baseline": baseline,
                    "train_s": measured[name].get("train_s"),
                    "infer_s": measured[name].get("infer_s"),
                    "step_bytes": None if "(inference)" in name else measured[name]["step_bytes"],
                }
            )
        base_memory = next(r["step_bytes"] for r in rows if r["candidate"] == baseline)
        for row in rows:
            if row["group"] != group:
                continue
            for key, ref in (
                ("train", measured[baseline].get("train_s")),
                ("infer", measured[baseline].get("infer_s")),
            ):
                value = row[f"{key}_s"]
                row[f"{key}_ratio"] = value / ref if value and ref else None
            row["memory_ratio"] = (
                row["step_bytes"] / base_memory if row["step_bytes"] and base_memory else None
            )
    return rows


# ---------------------------------------------------------------- report
WEIGHT_NORM_WRAPPERS = ["CenteredWeightNorm", "WeightNormalization", "BoundedWeightNorm"]
# (label, candidates, measure, limit) of the performance targets, checked per
# configuration (docs/performance.md, "Targets").
TARGETS = [
    ("LpBN p=2 training step", ["LpBN p=2"], "train_ratio", 1.03),
    ("LpBN p=1 and p=inf training step", ["LpBN p=1", "LpBN p=inf"], "train_ratio", 1.08),
    ("LpBN top-10 training step", ["LpBN top-10"], "train_ratio", 1.25),
    ("CWN, WN, BWN training step", WEIGHT_NORM_WRAPPERS, "train_ratio", 1.03),
    ("stripped model inference", ["CWN stripped (inference)"], "infer_ratio", 1.01),
    ("training-step memory (JAX)", None, "memory_ratio", 1.10),
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
    for label, names, key, limit in TARGETS:
        worst = []
        for config in results:
            values = [
                (row[key], row["candidate"])
                for row in config["rows"]
                if row.get(key) and (names is None or row["candidate"] in names)
            ]
            if values:
                ratio, name = max(values)
                tag = " ".join(
                    [config["model"], config["backend"], f"jit={config['jit']}", config["policy"]]
                    + ([] if len(values) == 1 else [name])
                )
                worst.append((ratio, f"{ratio:.3f} ({tag})"))
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


def format_report(results, meta, notes=None):
    lines = [
        "# Performance",
        "",
        f"Generated by `{meta.get('command', 'python benchmarks/bench.py')}` on {meta['date']}"
        + (f" (wall time {meta['wall_minutes']:.1f} min)" if "wall_minutes" in meta else "")
        + ": "
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
    lines += target_summary(results)
    if notes:
        with open(notes) as f:
            lines.append(f.read().rstrip())
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


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--backends", nargs="+", choices=["tensorflow", "jax"], default=["tensorflow", "jax"]
    )
    breadth = parser.add_mutually_exclusive_group()
    breadth.add_argument(
        "--extended",
        action="store_true",
        help="the default rows plus ResNet-20 with jit and JAX mixed precision (~22 min)",
    )
    breadth.add_argument(
        "--full", action="store_true", help="every backend x model x jit x policy combination"
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
    if args.full:
        matrix = [
            (b, m, j, p)
            for b in ("tensorflow", "jax")
            for m in MODELS
            for j in (False, True)
            for p in ("float32", "mixed_float16")
            if not (b == "jax" and not j)
        ]
    else:
        matrix = EXTENDED_MATRIX if args.extended else DEFAULT_MATRIX
    return [c for c in matrix if c[0] in args.backends and c[1] in args.models]


def measure(matrix, args):
    """Each backend's configurations in a worker process of its own (the
    backend is chosen when Keras is imported)."""
    results = []
    for backend in args.backends:
        configs = [c for c in matrix if c[0] == backend]
        if not configs:
            continue
        env = dict(
            os.environ,
            KERAS_BACKEND=backend,
            PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        command = [sys.executable, __file__, "--worker", json.dumps(configs)]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        output = subprocess.run(
            command, env=env, check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        results += json.loads(output)
    return results


def _versions():
    versions = {}
    for module in ("keras", "tensorflow", "jax"):
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
