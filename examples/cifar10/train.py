#!/usr/bin/env python
"""Train the papers' CIFAR-10 networks with tfnorms normalizations.

    python examples/cifar10/train.py --preset resnet56 --batch-norm l1 --out outputs/r56-l1

Runs on one device, on all GPUs (MirroredStrategy), or on several machines
(MultiWorkerMirroredStrategy, configured by TF_CONFIG); on the JAX backend
(KERAS_BACKEND=jax) with keras.distribution.DataParallel. A run killed at any
point resumes where it stopped when started again with the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time

_EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

from cifar10 import recipes  # noqa: E402
from cifar10.data import DataError  # noqa: E402
from cifar10.models import MODELS, ModelError  # noqa: E402
from cifar10.norms import (  # noqa: E402
    BATCH_NORMS,
    INITS,
    WEIGHT_DECAY_SCOPES,
    WEIGHT_NORMS,
    NormError,
)

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
PRECISIONS = ("none", "float16", "bfloat16")
CONFIG_JSON = "config.json"
RESULTS_JSON = "results.json"
FINAL_MODEL = "final.keras"
SAVED_MODEL = "saved_model"
TENSORBOARD = "tensorboard"
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

# Settings added after the first release, with the value that older runs
# (whose config.json lacks them) trained with.
LATER_KEYS = {"init": "he"}

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
                   wrappers stripped (tfnorms.strip), for serving
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
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n", 2)[2],
        epilog=recipes.describe_presets() + "\n" + OUTPUTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flag = parser.add_argument
    bool_flag = dict(action=argparse.BooleanOptionalAction, default=None)
    flag(
        "--preset",
        choices=list(recipes.PRESETS),
        default=recipes.DEFAULT_PRESET,
        help="recipe that fills every setting not given (default %(default)s)",
    )
    group = parser.add_argument_group("model")
    group.add_argument("--model", choices=MODELS)
    group.add_argument("--depth", type=int, help="ResNet depth 6n+2 (20, 56, ...)")
    group.add_argument("--width", type=float, help="channel multiplier (tiny models for tests)")
    group.add_argument("--shortcut", choices=("A", "B"), help="ResNet shortcut option")
    group.add_argument(
        "--inception-blocks",
        type=int,
        help="GoogLeNet: keep the first N inception modules of each stage (quick runs)",
    )
    group.add_argument("--weight-norm", choices=WEIGHT_NORMS)
    group.add_argument(
        "--batch-norm",
        choices=BATCH_NORMS,
        help="l2/l1/linf/topk/mean: tfnorms layers; keras: keras.layers.BatchNormalization",
    )
    group.add_argument(
        "--wn-scale",
        choices=("auto", "yes", "no"),
        help="learn the weight-norm scale g (auto: only without a batch norm with gamma)",
    )
    group.add_argument("--wrap-classifier", **bool_flag, help="weight-normalize the last Dense too")
    group.add_argument(
        "--zero-init-residual",
        **bool_flag,
        help="start each residual block's last batch-norm gamma at 0",
    )
    group.add_argument(
        "--bwn-per-unit-gain",
        **bool_flag,
        help="BWN: learned per-unit gains under a fixed total norm (the authors' variant)",
    )
    group.add_argument(
        "--init",
        choices=INITS,
        help="he: convolutions He-normal (fan-out); torch: convolutions and Dense layers "
        "as PyTorch's defaults, U(+-1/sqrt(fan_in)) (the Norm matters weight-norm ResNet)",
    )
    group.add_argument(
        "--bn-momentum", type=float, help="Keras convention: 0.9 keeps 90%% of the old value"
    )
    group.add_argument("--bn-epsilon", type=float)
    group.add_argument("--top-k", type=int, help="k of --batch-norm topk")
    group.add_argument("--sync-bn", **bool_flag, help="batch statistics over all replicas")
    group = parser.add_argument_group("optimization")
    group.add_argument("--batch-size", type=int, help="global batch size")
    group.add_argument("--epochs", type=int)
    group.add_argument("--lr", type=float, help="initial learning rate")
    group.add_argument("--momentum", type=float)
    group.add_argument("--nesterov", **bool_flag)
    group.add_argument("--lr-schedule", choices=("step", "exponential", "constant"))
    group.add_argument(
        "--lr-boundaries", type=_float_list, help="step: epochs at which lr *= --lr-factor"
    )
    group.add_argument("--lr-factor", type=float)
    group.add_argument(
        "--lr-decay-epochs",
        type=float,
        help="exponential: lr *= --lr-decay-rate every this many epochs",
    )
    group.add_argument("--lr-decay-rate", type=float)
    group.add_argument("--lr-staircase", **bool_flag, help="exponential: decay in whole steps")
    group.add_argument(
        "--weight-decay", type=float, help="coupled weight decay (penalty 0.5*wd*||w||^2)"
    )
    group.add_argument(
        "--weight-decay-scope",
        choices=WEIGHT_DECAY_SCOPES,
        help="all weights, kernels only, the classifier only, or none",
    )
    group.add_argument("--clip-norm", type=float, help="clip the global gradient norm")
    group.add_argument("--flip", **bool_flag, help="random horizontal flips")
    group.add_argument("--pad", type=int, help="pixels of padding for random crops (0: no crops)")
    group.add_argument("--seed", type=int)
    group = parser.add_argument_group("running")
    group.add_argument(
        "--data-dir",
        help="cifar-10-python.tar.gz or its extracted folder "
        "(default: download with keras.utils.get_file)",
    )
    group.add_argument("--out", help="output folder (default outputs/cifar10/<model>-<norms>)")
    group.add_argument("--strategy", choices=STRATEGIES, default="auto")
    group.add_argument(
        "--cpu-replicas",
        type=int,
        help="split the CPU into this many logical devices (TF) or XLA host "
        "devices (JAX) and mirror over them: multi-replica runs without GPUs",
    )
    group.add_argument(
        "--mixed-precision", choices=PRECISIONS, help="mixed_float16 / mixed_bfloat16 policy"
    )
    group.add_argument("--jit", **bool_flag, help="XLA compile the step (default: Keras's choice)")
    group.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="1: progress bar; 2: one line per epoch; 0: summaries only",
    )
    group.add_argument("--slow-steps", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def resolve(args):
    """The full settings: the preset, overlaid with the flags given."""
    config = recipes.preset_values(args.preset)
    config.setdefault("mixed_precision", "none")
    for key, value in vars(args).items():
        if value is not None:
            config[key] = value
    config.setdefault("data_dir", None)
    config.setdefault("cpu_replicas", None)
    config.setdefault("jit", None)
    if config.get("out") is None:
        norms = "-".join(config[k] for k in ("weight_norm", "batch_norm"))
        depth = str(config["depth"]) if config["model"] == "resnet" else ""
        config["out"] = os.path.join("outputs", "cifar10", f"{config['model']}{depth}-{norms}")
    _validate(config)
    return config


def _validate(config):
    def need(condition, message):
        if not condition:
            raise ConfigError(message)

    need(config["width"] > 0, f"--width {config['width']}: must be > 0")
    need(config["batch_size"] >= 1, f"--batch-size {config['batch_size']}: must be >= 1")
    need(config["epochs"] >= 1, f"--epochs {config['epochs']}: must be >= 1")
    need(config["lr"] > 0 and math.isfinite(config["lr"]), f"--lr {config['lr']}: must be > 0")
    need(0 <= config["momentum"] < 1, f"--momentum {config['momentum']}: must be in [0, 1)")
    need(
        0 <= config["bn_momentum"] < 1, f"--bn-momentum {config['bn_momentum']}: must be in [0, 1)"
    )
    need(config["bn_epsilon"] > 0, f"--bn-epsilon {config['bn_epsilon']}: must be > 0")
    need(config["pad"] >= 0, f"--pad {config['pad']}: must be >= 0")
    need(config["weight_decay"] >= 0, f"--weight-decay {config['weight_decay']}: must be >= 0")
    need(config["top_k"] >= 1, f"--top-k {config['top_k']}: must be >= 1")
    need(
        config["clip_norm"] is None or config["clip_norm"] > 0,
        f"--clip-norm {config['clip_norm']}: must be > 0",
    )
    bounds = config["lr_boundaries"]
    need(
        all(b > 0 for b in bounds) and list(bounds) == sorted(set(bounds)),
        f"--lr-boundaries {bounds}: must be increasing positive epochs",
    )
    need(config["lr_factor"] > 0, f"--lr-factor {config['lr_factor']}: must be > 0")
    need(
        config["lr_decay_epochs"] > 0, f"--lr-decay-epochs {config['lr_decay_epochs']}: must be > 0"
    )
    need(config["lr_decay_rate"] > 0, f"--lr-decay-rate {config['lr_decay_rate']}: must be > 0")
    need(
        config["cpu_replicas"] is None or config["cpu_replicas"] >= 1,
        f"--cpu-replicas {config['cpu_replicas']}: must be >= 1",
    )
    need(config["slow_steps"] >= 0, "--slow-steps: must be >= 0")
    blocks = config["inception_blocks"]
    need(blocks is None or blocks >= 1, f"--inception-blocks {blocks}: must be >= 1")
    if config["model"] == "resnet":
        depth = config["depth"]
        need(
            depth >= 8 and (depth - 2) % 6 == 0,
            f"--depth {depth}: a CIFAR ResNet has depth 6n+2 >= 8 (20, 32, 44, 56, 110)",
        )
    if config["strategy"] == "multiworker":
        need(
            os.environ.get("TF_CONFIG"), "--strategy multiworker: set TF_CONFIG (cluster and task)"
        )


# ---------------------------------------------------------- devices, strategy
def configure_devices(config):
    """Before Keras is imported: XLA host devices for JAX; logical CPUs for
    TensorFlow (before TensorFlow initializes its devices)."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if config["strategy"] == "multiworker" and backend == "tensorflow":
        import tensorflow as tf

        # Collective ops must be configured before TensorFlow's context starts.
        _cached(("multiworker",), tf.distribute.MultiWorkerMirroredStrategy)
    replicas = config["cpu_replicas"]
    if not replicas or replicas == 1:
        return
    if "jax" not in sys.modules:
        flag = f"--xla_force_host_platform_device_count={replicas}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    if backend == "tensorflow":
        import tensorflow as tf

        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas
            )
        except RuntimeError:
            pass  # already initialized (in-process use): checked in make_distribution


