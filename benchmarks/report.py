"""The bench's report: rows with ratios, the targets table, the Markdown
page (docs/performance.md) and the JSON beside it that `--rerender` reads."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from candidates import REPEAT_SUFFIX, SYNC_GROUP

# (backend, several processes): how the synchronized rows are distributed.
DISTRIBUTIONS = {
    ("tensorflow", False): "MirroredStrategy over logical CPUs",
    ("tensorflow", True): "MultiWorkerMirroredStrategy, two local processes",
    ("jax", False): "DataParallel over host devices",
}


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


WEIGHT_NORM_WRAPPERS = ["CenteredWeightNorm", "WeightNormalization", "BoundedWeightNorm"]
BN, WN, SYNC = ["batch norm"], ["weight norm"], [SYNC_GROUP]
TFNORMS_CANDIDATES = ["LpBN p=2", "LpBN p=1", "LpBN p=inf", "LpBN top-10"] + WEIGHT_NORM_WRAPPERS


class Target(NamedTuple):
    """A performance target (docs/performance.md, "Targets"), checked per
    configuration; `names` None: every row of `groups`; `backends` None:
    every backend's configurations; `jit` None: with and without
    `jit_compile`. With `versus`, the limit in each configuration is that
    candidate's own ratio there (`limit` is None)."""

    label: str
    groups: list
    names: list | None
    key: str
    limit: float | None
    backends: tuple | None = None
    jit: bool | None = None
    versus: str | None = None

    def covers(self, config):
        backend = self.backends is None or config["backend"] in self.backends
        return backend and (self.jit is None or config["jit"] == self.jit)

    def limit_in(self, config):
        """The limit in `config` (None where its `versus` row has no ratio)."""
        if self.versus is None:
            return self.limit
        rows = [r for r in config["rows"] if r["candidate"] == self.versus]
        return rows[0].get(self.key) if rows else None


# The synchronized rows have their own limits. Memory is planned by XLA on
# JAX only; TensorFlow's column (bytes requested from its allocator) has no
# target.
TARGETS = [
    Target("LpBN p=2 training step", BN, ["LpBN p=2"], "train_ratio", 1.03),
    Target("LpBN p=1 and p=inf training step", BN, ["LpBN p=1", "LpBN p=inf"], "train_ratio", 1.08),
    Target("LpBN top-10 training step", BN, ["LpBN top-10"], "train_ratio", 1.10),
    # Weight norm, per backend: under XLA, which fuses the per-unit statistics
    # into the product, against the plain model; in TensorFlow's unfused graph,
    # against Keras's own SpectralNormalization. Eager PyTorch has JAX's limit.
    Target(
        "CWN, WN, BWN training step (JAX)", WN, WEIGHT_NORM_WRAPPERS, "train_ratio", 1.03, ("jax",)
    ),
    Target(
        "CWN, WN, BWN training step (TensorFlow, jit_compile)",
        WN,
        WEIGHT_NORM_WRAPPERS,
        "train_ratio",
        1.05,
        ("tensorflow",),
        jit=True,
    ),
    Target(
        "CWN, WN, BWN training step (TensorFlow without jit)",
        WN,
        WEIGHT_NORM_WRAPPERS,
        "train_ratio",
        None,
        ("tensorflow",),
        jit=False,
        versus="keras SpectralNormalization",
    ),
    Target(
        "CWN, WN, BWN training step (PyTorch)",
        WN,
        WEIGHT_NORM_WRAPPERS,
        "train_ratio",
        1.03,
        ("torch",),
    ),
    Target("stripped model inference", WN, ["CWN stripped (inference)"], "infer_ratio", 1.01),
    Target(
        "training-step memory (JAX)", BN + WN, TFNORMS_CANDIDATES, "memory_ratio", 1.05, ("jax",)
    ),
    Target("synchronized LpBN p=2 training step", SYNC, ["LpBN p=2"], "train_ratio", 1.00),
    Target(
        "synchronized LpBN p=1, L-inf and mean-only training step",
        SYNC,
        ["LpBN p=1", "LinfBN", "MeanOnlyBN"],
        "train_ratio",
        1.05,
    ),
    Target("synchronized L-inf top-10 training step", SYNC, ["LinfBN top-10"], "train_ratio", 1.15),
]


