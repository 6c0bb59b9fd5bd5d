"""Draw the documentation's figures into docs/img/.

1. lp_scale_distribution.png: Monte Carlo of the Lp scale estimate against the
   true standard deviation of Gaussian batches, computed with the package's
   own `tfnorms._math.stats.lp_statistics`, for p = 1, 2, inf (the maximum) and top-k
   (p = inf, top_k = 10): a histogram of sigma_p / sigma per estimator at one
   batch size, and the mean ratio against the batch size n. The numbers are
   printed as a table and written to lp_scale_distribution.json.
2. digits_loss_curves.png: the training-loss curves of the digits demo
   (`make demo`), re-plotted from its results.json: the demo's loss_curves.png
   with one legend under the panels and the batch-norm rows dashed.

If the demo's results file is missing, the second figure is skipped with a
message that says so, and the script still exits with status 0 (the first
figure has been written); any other failure exits non-zero.

Run: python scripts/make_figures.py [--digits-results outputs/digits/results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

# name -> (label, p, top_k) for `tfnorms._math.stats.lp_statistics`.
ESTIMATORS = {
    "L1": ("$p=1$", 1.0, None),
    "L2": ("$p=2$", 2.0, None),
    "Linf": (r"$p=\infty$ (max)", math.inf, None),
    "top10": (r"$p=\infty$, top-10", math.inf, 10),
}

# The Norm-matters supplement's bounds on E[C_inf(n) max|x - mu|] / sigma:
# (1 + sqrt(pi ln 4)) / sqrt(8 pi ln 2) and (1 + sqrt(pi ln 4)) / 2 (docs/design.md).
LINF_BOUNDS = (
    (1 + math.sqrt(math.pi * math.log(4))) / math.sqrt(8 * math.pi * math.log(2)),
    (1 + math.sqrt(math.pi * math.log(4))) / 2,
)

DEFAULT_SWEEP = [8, 16, 32, 64, 128, 256, 512, 1024]


def scale_ratios(n, trials, sigma, seed, mean=0.5):
    """sigma_p / sigma for every estimator over `trials` Gaussian batches of
    `n` samples: one (n, trials) array, each channel an independent batch."""
    import keras

    from tfnorms._math import stats

    rng = np.random.default_rng(seed)
    x = rng.normal(mean, sigma, size=(n, trials)).astype("float32")
    ratios = {}
    for name, (_, p, top_k) in ESTIMATORS.items():
        if top_k is not None and top_k > n:
            continue
        _, variance = stats.lp_statistics(x, axis=-1, p=p, top_k=top_k)
        scale = np.sqrt(keras.ops.convert_to_numpy(variance).astype("float64"))
        ratios[name] = scale / sigma
    return ratios


def summarize(ratios):
    return {
        name: {"mean": float(np.mean(r)), "std": float(np.std(r)), "trials": int(r.size)}
        for name, r in ratios.items()
    }


def format_table(summary, n):
    lines = [
        f"sigma_p / sigma over Gaussian batches of n = {n} samples",
        f"{'estimator':<10} {'mean':>8} {'std':>8} {'trials':>8}",
    ]
    for name, row in summary.items():
        lines.append(f"{name:<10} {row['mean']:8.4f} {row['std']:8.4f} {row['trials']:8d}")
    return "\n".join(lines)


def plot_lp_scales(ratios, n, sweep, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if sweep else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    low = min(float(np.min(r)) for r in ratios.values())
    high = max(float(np.max(r)) for r in ratios.values())
    bins = np.linspace(low, high, 80)
    for name, r in ratios.items():
        label = f"{ESTIMATORS[name][0]}: mean {np.mean(r):.3f}, std {np.std(r):.3f}"
        ax.hist(r, bins=bins, histtype="step", linewidth=1.5, density=True, label=label)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label=r"true $\sigma$")
    ax.set_xlabel(r"scale estimate / true standard deviation  ($\sigma_p / \sigma$)")
    ax.set_ylabel("density")
    ax.set_title(f"Gaussian batches of n = {n} samples")
    ax.legend(fontsize=8)
    if sweep:
        ax = axes[0][1]
        sizes = sorted(sweep)
        for name in ESTIMATORS:
            points = [(m, row[name]["mean"]) for m, row in sweep.items() if name in row]
            points.sort()
            ax.plot(
                [m for m, _ in points],
                [v for _, v in points],
                marker="o",
                label=ESTIMATORS[name][0],
            )
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        for bound in LINF_BOUNDS:
            ax.axhline(bound, color="gray", linestyle=":", linewidth=1)
        ax.text(
            sizes[0], LINF_BOUNDS[1], " supplement's bounds for the max", va="bottom", fontsize=7
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("batch size n (elements per channel)")
        ax.set_ylabel(r"mean of $\sigma_p / \sigma$")
        ax.set_title("Bias against the batch size")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_digits_results(path):
    """The demo's results.json as its `plot` function takes it: a dict
    `{(method, lr): [run, ...]}` and the list of learning rates."""
    with open(path) as f:
        data = json.load(f)
    learning_rates = [float(lr) for lr in data["args"]["learning_rates"]]
    # The demo keys runs by f"{method}@{lr:g}"; map the suffix back to the
    # exact learning rate so that the plot's `run_lr != lr` test matches.
    by_label = {f"{lr:g}": lr for lr in learning_rates}
    results = {}
    for key, runs in data["runs"].items():
        method, _, label = key.rpartition("@")
        lr = by_label.get(label, float(label))
        results[(method, lr)] = runs
    return results, learning_rates


def plot_loss_curves(results, learning_rates, path, descriptions=None):
    """The demo's mean training-loss curves, one panel per learning rate, as
    the demo's own `plot` draws them, but with one legend below the panels
    (the demo's per-panel legend hides curves at the large learning rate) and
    the batch-norm rows dashed so that nine curves stay apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    descriptions = descriptions or {}
    methods = list(dict.fromkeys(method for method, _ in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(
        1, len(learning_rates), figsize=(4.6 * len(learning_rates), 3.6), squeeze=False
    )
    for ax, lr in zip(axes[0], learning_rates, strict=True):
        for index, method in enumerate(methods):
            runs = results.get((method, lr))
            if not runs:
                continue
            losses = np.array([r["losses"] for r in runs], dtype="float64")
            mean = np.mean(np.where(np.isfinite(losses), losses, np.nan), axis=0)
            batch_norm = method.endswith("bn") or "bn_" in method
            ax.plot(
                np.arange(1, len(mean) + 1),
                mean,
                color=colors[index % len(colors)],
                linestyle="--" if batch_norm else "-",
                label=f"{method}: {descriptions.get(method, method)}",
            )
        ax.set_yscale("log")
        ax.set_title(f"SGD, learning rate {lr:g}")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("training loss (mean over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_digits(results_path, path):
    sys.path.insert(0, EXAMPLES)
    from digits_compare import METHODS

    results, learning_rates = load_digits_results(results_path)
    descriptions = {key: label for key, (label, _) in METHODS.items()}
    plot_loss_curves(results, learning_rates, path, descriptions)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Writes lp_scale_distribution.png, lp_scale_distribution.json and "
            "digits_loss_curves.png into --out-dir. When --digits-results does not "
            "exist (run `make demo` first), the loss-curve figure is skipped with the "
            "message 'digits results not found: PATH ...' and the exit status is still "
            "0, since the Lp-scale figure was made; any other error exits non-zero."
        ),
    )
    parser.add_argument(
        "--out-dir",
        default=os.path.join(ROOT, "docs", "img"),
        help="folder for the figures (default: docs/img of the checkout)",
    )
    parser.add_argument(
        "--digits-results",
        default=os.path.join(ROOT, "outputs", "digits", "results.json"),
        help="the demo's results.json (default: outputs/digits/results.json of the checkout)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=128,
        help="samples per Gaussian batch for the histogram (default: 128)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=20000,
        help="Gaussian batches (channels) for the histogram (default: 20000)",
    )
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=DEFAULT_SWEEP,
        metavar="N",
        help="batch sizes of the mean-ratio panel (default: 8 16 ... 1024; none: no panel)",
    )
    parser.add_argument(
        "--sweep-trials",
        type=int,
        default=4000,
        help="Gaussian batches per batch size of the sweep (default: 4000)",
    )
    parser.add_argument(
        "--sigma", type=float, default=2.0, help="true standard deviation (default: 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args(argv)
    if args.n < 2 or args.trials < 1 or args.sweep_trials < 1:
        parser.error("--n must be >= 2, --trials and --sweep-trials >= 1")
    if any(m < 2 for m in args.sweep):
        parser.error(f"--sweep sizes must be >= 2; got {args.sweep}")
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        parser.error(f"--sigma must be finite and > 0; got {args.sigma}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    ratios = scale_ratios(args.n, args.trials, args.sigma, args.seed)
    summary = summarize(ratios)
    print(format_table(summary, args.n))
    sweep = {}
    for i, m in enumerate(sorted(set(args.sweep))):
        sweep[m] = summarize(scale_ratios(m, args.sweep_trials, args.sigma, args.seed + 1 + i))
    if sweep:
        print("\nmean sigma_p / sigma against n")
        print(f"{'n':>6} " + " ".join(f"{name:>8}" for name in ESTIMATORS))
        for m, row in sweep.items():
            cells = [f"{row[n]['mean']:8.4f}" if n in row else f"{'-':>8}" for n in ESTIMATORS]
            print(f"{m:>6} " + " ".join(cells))

    figure = os.path.join(args.out_dir, "lp_scale_distribution.png")
    plot_lp_scales(ratios, args.n, sweep, figure)
    with open(os.path.join(args.out_dir, "lp_scale_distribution.json"), "w") as f:
        json.dump(
            {
                "n": args.n,
                "sigma": args.sigma,
                "seed": args.seed,
                "ratios": summary,
                "sweep": {str(m): row for m, row in sweep.items()},
            },
            f,
            indent=1,
        )
    print(f"\nwrote {figure} and lp_scale_distribution.json")

    if not os.path.exists(args.digits_results):
        print(
            f"digits results not found: {args.digits_results}; skipping "
            "digits_loss_curves.png (run `make demo` first)"
        )
        return 0
    figure = os.path.join(args.out_dir, "digits_loss_curves.png")
    plot_digits(args.digits_results, figure)
    print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
