"""train.py's configuration: its command line, the preset each run starts
from, and the checks a configuration passes before a run writes anything.

Imports only the standard library and the example's standard-library
modules, so that `--help` is instant.
"""

from __future__ import annotations

import argparse
import os

from cifar10 import checks, recipes
from cifar10.models import MODELS
from cifar10.norms import BATCH_NORMS, INITS, WEIGHT_DECAY_SCOPES, WEIGHT_NORMS, WN_SCALES

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
PRECISIONS = ("none", "float16", "bfloat16")
# Settings a resumed run may change (where and how it runs, not what it trains).
RUNTIME_KEYS = (
    "preset",
    "data_dir",
    "out",
    "strategy",
    "cpu_replicas",
    "verbose",
    "jit",
    "epochs",
    "slow_steps",
)
# Settings no preset sets, with their value when the flag is not given.
UNSET = {"mixed_precision": "none", "data_dir": None, "cpu_replicas": None, "jit": None}

DESCRIPTION = """\
Train the papers' CIFAR-10 networks with tfnorms normalizations.

Runs on one device, on all GPUs (MirroredStrategy), or on several machines
(MultiWorkerMirroredStrategy, configured by TF_CONFIG); on the JAX backend
(KERAS_BACKEND=jax) with keras.distribution.DataParallel. A run killed at any
point resumes where it stopped when started again with the same command.
"""

OUTPUTS_HELP = """\
outputs (in --out):
  config.json      the resolved settings; a resumed run must match them
  backup/          keras.callbacks.BackupAndRestore state (resume point)
  log.csv          one row per epoch: loss, accuracy, val_loss, val_accuracy
                   (the test set), lr, train_seconds, images_per_second
  tensorboard/     TensorBoard logs
  best.keras       the model with the lowest test error so far (best.json)
  final.keras      the model after the last epoch
  saved_model/     SavedModel export of the final model with the weight-norm
                   wrappers stripped (tfnorms.strip), for serving (where
                   TensorFlow is installed)
  results.json     settings, per-epoch metrics, final and best test error,
                   images per second; written last

distribution:
  --strategy auto  MirroredStrategy over all GPUs (or over --cpu-replicas
                   logical CPUs), else one device; JAX: DataParallel over all
                   devices. --strategy multiworker reads TF_CONFIG and trains
                   with a custom loop (Keras fit does not support it); start
                   the same command on every worker, the chief writes --out.
  The --batch-size is global: it is split evenly across replicas.
"""

# A yes/no flag with --no-X; None (not given) leaves the preset's value.
_BOOL = dict(action=argparse.BooleanOptionalAction, default=None)


class ConfigError(ValueError):
    """Settings that cannot work together; the message says which."""


# ------------------------------------------------------------------ parsing
def _float_list(text):
    try:
        return [int(v) if float(v).is_integer() else float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=DESCRIPTION,
        epilog=recipes.describe_presets() + "\n" + OUTPUTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=list(recipes.PRESETS),
        default=recipes.DEFAULT_PRESET,
        help="recipe that fills every setting not given (default %(default)s)",
    )
    _model_flags(parser.add_argument_group("model").add_argument)
    _optimization_flags(parser.add_argument_group("optimization").add_argument)
    _running_flags(parser.add_argument_group("running").add_argument)
    return parser


def _model_flags(flag):
    flag("--model", choices=MODELS)
    flag("--depth", type=int, help="ResNet depth 6n+2 (20, 56, ...)")
    flag("--width", type=float, help="channel multiplier (tiny models for tests)")
    flag("--shortcut", choices=("A", "B"), help="ResNet shortcut option")
    flag(
        "--inception-blocks",
        type=int,
        help="GoogLeNet: keep the first N inception modules of each stage (quick runs)",
    )
    flag("--weight-norm", choices=WEIGHT_NORMS)
    flag(
        "--batch-norm",
        choices=BATCH_NORMS,
        help="l2/l1/linf/topk/mean: tfnorms layers; keras: keras.layers.BatchNormalization",
    )
    flag(
        "--wn-scale",
        choices=WN_SCALES,
        help="learn the weight-norm scale g (auto: only without a batch norm with gamma)",
    )
    flag("--wrap-classifier", **_BOOL, help="weight-normalize the last Dense too")
    flag(
        "--zero-init-residual",
        **_BOOL,
        help="start each residual block's last batch-norm gamma at 0",
    )
    flag(
        "--bwn-per-unit-gain",
        **_BOOL,
        help="BWN: learned per-unit gains under a fixed total norm (the authors' variant)",
    )
    flag(
        "--init",
        choices=INITS,
        help="he: convolutions He-normal (fan-out); torch: convolutions and Dense layers "
        "as PyTorch's defaults, U(+-1/sqrt(fan_in)) (the Norm matters weight-norm ResNet)",
    )
    flag("--bn-momentum", type=float, help="Keras convention: 0.9 keeps 90%% of the old value")
    flag("--bn-epsilon", type=float)
    flag("--top-k", type=int, help="k of --batch-norm topk")
    flag("--sync-bn", **_BOOL, help="batch statistics over all replicas")