class Distribution:
    """What `run` needs to know about where the model trains."""

    def __init__(self, kind, replicas, scope, strategy=None, is_chief=True, devices=()):
        self.kind = kind
        self.replicas = replicas
        self.scope = scope
        self.strategy = strategy
        self.is_chief = is_chief
        self.devices = list(devices)


_STRATEGIES = {}  # one per device set and process: TF collectives cannot share a process


def _cached(key, factory):
    if key not in _STRATEGIES:
        _STRATEGIES[key] = factory()
    return _STRATEGIES[key]


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id) == 0


def make_distribution(config, strategy=None):
    import keras

    kind = config["strategy"]
    if keras.backend.backend() == "jax":
        import jax

        if strategy is not None:
            raise ConfigError("a tf.distribute strategy cannot run on the JAX backend")
        if kind == "multiworker":
            raise ConfigError(
                "--strategy multiworker needs the TensorFlow backend "
                "(on JAX, run one process per host with jax.distributed instead)"
            )
        devices = jax.devices()
        want = config["cpu_replicas"] or 1
        if devices[0].platform == "cpu" and len(devices) < want:
            raise ConfigError(
                f"--cpu-replicas {want}: JAX already started with {len(devices)} "
                "CPU device(s); set it before JAX is imported"
            )
        if devices[0].platform == "cpu":
            devices = devices[:want]
        if kind == "one" or len(devices) == 1:
            return Distribution("jax-one-device", 1, contextlib.nullcontext, devices=devices[:1])
        dist = keras.distribution.DataParallel(devices=devices)
        return Distribution(
            "jax-data-parallel",
            len(devices),
            dist.scope,
            strategy=dist,
            devices=[str(d) for d in devices],
        )

    import tensorflow as tf

    if strategy is None and kind == "multiworker":
        strategy = _cached(("multiworker",), tf.distribute.MultiWorkerMirroredStrategy)
    if strategy is None:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        want = config["cpu_replicas"] or 1
        if want > 1 and len(cpus) < want:
            raise ConfigError(
                f"--cpu-replicas {want}: TensorFlow already started with {len(cpus)} "
                "logical CPU(s); set it before TensorFlow initializes"
            )
        if kind == "one":
            device = gpus[0] if gpus else cpus[0]
            strategy = _cached(("one", device), lambda: tf.distribute.OneDeviceStrategy(device))
        else:
            devices = tuple(gpus) if gpus else tuple(cpus[:want])
            if kind == "auto" and len(devices) == 1:
                strategy = _cached(
                    ("one", devices[0]), lambda: tf.distribute.OneDeviceStrategy(devices[0])
                )
            else:
                strategy = _cached(
                    ("mirrored",) + devices, lambda: tf.distribute.MirroredStrategy(list(devices))
                )
    name = type(strategy).__name__
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        name = "MultiWorkerMirroredStrategy"  # the class is CollectiveAllReduceStrategy
    devices = list(getattr(strategy.extended, "worker_devices", ()))
    return Distribution(
        name,
        strategy.num_replicas_in_sync,
        strategy.scope,
        strategy=strategy,
        is_chief=_is_chief(strategy),
        devices=devices,
    )