def target_summary(results):
    """Markdown lines: each target, its worst ratio per configuration, met or
    not, and how many of the misses are no larger than what the group's
    baseline read against itself there (`repeat_ratio`)."""
    lines = [
        "## Targets",
        "",
        "Each target against the worst candidate it covers in every configuration above "
        "(generated from the tables). Where the limit is Keras's `SpectralNormalization`, "
        "each configuration's limit is that row's own ratio (in brackets)."
        + (TARGET_REPEAT_NOTE if has_repeats(results) else ""),
        "",
        "| target | limit | worst ratio per configuration | met |",
        "|---|---|---|---|",
    ]
    for target in TARGETS:
        checked = []  # (met, within the A/A spread, cell text)
        for config in filter(target.covers, results):
            worst = worst_ratio(config, target.groups, target.names, target.key)
            limit = target.limit_in(config)
            if worst and limit:
                ratio, text = worst
                repeat = repeat_ratio(config, target.groups, target.key)
                if target.versus:
                    text = f"{text} [{limit:.3f}]"
                if repeat is not None:
                    text = f"{text} A/A {repeat:.3f}"
                within = repeat is not None and ratio - limit <= abs(repeat - 1.0)
                checked.append((ratio <= limit, within, text))
        if not checked:
            continue
        limit = target.versus if target.versus else f"{target.limit:.2f}"
        met = sum(ok for ok, _, _ in checked)
        verdict = f"{met} of {len(checked)}"
        close = sum(within and not ok for ok, within, _ in checked)
        if close:
            verdict += f"; {close} of the misses within A/A"
        lines.append(
            f"| {target.label} | {limit} | {'; '.join(text for _, _, text in checked)} | "
            f"{verdict} |"
        )
    lines.append("")
    return lines


TARGET_REPEAT_NOTE = (
    " `A/A` is the group's baseline against a second instance of itself in that "
    "configuration: a miss by no more than its distance from 1 is within what two "
    "identical models read apart."
)


def has_repeats(results):
    """Whether `results` time each baseline twice (older saved runs do not)."""
    return any(
        row["candidate"].endswith(REPEAT_SUFFIX) for config in results for row in config["rows"]
    )


def repeat_ratio(config, groups, key):
    """The ratio under `key` of the repeated baseline (`REPEAT_SUFFIX`) of
    `groups` in `config`, the one farthest from 1; None in results without one."""
    ratios = [
        row[key]
        for row in config["rows"]
        if row.get(key) and row["group"] in groups and row["candidate"].endswith(REPEAT_SUFFIX)
    ]
    return max(ratios, key=lambda ratio: abs(ratio - 1.0)) if ratios else None


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
    "every batch norm with `synchronized=True` over the replicas, "
    "against Keras's `BatchNormalization` (on JAX Keras refuses `synchronized=True`, and the "
    "step over the sharded batch reduces over the global batch for every candidate); "
    "training steps only (inference reads the moving statistics, nothing synchronized)."
)


REPEAT_NOTE = (
    "; the second row is that baseline again, a second instance timed like the others "
    "(A/A), whose ratio is how far two identical models read apart there"
)


def _sync_header(results, meta):
    """SYNC_HEADER with the synchronized rows' own step count (results
    saved before they had one timed `meta['steps']`)."""
    steps = next(c.get("steps", meta["steps"]) for c in results if c.get("replicas", 1) > 1)
    return f"Synchronized rows (median of {steps} timed steps): {SYNC_HEADER}"


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
        "the plain model)"
        + (REPEAT_NOTE if has_repeats(results) else "")
        + ". Step memory is XLA's planned bytes on JAX and the peak of the "
        'bytes requested from TensorFlow\'s allocator on TensorFlow ("Memory on TensorFlow" '
        "below), and is not read on PyTorch."
        + (f" {_sync_header(results, meta)}" if synchronized else ""),
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
