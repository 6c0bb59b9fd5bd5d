#!/usr/bin/env python
"""Training images per second of one network with each normalization, on
this machine, measured fairly: every candidate is built and warmed up in one
process, then timed in alternating rounds (so changes in machine load hit
all of them alike), and the median round is reported.

    python examples/cifar10/throughput.py --model resnet --depth 56 --batch-size 128

Synthetic inputs (the data pipeline is not timed); one device; the same
compiled training step that `train.py` runs with Keras `fit`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

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


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np

    from cifar10 import models
    from cifar10.norms import Norms

    candidates = [c for c in CANDIDATES if not args.only or c[0] in args.only or c[2] in args.only]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=(args.batch_size,))
    built = []
    for label, weight_norm, batch_norm in candidates:
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
        for _ in range(2):  # trace, then one more to settle
            model.train_on_batch(images, labels)
        built.append((label, model))
        print(f"built {label}", file=sys.stderr, flush=True)
    seconds = {label: [] for label, _ in built}
    for _ in range(args.rounds):
        for label, model in built:
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(images, labels)
            seconds[label].append((time.perf_counter() - start) / args.steps)
    results = {
        "model": args.model if args.model != "resnet" else f"resnet{args.depth}",
        "width": args.width,
        "batch_size": args.batch_size,
        "backend": keras.backend.backend(),
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "images_per_second": {
            label: args.batch_size / statistics.median(values) for label, values in seconds.items()
        },
    }
    base = next(iter(results["images_per_second"].values()))
    for label, speed in results["images_per_second"].items():
        print(f"{label:26s} {speed:8.1f} images/s  ({speed / base:.2f}x {built[0][0]})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