# ------------------------------------------------------------- output folder
def _comparable(config):
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS}


def prepare_out(config):
    """Create `--out` (or check that it holds a run of the same settings) and
    write config.json. Called only after every check has passed."""
    out = config["out"]
    path = os.path.join(out, CONFIG_JSON)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                previous = json.load(handle)
        except (OSError, ValueError) as error:
            raise ConfigError(f"{path}: unreadable ({error}); use another --out") from None
        # Settings added to the example later read as their old behaviour.
        previous = {**LATER_KEYS, **previous}
        old, new = _comparable(previous), _comparable(config)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise ConfigError(
                f"--out {out} holds a run with other settings ({details}); "
                "resume it with the same settings or use another --out"
            )
    elif os.path.isdir(out) and any(not n.startswith(".") for n in os.listdir(out)):
        raise ConfigError(f"--out {out} is not empty and holds no {CONFIG_JSON}; use another --out")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):  # leftovers of a run killed while writing
        if name.startswith(".tmp-"):
            target = os.path.join(out, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    from cifar10.callbacks import write_atomic

    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------ training
def _learning_rate(config, steps_per_epoch):
    import keras

    lr, spe = config["lr"], steps_per_epoch
    if config["lr_schedule"] == "step" and config["lr_boundaries"]:
        bounds = [int(round(b * spe)) for b in config["lr_boundaries"]]
        values = [lr * config["lr_factor"] ** i for i in range(len(bounds) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
    if config["lr_schedule"] == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            lr,
            decay_steps=max(1, int(round(config["lr_decay_epochs"] * spe))),
            decay_rate=config["lr_decay_rate"],
            staircase=config["lr_staircase"],
        )
    return lr


def _make_norms(config):
    from cifar10.norms import Norms

    return Norms(
        config["weight_norm"],
        config["batch_norm"],
        wn_scale=config["wn_scale"],
        bn_momentum=config["bn_momentum"],
        bn_epsilon=config["bn_epsilon"],
        sync_bn=config["sync_bn"],
        top_k=config["top_k"],
        weight_decay=config["weight_decay"],
        weight_decay_scope=config["weight_decay_scope"],
        wrap_classifier=config["wrap_classifier"],
        zero_init_residual=config["zero_init_residual"],
        bwn_per_unit_gain=config["bwn_per_unit_gain"],
        init=config["init"],
    )


def build_and_compile(config, steps_per_epoch):
    import keras

    from cifar10 import models

    model = models.build(
        config["model"],
        _make_norms(config),
        depth=config["depth"],
        width=config["width"],
        shortcut=config["shortcut"],
        blocks=config["inception_blocks"],
    )
    optimizer = keras.optimizers.SGD(
        learning_rate=_learning_rate(config, steps_per_epoch),
        momentum=config["momentum"],
        nesterov=config["nesterov"],
        global_clipnorm=config["clip_norm"],
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile="auto" if config["jit"] is None else config["jit"],
    )
    return model


def export_stripped(model, path):
    """SavedModel of `tfnorms.strip(model)` (plain layers, effective kernels
    baked in); of the model itself where this tfnorms has no `strip`."""
    import tfnorms

    strip = getattr(tfnorms, "strip", None)
    export_model = strip(model) if strip is not None else model
    from cifar10.callbacks import temporary_path

    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    export_model.export(tmp, format="tf_saved_model", verbose=False)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return strip is not None


def tensorboard_available():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _versions():
    import keras
    import numpy as np

    import tfnorms

    versions = {"keras": keras.__version__, "numpy": np.__version__, "tfnorms": tfnorms.__version__}
    for name in ("tensorflow", "jax"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = module.__version__
    return versions


def run(config, strategy=None, stream=None):
    """Train as `config` says; returns a dict with the model and the results.
    Raises DataError, ConfigError, NormError or ModelError on bad input before
    anything is written to `--out`."""
    from cifar10 import data

    stream = stream or sys.stdout
    (x_train, y_train), (x_test, y_test) = data.load_cifar10(config["data_dir"])
    steps_per_epoch = len(x_train) // config["batch_size"]
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--batch-size {config['batch_size']} is larger than the {len(x_train)} training images"
        )
    mean, std = data.channel_stats(x_train)

    import keras

    _make_norms(config).validate()  # unknown or unavailable normalizations fail here
    dist = make_distribution(config, strategy)
    if config["batch_size"] % dist.replicas:
        raise ConfigError(
            f"--batch-size {config['batch_size']} does not split evenly across "
            f"{dist.replicas} replicas ({dist.kind}); use a multiple of {dist.replicas}"
        )
    if config["jit"] and dist.kind == "MirroredStrategy" and dist.replicas > 1:
        print(
            "warning: --jit under MirroredStrategy fails in Keras 3 fit on some setups "
            "(docs/reproducing.md)",
            file=sys.stderr,
        )
    out = config["out"]
    if dist.is_chief:
        prepare_out(config)

    previous_policy = keras.config.dtype_policy()
    if config["mixed_precision"] != "none":
        keras.config.set_dtype_policy("mixed_" + config["mixed_precision"])
    if keras.backend.backend() == "jax" and dist.kind == "jax-data-parallel":
        keras.distribution.set_distribution(dist.strategy)
    try:
        keras.utils.set_random_seed(config["seed"])
        with dist.scope():
            model = build_and_compile(config, steps_per_epoch)
        result = _train(
            config,
            model,
            dist,
            (x_train, y_train),
            (x_test, y_test),
            mean,
            std,
            steps_per_epoch,
            stream,
        )
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if keras.backend.backend() == "jax":
            keras.distribution.set_distribution(None)
    result["out"] = out
    return result


def _train(config, model, dist, train, test, mean, std, steps_per_epoch, stream):
    import keras

    from cifar10 import callbacks as cbs
    from cifar10 import data, loop

    out = config["out"]
    global_batch = config["batch_size"]
    images_per_epoch = steps_per_epoch * global_batch
    callback_objects = [cbs.Throughput(images_per_epoch)]
    if keras.backend.backend() == "tensorflow" and not config["sync_bn"]:
        callback_objects.append(cbs.SyncMovingStatistics(dist.strategy))
    if config["slow_steps"]:
        callback_objects.append(cbs.SlowSteps(config["slow_steps"]))
    if dist.is_chief:
        callback_objects += [
            cbs.EpochLog(out, config["epochs"], stream=stream),
            cbs.BestModel(out),
        ]
        if tensorboard_available():
            callback_objects.append(
                keras.callbacks.TensorBoard(os.path.join(out, TENSORBOARD), write_graph=False)
            )
        else:
            print(
                "note: the tensorboard package is not installed: no TensorBoard logs "
                "(pip install tensorboard)",
                file=stream,
            )
    # Last, so that every other file of an epoch is written before the backup
    # says the epoch is done (a kill in between re-runs the epoch).
    backup = cbs.ResumableBackup(out, is_chief=dist.is_chief)
    if dist.is_chief:
        backup.repair()
    callback_objects.append(backup)
    print(
        f"{model.name}: {model.count_params():,} parameters; {config['weight_norm']} weight "
        f"norm, {config['batch_norm']} batch norm; {dist.kind} with {dist.replicas} "
        f"replica(s); {steps_per_epoch} steps of {global_batch} images per epoch",
        file=stream,
        flush=True,
    )

    test_ds = data.eval_dataset(*test, global_batch, mean, std)
    started = time.perf_counter()
    if dist.kind == "MultiWorkerMirroredStrategy":

        def train_fn(input_context):
            return data.train_dataset(
                *train,
                global_batch,
                mean,
                std,
                seed=config["seed"],
                flip=config["flip"],
                pad=config["pad"],
                input_context=input_context,
                repeat=True,
            )

        callback_list = keras.callbacks.CallbackList(callback_objects, model=model)
        loop.train(
            model,
            dist.strategy,
            train_fn,
            test_ds,
            epochs=config["epochs"],
            steps_per_epoch=steps_per_epoch,
            global_batch=global_batch,
            callback_list=callback_list,
            out_dir=out,
            is_chief=dist.is_chief,
            verbose=config["verbose"],
        )
    else:
        train_ds = data.train_dataset(
            *train,
            global_batch,
            mean,
            std,
            seed=config["seed"],
            flip=config["flip"],
            pad=config["pad"],
        )
        model.fit(
            train_ds,
            epochs=config["epochs"],
            validation_data=test_ds,
            shuffle=False,
            callbacks=callback_objects,
            verbose=config["verbose"],
        )
    wall = time.perf_counter() - started
    result = {"model": model, "is_chief": dist.is_chief}
    if not dist.is_chief:
        return result

    rows = cbs.read_log(out)
    final_model = os.path.join(out, FINAL_MODEL)
    cbs.save_model_atomic(model, final_model)
    stripped = export_stripped(model, os.path.join(out, SAVED_MODEL))
    speeds = [r["images_per_second"] for r in rows if r.get("images_per_second")]
    steady = [
        r["images_per_second"] for r in rows if r.get("images_per_second") and not r.get("warmup")
    ]
    steady = steady or speeds
    last = rows[-1] if rows else {}
    best = max(
        (r for r in rows if r.get("val_accuracy") is not None),
        key=lambda r: r["val_accuracy"],
        default={},
    )
    results = {
        "config": config,
        "backend": keras.backend.backend(),
        "distribution": {"kind": dist.kind, "replicas": dist.replicas, "devices": dist.devices},
        "versions": _versions(),
        "parameters": int(model.count_params()),
        "train_images": int(len(train[0])),
        "test_images": int(len(test[0])),
        "channel_mean": [float(v) for v in mean],
        "channel_std": [float(v) for v in std],
        "epochs": rows,
        "final_test_error": None if not last else 1 - last["val_accuracy"],
        "final_test_loss": last.get("val_loss"),
        "best_test_error": None if not best else 1 - best["val_accuracy"],
        "best_epoch": best.get("epoch"),
        "diverged": any(r.get("loss") is None or not math.isfinite(r["loss"]) for r in rows),
        "images_per_second": statistics.median(steady) if steady else None,
        "images_per_second_note": "median over the epochs that were not the first of their "
        "process (those include tracing and compilation; all epochs if there are no others); "
        "training steps only, test-set evaluation excluded",
        "wall_seconds_this_invocation": wall,
        "saved_model_stripped": stripped,
        "files": {
            "final": FINAL_MODEL,
            "best": cbs.BEST_MODEL,
            "saved_model": SAVED_MODEL,
            "log": cbs.LOG_CSV,
            "tensorboard": TENSORBOARD,
        },
    }
    if not stripped:
        results["saved_model_note"] = (
            "tfnorms.strip is not available in this tfnorms: the "
            "SavedModel holds the unstripped model"
        )
    cbs.write_atomic(os.path.join(out, RESULTS_JSON), json.dumps(results, indent=2) + "\n")
    if results["diverged"]:
        print(
            "warning: the training loss is not finite (diverged); try a lower --lr",
            file=stream,
            flush=True,
        )
    error = results["final_test_error"]
    print(
        f"done: final test error {100 * error:.2f}%, {results['images_per_second'] or 0:.1f} "
        f"images/s; outputs in {out}"
        if error is not None
        else f"done; outputs in {out}",
        file=stream,
        flush=True,
    )
    result["results"] = results
    return result


def main(argv=None, strategy=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code
    try:
        config = resolve(args)
        configure_devices(config)
        run(config, strategy=strategy)
    except (ConfigError, DataError, NormError, ModelError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
