"""Callbacks that make a run resumable and observable, for `fit` and for the
multi-worker custom loop alike.

The epoch log is cut back to the epochs that the backup holds when a run
resumes, so every epoch is logged exactly once however often the run was
killed. Files are written through `outputs`, atomically.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time

import keras

from cifar10.outputs import (
    BACKUP_DIR,
    BEST_JSON,
    BEST_MODEL,
    backed_up_epochs,
    read_log,
    save_model_atomic,
    write_atomic,
    write_log,
)


def _readable_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
        return True
    except (OSError, ValueError):
        return False


def _to_float(value):
    try:
        return float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None


def current_lr(optimizer):
    return _to_float(optimizer.learning_rate)


# ---------------------------------------------------------------- callbacks
class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` in `out/backup`, kept after the run (so that running
    a finished command again only rewrites the final outputs), with two
    generations of weights (a kill during a save falls back to the previous
    one), and written by the chief alone in a multi-worker run (the others
    restore from it but never write)."""

    def __init__(self, out_dir, is_chief=True):
        super().__init__(
            os.path.join(out_dir, BACKUP_DIR), double_checkpoint=True, delete_checkpoint=False
        )
        self.is_chief = is_chief

    def repair(self):
        """A kill while Keras wrote `training_metadata.json` (not atomic)
        leaves it unreadable: go back to the previous generation. Call it
        before training, before anything reads the backup."""
        metadata = self._training_metadata_path
        if not os.path.exists(metadata) or _readable_json(metadata):
            return
        previous = self._prev_training_metadata_path
        if os.path.exists(previous) and _readable_json(previous):
            shutil.copyfile(self._prev_weights_path, self._weights_path)
            shutil.copyfile(previous, metadata)
        else:  # nothing consistent to go back to: start again
            for path in (metadata, self._weights_path):
                if os.path.exists(path):
                    os.remove(path)

    def on_epoch_end(self, epoch, logs=None):
        if self.is_chief:
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        pass


class Throughput(keras.callbacks.Callback):
    """Adds `train_seconds`, `epoch_seconds`, `images_per_second` (training
    images over training time, validation excluded), `warmup` (1 for the
    first epoch of a process, which includes tracing) and `lr` to each
    epoch's logs."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._start = self._train_seconds = None
        self._epochs_seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        if self._start is not None and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        elapsed = time.perf_counter() - self._start
        train = self._train_seconds if self._train_seconds is not None else elapsed
        logs["train_seconds"] = train
        logs["epoch_seconds"] = elapsed
        logs["images_per_second"] = self.images_per_epoch / max(train, 1e-9)
        # The first epoch of each process includes tracing and compilation.
        logs["warmup"] = 1.0 if self._epochs_seen == 0 else 0.0
        self._epochs_seen += 1
        if self.model is not None and getattr(self.model, "optimizer", None) is not None:
            logs["lr"] = current_lr(self.model.optimizer)


class SlowSteps(keras.callbacks.Callback):
    """Test hook (`--slow-steps`): sleep after every training step."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


class EpochLog(keras.callbacks.Callback):
    """`log.csv` (one row per epoch, each epoch once across restarts) and a
    one-line summary per epoch on stdout."""

    def __init__(self, out_dir, epochs, stream=None):
        super().__init__()
        self.out_dir = out_dir
        self.epochs = epochs
        self.stream = stream or sys.stdout
        self.rows = []

    def on_train_begin(self, logs=None):
        done = backed_up_epochs(self.out_dir)
        self.rows = [row for row in read_log(self.out_dir) if row["epoch"] <= done]
        self._write()
        if done:
            print(f"resuming from the backup after epoch {done}/{self.epochs}", file=self.stream)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1}
        for key, value in logs.items():
            number = _to_float(value)
            if number is not None:
                row[key] = number
        self.rows = [r for r in self.rows if r["epoch"] < epoch + 1] + [row]
        self._write()
        print(summary_line(row, self.epochs), file=self.stream, flush=True)

    def _write(self):
        write_log(self.out_dir, self.rows)


def summary_line(row, epochs):
    def fmt(key, spec):
        value = row.get(key)
        return "-" if value is None or not math.isfinite(value) else format(value, spec)

    error = row.get("val_accuracy")
    error = "-" if error is None else f"{100 * (1 - error):.2f}%"
    return (
        f"epoch {row['epoch']}/{epochs}: loss {fmt('loss', '.4f')} "
        f"accuracy {fmt('accuracy', '.4f')} | test loss {fmt('val_loss', '.4f')} "
        f"error {error} | lr {fmt('lr', '.4g')} | "
        f"{fmt('images_per_second', '.1f')} images/s ({fmt('train_seconds', '.1f')} s training)"
    )


class BestModel(keras.callbacks.Callback):
    """`best.keras`: the model with the highest test accuracy so far, and
    `best.json` (its epoch and accuracy); across restarts the best so far is
    taken from the epochs that the backup holds."""

    def __init__(self, out_dir, monitor="val_accuracy"):
        super().__init__()
        self.out_dir = out_dir
        self.monitor = monitor
        self.best = None

    def on_train_begin(self, logs=None):
        done = backed_up_epochs(self.out_dir)
        kept = [r[self.monitor] for r in read_log(self.out_dir) if r["epoch"] <= done]
        kept = [v for v in kept if v is not None and math.isfinite(v)]
        self.best = max(kept) if kept else None
        try:
            with open(os.path.join(self.out_dir, BEST_JSON), encoding="utf-8") as handle:
                saved_epoch = json.load(handle)["epoch"]
        except (OSError, ValueError, KeyError, TypeError):
            saved_epoch = None
        if saved_epoch is not None and saved_epoch > done:
            # Saved by an epoch that the backup does not hold (killed before
            # the backup): replace it with the next epoch's model.
            self.best = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value > self.best:
            self.best = value
            save_model_atomic(self.model, os.path.join(self.out_dir, BEST_MODEL))
            write_atomic(
                os.path.join(self.out_dir, BEST_JSON),
                json.dumps({"epoch": epoch + 1, self.monitor: value}) + "\n",
            )


class SyncMovingStatistics(keras.callbacks.Callback):
    """Average the batch norms' moving statistics over the replicas before
    each evaluation and at the end of training (TensorFlow strategies).

    Without `--sync-bn`, every replica normalizes with its own batch's
    statistics (as the papers' multi-GPU runs did) and, in Keras 3, also
    updates its own copy of `moving_mean` / `moving_variance`: the copies
    drift apart, evaluation mixes them, and `model.save` keeps replica 0's.
    One all-reduce per evaluation makes them one value again, so the saved
    models predict exactly what the trained model does.
    """

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy
        self._function = None

    def _variables(self):
        return [
            v
            for v in self.model.non_trainable_variables
            if "float" in str(v.dtype) and v.path.split("/")[-1].startswith("moving_")
        ]

    def sync(self):
        if self.strategy is None or self.strategy.num_replicas_in_sync == 1:
            return
        import tensorflow as tf

        if self._function is None:
            variables = self._variables()
            if not variables:
                self._function = lambda: None
            else:

                def average():
                    context = tf.distribute.get_replica_context()
                    values = [tf.convert_to_tensor(v.value) for v in variables]
                    means = context.all_reduce(tf.distribute.ReduceOp.MEAN, values)
                    for variable, mean in zip(variables, means, strict=True):
                        variable.assign(mean)

                self._function = tf.function(lambda: self.strategy.run(average))
        self._function()

    def on_test_begin(self, logs=None):
        self.sync()

    def on_train_end(self, logs=None):
        self.sync()
