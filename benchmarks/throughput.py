#!/usr/bin/env python
"""Training images per second of one CIFAR-10 network of examples/cifar10
with each normalization, on this machine, timed with the benchmarks' harness
(timing.py): every candidate in one process, alternating rounds, the median
round.

    python benchmarks/throughput.py --model resnet --depth 56 --batch-size 128

Synthetic inputs (the data pipeline is not timed); one device; the same
compiled training step that examples/cifar10/train.py runs with Keras `fit`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

from timing import alternate, medians  # noqa: E402

# (label, --weight-norm, --batch-norm): the papers' pairings.
CANDIDATES = (
    ("keras BatchNormalization", "none", "keras"),
    ("L2 BN (tfnorms)", "none", "l2"),
    ("L1 BN", "none", "l1"),
    ("Linf BN", "none", "linf"),
    ("top-10 BN", "none", "topk"),
    ("CWN + L2 BN", "cwn", "l2"),
    ("WN + mean-only BN", "wn", "mean"),
    ("BWN + mean-only BN", "bwn", "mean"),
    ("no normalization", "none", "none"),
)
# Untimed steps of each candidate: the first traces, the next settles.
WARMUP = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet", choices=("resnet", "vgg-a", "googlenet"))
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--only", nargs="*", help="labels (or batch-norm names) to keep")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args(argv)


def build_candidates(args, images, labels):
    """{label: one training step of that candidate's compiled model}."""
    import keras
    from cifar10 import models
    from cifar10.norms import Norms

    steps = {}
    for label, weight_norm, batch_norm in CANDIDATES:
        if args.only and label not in args.only and batch_norm not in args.only:
            continue
        model = models.build(
            args.model,
            Norms(weight_norm, batch_norm, weight_decay=1e-4),
            depth=args.depth,
            width=args.width,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile="auto" if args.jit is None else args.jit,
        )
        steps[label] = lambda model=model: model.train_on_batch(images, labels)
        print(f"built {label}", file=sys.stderr, flush=True)
    return steps


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=(args.batch_size,))
    steps = build_candidates(args, images, labels)
    seconds = medians(alternate(steps, args.rounds, warmup=WARMUP, calls=args.steps))
    results = {
        "model": args.model if args.model != "resnet" else f"resnet{args.depth}",
        "width": args.width,
        "batch_size": args.batch_size,
        "backend": keras.backend.backend(),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_second": {label: args.batch_size / s for label, s in seconds.items()},
    }
    base_label, base = next(iter(results["images_per_second"].items()))
    for label, speed in results["images_per_second"].items():
        print(f"{label:26s} {speed:8.1f} images/s  ({speed / base:.2f}x {base_label})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
