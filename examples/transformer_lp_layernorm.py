"""L2 vs L1 layer normalization in a small Transformer encoder (the
Transformer rows of "Norm matters", Hoffer et al., NeurIPS 2018).

The Norm-matters supplement (Table 2) trains the Transformer on WMT14 with
L1 layer normalization in place of the usual (L2) one and reports about the
same perplexity (5.1 vs 5.2). This example makes the same swap in a small
Transformer encoder (Keras `MultiHeadAttention`, post-norm residual blocks
as in the original Transformer) on a synthetic task that needs no download:
sorting sequences of random tokens, predicted position by position. Every
normalization trains from the same initial weights on the same batches, and
the per-epoch losses are printed side by side.

Normalizations (`--norms`):
    l2      tfnorms.LpLayerNormalization(p=2), which is Keras's LayerNormalization
    l1      tfnorms.L1LayerNormalization: sigma = sqrt(pi/2) * mean|x - mu|
    linf    tfnorms.LpLayerNormalization(p=inf): sigma = C_inf(n) * max|x - mu|
    linf10  the same with the mean of the top 10 deviations
    rms     tfnorms.LpLayerNormalization(p=2, rms_scaling=True), RMSNorm
    l1rms   tfnorms.LpLayerNormalization(p=1, rms_scaling=True)
    keras   keras.layers.LayerNormalization (to check that l2 equals it)

Run: python examples/transformer_lp_layernorm.py [--norms l2 l1 --epochs 6 ...]
The defaults take well under a minute on two idle CPU cores (37 s here).
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

NORMS = {
    "l2": (
        "LpLayerNormalization(p=2) = Keras LayerNormalization",
        lambda: tfnorms.LpLayerNormalization(p=2),
    ),
    "l1": ("L1LayerNormalization", lambda: tfnorms.L1LayerNormalization()),
    "linf": ("LpLayerNormalization(p=inf)", lambda: tfnorms.LpLayerNormalization(p="inf")),
    "linf10": (
        "LpLayerNormalization(p=inf, top_k=10)",
        lambda: tfnorms.LpLayerNormalization(p="inf", top_k=10),
    ),
    "rms": (
        "LpLayerNormalization(p=2, rms_scaling=True) = RMSNorm",
        lambda: tfnorms.LpLayerNormalization(p=2, rms_scaling=True),
    ),
    "l1rms": (
        "LpLayerNormalization(p=1, rms_scaling=True)",
        lambda: tfnorms.LpLayerNormalization(p=1, rms_scaling=True),
    ),
    "keras": ("keras.layers.LayerNormalization", lambda: keras.layers.LayerNormalization()),
}


# ------------------------------------------------------------------ the task
def sorting_data(n, length, vocab, seed):
    """`n` sequences of `length` random tokens in [0, vocab) and, as targets,
    the same sequences sorted."""
    x = np.random.default_rng(seed).integers(0, vocab, size=(n, length), dtype="int32")
    return x, np.sort(x, axis=1)


# ----------------------------------------------------------------- the model
class PositionalEmbedding(keras.layers.Layer):
    """Token embedding plus a learned position embedding."""

    def __init__(self, vocab, length, width, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.length, self.width = vocab, length, width
        self.tokens = keras.layers.Embedding(vocab, width)
        self.positions = keras.layers.Embedding(length, width)

    def call(self, inputs):
        positions = keras.ops.arange(keras.ops.shape(inputs)[1])
        return self.tokens(inputs) + self.positions(positions)[None]

    def get_config(self):
        config = super().get_config()
        config.update({"vocab": self.vocab, "length": self.length, "width": self.width})
        return config


def encoder_block(h, norm, width, heads, hidden, placement):
    """Self-attention and a feed-forward net, each in a residual branch with
    a normalization: after the sum (`post`, the original Transformer) or at
    the branch input (`pre`)."""
    make = NORMS[norm][1]

    def residual(h, branch):
        if placement == "pre":
            return h + branch(make()(h))
        return make()(h + branch(h))

    attention = keras.layers.MultiHeadAttention(heads, key_dim=width // heads)
    h = residual(h, lambda t: attention(t, t))
    dense_in = keras.layers.Dense(hidden, activation="relu")
    dense_out = keras.layers.Dense(width)
    return residual(h, lambda t: dense_out(dense_in(t)))


def build_model(norm, length, vocab, width=64, heads=4, blocks=2, hidden=128, placement="post"):
    inputs = keras.Input((length,), dtype="int32")
    h = PositionalEmbedding(vocab, length, width)(inputs)
    for _ in range(blocks):
        h = encoder_block(h, norm, width, heads, hidden, placement)
    if placement == "pre":
        h = NORMS[norm][1]()(h)
    outputs = keras.layers.Dense(vocab)(h)  # logits per position
    return keras.Model(inputs, outputs, name=f"encoder_{norm}")


# ------------------------------------------------------------------ training
def train_one(norm, args, data):
    """Train one model; returns per-epoch training loss, validation loss and
    validation accuracy (per token and per whole sequence)."""
    (x, y), (x_val, y_val) = data
    keras.utils.set_random_seed(args.seed)  # same initial weights for every norm
    model = build_model(
        norm,
        args.length,
        args.vocab,
        args.width,
        args.heads,
        args.blocks,
        args.hidden,
        args.placement,
    )
    # The Transformer's recipe, shortened: linear warm-up over the first
    # epoch, then cosine decay; gradients clipped at norm 1.
    steps = -(-len(x) // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(steps * (args.epochs - 1), 1),
        warmup_target=args.learning_rate,
        warmup_steps=steps,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    order = np.random.default_rng(args.seed + 1)  # the same batches for every norm
    history = {"loss": [], "val_loss": [], "val_token_accuracy": [], "val_sequence_accuracy": []}
    start = time.perf_counter()
    for _ in range(args.epochs):
        permutation = order.permutation(len(x))
        fit = model.fit(
            x[permutation],
            y[permutation],
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
        val_loss, val_accuracy = model.evaluate(
            x_val, y_val, batch_size=max(args.batch_size, 256), verbose=0
        )
        predicted = np.argmax(model.predict(x_val, batch_size=256, verbose=0), axis=-1)
        history["loss"].append(float(fit.history["loss"][0]))
        history["val_loss"].append(float(val_loss))
        history["val_token_accuracy"].append(float(val_accuracy))
        history["val_sequence_accuracy"].append(float(np.mean(np.all(predicted == y_val, axis=1))))
    history["seconds"] = time.perf_counter() - start
    return history


def format_table(results, epochs):
    """Markdown table: one row per epoch, training and validation loss of each
    normalization side by side, then the final validation accuracies."""
    norms = list(results)
    head = ["epoch"] + [f"{n} loss" for n in norms] + [f"{n} val loss" for n in norms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def number(value):
        return "diverged" if not np.isfinite(value) else f"{value:.4f}"

    for e in range(epochs):
        cells = [str(e + 1)]
        cells += [number(results[n]["loss"][e]) for n in norms]
        cells += [number(results[n]["val_loss"][e]) for n in norms]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for n in norms:
        r = results[n]
        lines.append(
            f"{n}: final validation accuracy {r['val_token_accuracy'][-1]:.3f} per token, "
            f"{r['val_sequence_accuracy'][-1]:.3f} per sequence ({r['seconds']:.0f} s)"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- CLI
def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; received {text!r}")
    return value


def positive_float(text):
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; received {text!r}")
    return value


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=_HelpFormatter,
        epilog="normalizations:\n"
        + "\n".join(f"  {name:7s} {text}" for name, (text, _) in NORMS.items()),
    )
    parser.add_argument(
        "--norms",
        nargs="+",
        choices=list(NORMS),
        default=["l2", "l1"],
        help="normalizations to compare",
    )
    parser.add_argument("--epochs", type=positive_int, default=6, help="training epochs")
    parser.add_argument("--train-size", type=positive_int, default=6000, help="training sequences")
    parser.add_argument("--val-size", type=positive_int, default=1000, help="validation sequences")
    parser.add_argument("--length", type=positive_int, default=16, help="sequence length")
    parser.add_argument("--vocab", type=positive_int, default=32, help="token values")
    parser.add_argument("--width", type=positive_int, default=64, help="model width")
    parser.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    parser.add_argument("--blocks", type=positive_int, default=2, help="encoder blocks")
    parser.add_argument("--hidden", type=positive_int, default=128, help="feed-forward width")
    parser.add_argument(
        "--placement",
        choices=["post", "pre"],
        default="post",
        help="normalization after the residual sum (post, the original Transformer) "
        "or at the branch input (pre)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="batch size")
    parser.add_argument(
        "--learning-rate", type=positive_float, default=2e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, initial weights and batch order"
    )
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.width % args.heads:
        parser.error(f"--width {args.width} must be a multiple of --heads {args.heads}")
    if len(set(args.norms)) != len(args.norms):
        parser.error(f"--norms names one normalization twice: {args.norms}")
    return args


def main(argv=None):
    args = parse_args(argv)
    data = (
        sorting_data(args.train_size, args.length, args.vocab, args.seed + 100),
        sorting_data(args.val_size, args.length, args.vocab, args.seed + 200),
    )
    print(
        f"sorting {args.length} tokens of {args.vocab} values: {args.train_size} train / "
        f"{args.val_size} validation sequences; encoder {args.blocks} x (MHA {args.heads} "
        f"heads, width {args.width}, FFN {args.hidden}), {args.placement}-norm, Adam "
        f"{args.learning_rate:g} (warm-up, cosine decay), batch {args.batch_size}, "
        f"{args.epochs} epochs, backend {keras.backend.backend()}"
    )
    results = {}
    for norm in args.norms:
        print(f"  training {norm}: {NORMS[norm][0]}", flush=True)
        results[norm] = train_one(norm, args, data)
    print()
    print(format_table(results, args.epochs))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
