"""Compare normalizations on a deep ReLU MLP with plain SGD (the CWN paper's
MLP experiment, brought to scikit-learn's bundled digits data).

The CWN paper trains 1024 -> 128 -> 5 x [ReLU, Linear(128)] -> 10 on SVHN
with plain SGD (no momentum, no weight decay) at learning rates 0.1 to 1,
and finds centered weight norm's advantage at the large rates. Here the
same shape, 64 -> 5 x 128 -> 10, trains on `sklearn.datasets.load_digits`
(1,797 8x8 images, no download) for every method, several seeds and
learning rates. It prints a table and saves a PNG of the mean training-loss
curves.

Initialization follows the papers: the CWN and WN scales start at 1 (the CWN
authors' code has no data-dependent initialization), BWN's fixed norm is the
mean initial per-unit norm (the Norm-matters paper's "simple choice"). The
batch-norm rows (Keras's L2, L1, L-inf, top-k and mean-only with bounded
weight norm, from Norm matters) put the norm between each Dense and its ReLU
(gamma 1, beta 0; momentum 0.9, since a run is only ~180 steps).

Run: python examples/digits_compare.py [--epochs 15 --seeds 3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfnorms  # noqa: E402


def plain(layer):
    return [layer]


def wrap_with(wrapper, **kwargs):
    return lambda layer: [wrapper(layer, **kwargs)]


def followed_by(make_norm, wrapper=None):
    """The Dense (without its bias: the norm's beta replaces it), optionally
    wrapped, then a normalization layer."""

    def expand(layer):
        layer = keras.layers.Dense(layer.units, use_bias=False)
        return [wrapper(layer) if wrapper else layer, make_norm()]

    return expand


# A run is only ~180 steps: with Keras's default momentum of 0.99 the moving
# statistics used at test time would still hold 16% of their initial values.
BN_MOMENTUM = 0.9

# Each method turns one hidden Dense layer (without activation) into the
# layers that replace it; a ReLU follows in every case.
METHODS = {
    "plain": ("Plain SGD baseline", plain),
    "wn": (
        "WeightNormalization, g init 1",
        wrap_with(tfnorms.WeightNormalization, scale_initializer="ones"),
    ),
    "cwn": (
        "CenteredWeightNorm, g init 1",
        wrap_with(tfnorms.CenteredWeightNorm, scale_initializer="ones"),
    ),
    "bwn": ("BoundedWeightNorm, rho = initial norm", wrap_with(tfnorms.BoundedWeightNorm)),
    "bn": (
        "Keras BatchNormalization (L2)",
        followed_by(lambda: keras.layers.BatchNormalization(momentum=BN_MOMENTUM)),
    ),
    "l1bn": (
        "L1BatchNormalization",
        followed_by(lambda: tfnorms.L1BatchNormalization(momentum=BN_MOMENTUM)),
    ),
    "linfbn": (
        "LinfBatchNormalization (max)",
        followed_by(lambda: tfnorms.LinfBatchNormalization(momentum=BN_MOMENTUM)),
    ),
    "topkbn": (
        "LpBatchNormalization p=inf, top_k=10",
        followed_by(lambda: tfnorms.LpBatchNormalization(p="inf", top_k=10, momentum=BN_MOMENTUM)),
    ),
    "meanbn_bwn": (
        "BoundedWeightNorm + MeanOnlyBatchNormalization (Norm matters' pairing)",
        followed_by(
            lambda: tfnorms.MeanOnlyBatchNormalization(momentum=BN_MOMENTUM),
            tfnorms.BoundedWeightNorm,
        ),
    ),
}

DEFAULT_METHODS = list(METHODS)


def load_data(seed=0, test_fraction=0.2):
    """Digits scaled to [0, 1] and mean-centered (as the paper does with /255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean = x[train].mean(axis=0)
    return (x[train] - mean, y[train]), (x[test] - mean, y[test])


def build_mlp(method, depth=5, width=128, input_dim=64, classes=10):
    expand = METHODS[method][1]
    layers = [keras.Input((input_dim,))]
    for _ in range(depth):
        layers += expand(keras.layers.Dense(width))
        layers.append(keras.layers.ReLU())
    layers.append(keras.layers.Dense(classes))  # the classifier stays plain
    return keras.Sequential(layers)


def train_one(method, learning_rate, seed, data, epochs, batch_size):
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = build_mlp(method)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True
    )
    seconds = time.perf_counter() - start
    # The training loss on the whole training set after each epoch would cost
    # a pass per epoch; the running mean Keras reports is what the paper plots.
    losses = np.array(history.history["loss"], dtype="float64")
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"losses": losses.tolist(), "test_accuracy": float(accuracy), "seconds": seconds}


