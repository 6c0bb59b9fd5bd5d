#!/usr/bin/env python
"""Train the papers' CIFAR-10 networks with tfnorms normalizations.

    python examples/cifar10/train.py --preset resnet56 --batch-norm l1 --out outputs/r56-l1

`--help` lists every flag, preset and output. This module runs the training;
`settings` holds the command line and its checks, `distribution` the devices
and strategies, `outputs` what a run writes in `--out`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time

_EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

from cifar10 import outputs  # noqa: E402
from cifar10.data import DataError  # noqa: E402
from cifar10.distribution import configure_devices, make_distribution  # noqa: E402
from cifar10.models import ModelError  # noqa: E402
from cifar10.norms import NormError, Norms  # noqa: E402
from cifar10.settings import ConfigError, build_parser, resolve  # noqa: E402


def run(config, strategy=None, stream=None):
    """Train as `config` says; returns a dict with the model and the results.
    Raises DataError, ConfigError, NormError or ModelError on bad input before
    anything is written to `--out`."""
    from cifar10 import data

    stream = stream or sys.stdout
    cifar = data.Cifar10.load(config["data_dir"])
    steps_per_epoch = len(cifar.train[0]) // config["batch_size"]
    if steps_per_epoch == 0:
        raise ConfigError(
            f"--batch-size {config['batch_size']} is larger than the "
            f"{len(cifar.train[0])} training images"
        )
    Norms.from_settings(config).validate()
    dist = make_distribution(config, strategy)
    _check_replicas(config, dist)
    if dist.is_chief:
        outputs.prepare_out(config)
    with _global_keras_state(config, dist):
        import keras

        keras.utils.set_random_seed(config["seed"])
        with dist.scope():
            model = build_and_compile(config, steps_per_epoch)
        result = _train(config, model, dist, cifar, steps_per_epoch, stream)
    result["out"] = config["out"]
    return result


def _check_replicas(config, dist):
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


@contextlib.contextmanager
def _global_keras_state(config, dist):
    """The run's dtype policy and (JAX) distribution, undone afterwards, so
    that in-process callers (tests) get Keras back as it was."""
    import keras

    previous_policy = keras.config.dtype_policy()
    if config["mixed_precision"] != "none":
        keras.config.set_dtype_policy("mixed_" + config["mixed_precision"])
    if keras.backend.backend() == "jax" and dist.kind == "jax-data-parallel":
        keras.distribution.set_distribution(dist.strategy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if keras.backend.backend() == "jax":
            keras.distribution.set_distribution(None)


# ------------------------------------------------------------------- model
def build_and_compile(config, steps_per_epoch):
    import keras

    from cifar10 import models

    model = models.build(
        config["model"],
        Norms.from_settings(config),
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


# ---------------------------------------------------------------- training
def _train(config, model, dist, cifar, steps_per_epoch, stream):
    callbacks = _callbacks(config, dist, steps_per_epoch * config["batch_size"], stream)
    print(
        f"{model.name}: {model.count_params():,} parameters; {config['weight_norm']} weight "
        f"norm, {config['batch_norm']} batch norm; {dist.kind} with {dist.replicas} "
        f"replica(s); {steps_per_epoch} steps of {config['batch_size']} images per epoch",
        file=stream,
        flush=True,
    )
    started = time.perf_counter()
    _fit(config, model, dist, cifar, steps_per_epoch, callbacks)
    wall = time.perf_counter() - started
    result = {"model": model, "is_chief": dist.is_chief}
    if dist.is_chief:
        result["results"] = outputs.finish(config, model, dist, cifar, wall, stream)
    return result


def _callbacks(config, dist, images_per_epoch, stream):
    import keras

    from cifar10 import callbacks as cbs

    out = config["out"]
    chosen = [cbs.Throughput(images_per_epoch)]
    if keras.backend.backend() == "tensorflow" and not config["sync_bn"]:
        chosen.append(cbs.SyncMovingStatistics(dist.strategy))
    if config["slow_steps"]:
        chosen.append(cbs.SlowSteps(config["slow_steps"]))
    if dist.is_chief:
        chosen += [cbs.EpochLog(out, config["epochs"], stream=stream), cbs.BestModel(out)]
        if tensorboard_available():
            log_dir = os.path.join(out, outputs.TENSORBOARD)
            chosen.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
        else:
            print(
                "note: Keras's TensorBoard logs need the tensorflow and tensorboard "
                "packages, and one is not installed: no TensorBoard logs",
                file=stream,
            )
    # Last, so that every other file of an epoch is written before the backup
    # says the epoch is done (a kill in between re-runs the epoch).
    backup = cbs.ResumableBackup(out, is_chief=dist.is_chief)
    if dist.is_chief:
        backup.repair()
    return chosen + [backup]


def tensorboard_available():
    # Keras's TensorBoard callback writes through TensorFlow's summary ops.
    return outputs.tensorflow_available() and importlib.util.find_spec("tensorboard") is not None


def _fit(config, model, dist, cifar, steps_per_epoch, callbacks):
    """Keras `fit`, or the custom loop under MultiWorkerMirroredStrategy
    (where Keras 3's `fit` fails; loop.py)."""
    import keras

    from cifar10 import data, loop

    batch = config["batch_size"]
    augment = {"seed": config["seed"], "flip": config["flip"], "pad": config["pad"]}
    if keras.backend.backend() != "tensorflow" and not outputs.tensorflow_available():
        # JAX or PyTorch alone: the NumPy pipeline (batches.py).
        from cifar10 import batches

        train_data = batches.TrainBatches(*cifar.train, batch, cifar.mean, cifar.std, **augment)
        test = batches.EvalBatches(*cifar.test, batch, cifar.mean, cifar.std)
    else:
        train_data = data.train_dataset(*cifar.train, batch, cifar.mean, cifar.std, **augment)
        test = data.eval_dataset(*cifar.test, batch, cifar.mean, cifar.std)
    if dist.kind != "MultiWorkerMirroredStrategy":
        model.fit(
            train_data,
            epochs=config["epochs"],
            validation_data=test,
            shuffle=False,
            callbacks=callbacks,
            verbose=config["verbose"],
        )
        return

    def train_fn(input_context):
        return data.train_dataset(
            *cifar.train, batch, cifar.mean, cifar.std,
            input_context=input_context, repeat=True, **augment,
        )  # fmt: skip

    loop.train(
        model,
        dist.strategy,
        train_fn,
        test,
        epochs=config["epochs"],
        steps_per_epoch=steps_per_epoch,
        global_batch=batch,
        callback_list=keras.callbacks.CallbackList(callbacks, model=model),
        out_dir=config["out"],
        is_chief=dist.is_chief,
        verbose=config["verbose"],
    )


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
