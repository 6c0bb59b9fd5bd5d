"""Training-step time of a small CNN: tfnorms.LpBatchNormalization vs Keras.

Two copies of the same CNN (conv-BN-ReLU blocks, global pooling, a softmax
classifier) differ only in their batch norms: `keras.layers.BatchNormalization`
in one, `tfnorms.LpBatchNormalization(p=..., top_k=...)` in the other. Both
are compiled alike and trained with `train_on_batch` on the same batch,
alternating step by step (the benchmarks' harness, timing.py). The script
prints the median step time of each and their ratio (ours / Keras's), plus
the median of the per-pair ratios.

    KERAS_BACKEND=tensorflow python benchmarks/bn_step_ratio.py --p 1
    python benchmarks/bn_step_ratio.py --p inf --top-k 10 --steps 300

Measurements only: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from timing import alternate, medians

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=(
            "Median training-step time of a small CNN with "
            "tfnorms.LpBatchNormalization against the same CNN with "
            "keras.layers.BatchNormalization (alternating steps, one process). "
            "Prints both medians and the ratio ours/Keras."
        )
    )
    parser.add_argument("--p", default="1", help='order of the norm: a number >= 1 or "inf" (1)')
    parser.add_argument("--top-k", type=int, default=None, help="top-k mean with --p inf")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model (200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per model (20)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (64)")
    parser.add_argument("--image-size", type=int, default=32, help="square image side (32)")
    parser.add_argument("--width", type=int, default=32, help="channels of the first block (32)")
    parser.add_argument("--jit", action="store_true", help="compile with jit_compile=True")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line as well")
    return parser.parse_args(argv)


def make_cnn(norm, image_size, width, classes=10):
    import keras

    layers = [keras.Input((image_size, image_size, 3))]
    for i, channels in enumerate((width, width, 2 * width, 2 * width)):
        layers += [
            keras.layers.Conv2D(channels, 3, padding="same", use_bias=False),
            norm(),
            keras.layers.ReLU(),
        ]
        if i % 2 == 1:
            layers.append(keras.layers.MaxPooling2D())
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)]
    return keras.Sequential(layers)


def build_models(args):
    """{"keras": the CNN with Keras's batch norm, "tfnorms": with ours}, with
    the same starting weights, compiled alike."""
    import keras

    import tfnorms

    p = args.p if args.p == "inf" else float(args.p)
    models = {
        "keras": make_cnn(keras.layers.BatchNormalization, args.image_size, args.width),
        "tfnorms": make_cnn(
            lambda: tfnorms.LpBatchNormalization(p=p, top_k=args.top_k),
            args.image_size,
            args.width,
        ),
    }
    models["tfnorms"].set_weights(models["keras"].get_weights())
    for model in models.values():
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=args.jit,
        )
    return models


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    models = build_models(args)
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,))
    steps = {name: (lambda m=model: m.train_on_batch(x, y)) for name, model in models.items()}
    times = alternate(steps, args.steps, warmup=args.warmup)
    medians_s = medians(times)
    ratio = medians_s["tfnorms"] / medians_s["keras"]
    pair_ratio = statistics.median(
        a / b for a, b in zip(times["tfnorms"], times["keras"], strict=True)
    )
    report(args, keras.backend.backend(), medians_s, ratio, pair_ratio)
    return ratio


def report(args, backend, medians_s, ratio, pair_ratio):
    label = f"LpBatchNormalization(p={args.p}" + (f", top_k={args.top_k})" if args.top_k else ")")
    print(
        f"backend {backend}, batch {args.batch_size}x{args.image_size}x"
        f"{args.image_size}x3, width {args.width}, jit {args.jit}, {args.steps} steps each"
    )
    print(f"Keras BatchNormalization  median step {medians_s['keras'] * 1e3:8.2f} ms")
    print(f"{label:<25} median step {medians_s['tfnorms'] * 1e3:8.2f} ms")
    print(f"ratio (median ours / median Keras): {ratio:.3f}")
    print(f"median of per-pair ratios:          {pair_ratio:.3f}")
    if args.json:
        print(
            json.dumps(
                {
                    "backend": backend,
                    "p": args.p,
                    "top_k": args.top_k,
                    "median_keras_s": medians_s["keras"],
                    "median_tfnorms_s": medians_s["tfnorms"],
                    "ratio": ratio,
                    "pair_ratio": pair_ratio,
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