def summarize(results, epochs):
    """One row per (method, lr): mean losses at a few epochs, accuracy, time."""
    marks = sorted({1, max(1, epochs // 3), epochs})
    rows = []
    for (method, lr), runs in results.items():
        losses = np.array([r["losses"] for r in runs])
        diverged = int(np.sum(~np.all(np.isfinite(losses), axis=1)))
        row = {
            "method": method,
            "lr": lr,
            "diverged": diverged,
            "seeds": len(runs),
            "accuracy": float(np.mean([r["test_accuracy"] for r in runs])),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
        }
        for epoch in marks:
            column = losses[:, epoch - 1]
            row[f"loss@{epoch}"] = float(np.mean(column)) if np.all(np.isfinite(column)) else None
        rows.append(row)
    return rows, marks


def format_table(rows, marks):
    header = ["method", "lr"] + [f"loss@{e}" for e in marks] + ["test acc", "s/run", "diverged"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"], f"{row['lr']:g}"]
        for epoch in marks:
            value = row[f"loss@{epoch}"]
            cells.append("nan (diverged)" if value is None else f"{value:.4f}")
        cells += [
            f"{row['accuracy']:.3f}",
            f"{row['seconds']:.1f}",
            f"{row['diverged']}/{row['seeds']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_per_learning_rate(rows, epochs):
    """Lines naming, for each learning rate, the lowest final training loss."""
    lines = []
    for lr in sorted({row["lr"] for row in rows}):
        finished = [r for r in rows if r["lr"] == lr and r[f"loss@{epochs}"] is not None]
        if not finished:
            lines.append(f"lr {lr:g}: every method diverged")
            continue
        ranked = sorted(finished, key=lambda r: r[f"loss@{epochs}"])
        order = " < ".join(f"{r['method']} {r[f'loss@{epochs}']:.2g}" for r in ranked)
        lines.append(f"lr {lr:g}: final training loss {order}")
    return lines


def plot(results, learning_rates, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(learning_rates), figsize=(5 * len(learning_rates), 4), squeeze=False
    )
    for ax, lr in zip(axes[0], learning_rates, strict=True):
        for (method, run_lr), runs in results.items():
            if run_lr != lr:
                continue
            losses = np.array([r["losses"] for r in runs])
            mean = np.mean(np.where(np.isfinite(losses), losses, np.nan), axis=0)
            ax.plot(np.arange(1, len(mean) + 1), mean, label=method)
        ax.set_yscale("log")
        ax.set_title(f"SGD, learning rate {lr:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss (mean over seeds)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Methods: " + "; ".join(f"{k}: {v[0]}" for k, v in METHODS.items()),
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=DEFAULT_METHODS,
        choices=list(METHODS),
        metavar="METHOD",
        help="methods to compare (default: all)",
    )
    parser.add_argument(
        "--learning-rates",
        nargs="+",
        type=float,
        default=[0.05, 0.2, 1.0],
        help="plain-SGD learning rates (default: 0.05 0.2 1.0)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (default: 3)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run (default: 15)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: 128")
    parser.add_argument(
        "--out",
        default="outputs/digits",
        help="folder for table.md, results.json and loss_curves.png",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.batch_size < 1:
        parser.error("--seeds, --epochs and --batch-size must be >= 1")
    if any(not np.isfinite(lr) or lr <= 0 for lr in args.learning_rates):
        parser.error(f"--learning-rates must be finite and > 0; got {args.learning_rates}")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    data = load_data()
    print(
        f"digits: {len(data[0][0])} train / {len(data[1][0])} test images; "
        f"MLP 64 -> 5 x 128 -> 10, plain SGD, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.seeds} seeds, backend {keras.backend.backend()}"
    )
    for name in args.methods:
        print(f"  {name}: {METHODS[name][0]}")
    jobs = [
        (m, lr, s) for lr in args.learning_rates for m in args.methods for s in range(args.seeds)
    ]
    progress = keras.utils.Progbar(len(jobs), unit_name="run")
    results = {}
    for index, (method, lr, seed) in enumerate(jobs):
        run = train_one(method, lr, seed, data, args.epochs, args.batch_size)
        results.setdefault((method, lr), []).append(run)
        progress.update(index + 1, values=[("last_loss", run["losses"][-1])])
    rows, marks = summarize(results, args.epochs)
    table = format_table(rows, marks)
    print()
    print(table)
    print()
    for line in best_per_learning_rate(rows, args.epochs):
        print(line)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {
                "args": vars(args),
                "rows": rows,
                "runs": {f"{m}@{lr:g}": r for (m, lr), r in results.items()},
            },
            f,
            indent=1,
        )
    plot(results, args.learning_rates, os.path.join(args.out, "loss_curves.png"))
    print(f"\nwrote {args.out}/table.md, results.json and loss_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
