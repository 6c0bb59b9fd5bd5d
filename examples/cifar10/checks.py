"""The allowed values of the example's settings, in one place.

`settings.validate` checks a whole configuration against these rules before a
run writes anything; `norms.Norms` and `models` check the arguments they take
with the same rules, since benchmarks and tests call them directly. Each
message names the flag, so that it reads the same from either place.
"""

from __future__ import annotations

import math


def _increasing_epochs(bounds):
    return all(b > 0 for b in bounds) and list(bounds) == sorted(set(bounds))


def _resnet_depth(depth):
    return depth >= 8 and (depth - 2) % 6 == 0


# setting: (test, what the value must be). `None` (an unset optional) passes.
RANGES = {
    "depth": (_resnet_depth, "a CIFAR ResNet has depth 6n+2 >= 8 (20, 32, 44, 56, 110)"),
    "width": (lambda v: v > 0, "must be > 0"),
    "inception_blocks": (lambda v: v >= 1, "must be >= 1"),
    "bn_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "bn_epsilon": (lambda v: v > 0, "must be > 0"),
    "top_k": (lambda v: v >= 1, "must be >= 1"),
    "batch_size": (lambda v: v >= 1, "must be >= 1"),
    "epochs": (lambda v: v >= 1, "must be >= 1"),
    "lr": (lambda v: v > 0 and math.isfinite(v), "must be > 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "lr_boundaries": (_increasing_epochs, "must be increasing positive epochs"),
    "lr_factor": (lambda v: v > 0, "must be > 0"),
    "lr_decay_epochs": (lambda v: v > 0, "must be > 0"),
    "lr_decay_rate": (lambda v: v > 0, "must be > 0"),
    "weight_decay": (lambda v: v >= 0 and math.isfinite(v), "must be a finite number >= 0"),
    "clip_norm": (lambda v: v > 0, "must be > 0"),
    "pad": (lambda v: v >= 0, "must be >= 0"),
    "cpu_replicas": (lambda v: v >= 1, "must be >= 1"),
    "slow_steps": (lambda v: v >= 0, "must be >= 0"),
}


def flag(key):
    """The command-line flag of a setting: `top_k` -> `--top-k`."""
    return "--" + key.replace("_", "-")


def check_ranges(values, error):
    """Raise `error` for the first of `values` ({setting: value}) outside its range."""
    for key, value in values.items():
        test, rule = RANGES[key]
        if value is not None and not test(value):
            raise error(f"{flag(key)} {value}: {rule}")


def check_choice(key, value, choices, error):
    if value not in choices:
        raise error(f"{flag(key)} {value!r}: choose one of {', '.join(choices)}")
