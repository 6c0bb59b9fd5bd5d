"""The papers' training recipes, as presets of train.py's flags.

Values come from the two papers' supplements and the authors' public
scripts (huangleiBuaa/CenteredWN, eladhoffer/norm_matters); see
docs/reproducing.md. Every value can be overridden by its flag. Weight decay
is the coupled (Torch/PyTorch SGD) kind: a penalty 0.5 * wd * ||w||^2 added to
the loss, so its gradient wd * w goes through the momentum as in those scripts.

This module imports only the standard library, so `--help` is instant.
"""

from __future__ import annotations

import math
import textwrap

# Flags every preset sets; `--preset` fills them, explicit flags override.
BASE = {
    "model": "resnet",
    "depth": 56,
    "width": 1.0,
    "shortcut": "A",
    "inception_blocks": None,
    "weight_norm": "none",
    "batch_norm": "l2",
    "wn_scale": "auto",
    "wrap_classifier": False,
    "zero_init_residual": False,
    "bwn_per_unit_gain": False,
    "init": "he",
    "bn_momentum": 0.9,
    "bn_epsilon": 1e-5,
    "top_k": 10,
    "sync_bn": False,
    "batch_size": 128,
    "epochs": 160,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "lr_schedule": "step",
    "lr_boundaries": [80, 120],
    "lr_factor": 0.1,
    "lr_decay_epochs": 1.0,
    "lr_decay_rate": 1.0,
    "lr_staircase": True,
    "weight_decay": 1e-4,
    "weight_decay_scope": "all",
    "clip_norm": None,
    "flip": True,
    "pad": 4,
    "seed": 1,
}

PRESETS = {
    "resnet56": {
        "_about": "ResNet-56, He et al. / CWN paper: option-A shortcuts, batch 128, SGD "
        "momentum 0.9, lr 0.1 /10 at epochs 80 and 120, weight decay 1e-4, 160 epochs, "
        "flip + 4-pixel crop",
    },
    "resnet20": {
        "_about": "resnet56's recipe on ResNet-20 (quick runs)",
        "depth": 20,
    },
    "normmatters-resnet56": {
        "_about": "Norm matters ResNet-56 (L2/L1/top-k BN rows): resnet56's recipe with "
        "option-B shortcuts (1x1 conv + BN) and the last BN of each block starting at "
        "gamma = 0, as in the authors' code",
        "shortcut": "B",
        "zero_init_residual": True,
    },
    "normmatters-resnet56-bwn": {
        "_about": "Norm matters ResNet-56 with bounded weight norm: every convolution "
        "(stem and shortcuts too) wrapped, in the authors' variant with a learned per-unit "
        "gain under a fixed total norm, each followed by mean-only BN; no weight decay "
        "except 1e-4 (0.5*wd*||W||^2) on the classifier; gradient-norm clipping at 5; "
        "convolutions and classifier start from PyTorch's default initialization, as the "
        "authors' weight-normalized convolutions effectively do (the weight-norm hook "
        "discards the He init their code writes), which keeps the residual branches "
        "small at the start",
        "bwn_per_unit_gain": True,
        "init": "torch",
        "shortcut": "B",
        "weight_norm": "bwn",
        "batch_norm": "mean",
        "weight_decay": 1e-4,
        "weight_decay_scope": "classifier",
        "clip_norm": 5.0,
    },
    "vgg-a": {
        "_about": "VGG-A, CWN paper: batch 256, SGD momentum 0.9, weight decay 5e-4, lr "
        "halved every 2000 iterations (exponential, ~10.24 epochs), 60 epochs, flips only; "
        "no batch norm on the convolutions (with --weight-norm wn or cwn, its learned g is "
        "the per-channel scale of the authors' code). The authors' Torch7 SGD damped the "
        "momentum (dampening = momentum), so their lr 1 is lr 0.1 here, and their sweep "
        "over 4, 2, 1, 0.5 is 0.4, 0.2, 0.1, 0.05",
        "model": "vgg-a",
        "batch_norm": "none",
        "batch_size": 256,
        "epochs": 60,
        "lr": 0.1,
        "lr_schedule": "exponential",
        "lr_decay_epochs": 2000 / 195.3125,
        "lr_decay_rate": 0.5,
        "lr_staircase": False,
        "weight_decay": 5e-4,
        "pad": 0,
    },
    "googlenet": {
        "_about": "GoogLeNet (Inception-BN) on CIFAR, CWN paper: batch 64, lr 0.1, SGD "
        "momentum 0.9, weight decay 5e-4, 100 epochs, lr decayed exponentially to 0.001 "
        "(stepped every 2 epochs), flip + 4-pixel crop, BN epsilon 1e-3",
        "model": "googlenet",
        "batch_size": 64,
        "epochs": 100,
        "lr_schedule": "exponential",
        "lr_decay_epochs": 2.0,
        "lr_decay_rate": 0.01 ** (1 / 50),
        "lr_staircase": True,
        "weight_decay": 5e-4,
        "bn_epsilon": 1e-3,
    },
    "normmatters-vgg-wd": {
        "_about": "Norm matters weight-decay setup: VGG-A (VGG11) with BN after every "
        "convolution, weight decay 5e-4 on the last layer only, lr 0.1 /10 every 20 "
        "epochs, momentum 0.9, 80 epochs",
        "model": "vgg-a",
        "batch_norm": "l2",
        "epochs": 80,
        "lr_boundaries": [20, 40, 60],
        "weight_decay": 5e-4,
        "weight_decay_scope": "classifier",
    },
}
DEFAULT_PRESET = "resnet56"