def _optimization_flags(flag):
    flag("--batch-size", type=int, help="global batch size")
    flag("--epochs", type=int)
    flag("--lr", type=float, help="initial learning rate")
    flag("--momentum", type=float)
    flag("--nesterov", **_BOOL)
    flag("--lr-schedule", choices=("step", "exponential", "constant"))
    flag("--lr-boundaries", type=_float_list, help="step: epochs at which lr *= --lr-factor")
    flag("--lr-factor", type=float)
    flag(
        "--lr-decay-epochs",
        type=float,
        help="exponential: lr *= --lr-decay-rate every this many epochs",
    )
    flag("--lr-decay-rate", type=float)
    flag("--lr-staircase", **_BOOL, help="exponential: decay in whole steps")
    flag("--weight-decay", type=float, help="coupled weight decay (penalty 0.5*wd*||w||^2)")
    flag(
        "--weight-decay-scope",
        choices=WEIGHT_DECAY_SCOPES,
        help="all weights, kernels only, the classifier only, or none",
    )
    flag("--clip-norm", type=float, help="clip the global gradient norm")
    flag("--flip", **_BOOL, help="random horizontal flips")
    flag("--pad", type=int, help="pixels of padding for random crops (0: no crops)")
    flag("--seed", type=int)


def _running_flags(flag):
    flag(
        "--data-dir",
        help="cifar-10-python.tar.gz or its extracted folder "
        "(default: download with keras.utils.get_file)",
    )
    flag("--out", help="output folder (default outputs/cifar10/<model>-<norms>)")
    flag("--strategy", choices=STRATEGIES, default="auto")
    flag(
        "--cpu-replicas",
        type=int,
        help="split the CPU into this many logical devices (TF) or XLA host "
        "devices (JAX) and mirror over them: multi-replica runs without GPUs",
    )
    flag("--mixed-precision", choices=PRECISIONS, help="mixed_float16 / mixed_bfloat16 policy")
    flag("--jit", **_BOOL, help="XLA compile the step (default: Keras's choice)")
    flag(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="1: progress bar; 2: one line per epoch; 0: summaries only",
    )
    flag("--slow-steps", type=float, default=0.0, help=argparse.SUPPRESS)


# ------------------------------------------------------------ resolving
def resolve(args):
    """The full settings: the preset, overlaid with the flags given; checked."""
    config = {**recipes.preset_values(args.preset), **UNSET}
    config.update({key: value for key, value in vars(args).items() if value is not None})
    if config.get("out") is None:
        norms = "-".join(config[k] for k in ("weight_norm", "batch_norm"))
        depth = str(config["depth"]) if config["model"] == "resnet" else ""
        config["out"] = os.path.join("outputs", "cifar10", f"{config['model']}{depth}-{norms}")
    validate(config)
    return config


def validate(config):
    """Raise ConfigError for a value out of its range (checks.RANGES) or a
    multi-worker run without its cluster."""
    ranges = {key: config[key] for key in checks.RANGES if key != "depth"}
    if config["model"] == "resnet":
        ranges = {"depth": config["depth"], **ranges}
    checks.check_ranges(ranges, ConfigError)
    if config["strategy"] == "multiworker" and not os.environ.get("TF_CONFIG"):
        raise ConfigError("--strategy multiworker: set TF_CONFIG (cluster and task)")