def preset_values(name):
    """BASE overlaid with the preset (without its description)."""
    values = dict(BASE)
    values.update({k: v for k, v in PRESETS[name].items() if not k.startswith("_")})
    return values


def _format(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_format(v) for v in value)
    return str(value)


def _relevant(values):
    """The keys that matter for these values (no lr boundaries for an
    exponential schedule, no depth for VGG, ...)."""
    skip = set()
    if values["model"] != "resnet":
        skip |= {"depth", "shortcut", "zero_init_residual"}
    if values["lr_schedule"] != "step":
        skip |= {"lr_boundaries", "lr_factor"}
    if values["lr_schedule"] != "exponential":
        skip |= {"lr_decay_epochs", "lr_decay_rate", "lr_staircase"}
    if values["batch_norm"] != "topk":
        skip.add("top_k")
    if values["weight_norm"] != "bwn":
        skip.add("bwn_per_unit_gain")
    return [k for k in values if k not in skip and values[k] is not None]


def describe_presets():
    """The text `--help` prints: each preset's description and every value it sets."""
    lines = ["presets (--preset NAME; explicit flags override any value):", ""]
    for name, preset in PRESETS.items():
        values = preset_values(name)
        lines.append(f"  {name}{' (default)' if name == DEFAULT_PRESET else ''}:")
        lines += textwrap.wrap(
            preset["_about"] + ".", 80, initial_indent="    ", subsequent_indent="    "
        )
        words = []
        for key in _relevant(values):
            value = values[key]
            if isinstance(value, bool):
                words.append(("--" if value else "--no-") + key.replace("_", "-"))
            else:
                words.append(f"--{key.replace('_', '-')} {_format(value)}")
        lines += _wrap(words, 78, "      ")
        lines.append("")
    return "\n".join(lines)


def _wrap(words, width, indent):
    out, line = [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            out.append(indent + line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(indent + line)
    return out


def lr_at_epoch(config, epoch):
    """The learning rate at the start of `epoch` (0-based), for the docs and checks."""
    lr = config["lr"]
    if config["lr_schedule"] == "step":
        return lr * config["lr_factor"] ** sum(epoch >= b for b in config["lr_boundaries"])
    if config["lr_schedule"] == "exponential":
        t = epoch / config["lr_decay_epochs"]
        if config["lr_staircase"]:
            t = math.floor(t)
        return lr * config["lr_decay_rate"] ** t
    return lr
