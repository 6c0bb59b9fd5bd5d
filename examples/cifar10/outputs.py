"""What a run writes in `--out`, and reads back from it when it resumes.

Every file is written atomically (a temporary file, then `os.replace`), so a
run killed at any point leaves either the old or the new version of each
file, never half of one; the next start removes the temporary leftovers.
`train.py --help` lists the files, docs/reproducing.md says what is in them.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import shutil
import statistics
import sys

from cifar10.settings import RUNTIME_KEYS, ConfigError

CONFIG_JSON = "config.json"
BACKUP_DIR = "backup"
LOG_CSV = "log.csv"
TENSORBOARD = "tensorboard"
BEST_MODEL = "best.keras"
BEST_JSON = "best.json"
FINAL_MODEL = "final.keras"
SAVED_MODEL = "saved_model"
RESULTS_JSON = "results.json"
# The columns of log.csv, first; any other per-epoch value follows them.
COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "train_seconds",
    "epoch_seconds",
    "images_per_second",
    "warmup",
)


# ------------------------------------------------------------------ writing
def temporary_path(path):
    """A hidden name beside `path` (`.tmp-NAME`), removed at the next start."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".tmp-{name}")


def write_atomic(path, text):
    tmp = temporary_path(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_model_atomic(model, path):
    """`model.save(path)` through a temporary `.keras` file beside it."""
    tmp = temporary_path(path)
    model.save(tmp)
    os.replace(tmp, path)


def export_stripped(model, path):
    """SavedModel of `tfnorms.strip(model)`: plain layers with the effective
    kernels baked in, which serve without tfnorms."""
    import tfnorms

    tmp = temporary_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tfnorms.strip(model).export(tmp, format="tf_saved_model", verbose=False)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def write_log(out_dir, rows):
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in keys})
    write_atomic(os.path.join(out_dir, LOG_CSV), buffer.getvalue())


# -------------------------------------------------------------- reading back
def backed_up_epochs(out_dir):
    """How many epochs the backup in `out_dir` holds (0 without one)."""
    path = os.path.join(out_dir, BACKUP_DIR, "training_metadata.json")
    try:
        with open(path, encoding="utf-8") as handle:
            return int(json.load(handle)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_log(out_dir):
    path = os.path.join(out_dir, LOG_CSV)
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {k: (int(v) if k == "epoch" else _number(v)) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------ start and end of a run
def prepare_out(config):
    """Create `--out` (or check that it holds a run of the same settings),
    remove a killed run's temporary files, and write config.json. Called
    only after every check has passed."""
    out = config["out"]
    path = os.path.join(out, CONFIG_JSON)
    if os.path.exists(path):
        _check_same_run(path, config)
    elif os.path.isdir(out) and any(not n.startswith(".") for n in os.listdir(out)):
        raise ConfigError(f"--out {out} is not empty and holds no {CONFIG_JSON}; use another --out")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(out):
        if name.startswith(".tmp-"):
            target = os.path.join(out, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _check_same_run(path, config):
    try:
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: unreadable ({error}); use another --out") from None
    old, new = _comparable(previous), _comparable(config)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigError(
            f"--out {config['out']} holds a run with other settings ({details}); "
            "resume it with the same settings or use another --out"
        )


def _comparable(config):
    return {k: v for k, v in config.items() if k not in RUNTIME_KEYS}


def tensorflow_available():
    """Whether TensorFlow is installed (on JAX or PyTorch it may not be)."""
    return importlib.util.find_spec("tensorflow") is not None


def finish(config, model, dist, cifar, wall, stream):
    """The chief's last writes: final.keras, the stripped SavedModel, then
    results.json, last, so that it exists only for a finished run."""
    out = config["out"]
    rows = read_log(out)
    save_model_atomic(model, os.path.join(out, FINAL_MODEL))
    # A SavedModel is TensorFlow's format: JAX or PyTorch alone cannot write one.
    exported = tensorflow_available()
    if exported:
        export_stripped(model, os.path.join(out, SAVED_MODEL))
    else:
        print("TensorFlow is not installed: no SavedModel export", file=stream, flush=True)
    results = summarize(config, model, dist, cifar, rows, wall)
    if not exported:
        results["files"]["saved_model"] = None
    write_atomic(os.path.join(out, RESULTS_JSON), json.dumps(results, indent=2) + "\n")
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
    return results


def summarize(config, model, dist, cifar, rows, wall):
    """results.json: the settings, where the run trained, the per-epoch log
    `rows` and what they add up to."""
    import keras

    last = rows[-1] if rows else {}
    best = max(
        (r for r in rows if r.get("val_accuracy") is not None),
        key=lambda r: r["val_accuracy"],
        default={},
    )
    return {
        "config": config,
        "backend": keras.backend.backend(),
        "distribution": {"kind": dist.kind, "replicas": dist.replicas, "devices": dist.devices},
        "versions": _versions(),
        "parameters": int(model.count_params()),
        "train_images": int(len(cifar.train[0])),
        "test_images": int(len(cifar.test[0])),
        "channel_mean": [float(v) for v in cifar.mean],
        "channel_std": [float(v) for v in cifar.std],
        "epochs": rows,
        "final_test_error": None if not last else 1 - last["val_accuracy"],
        "final_test_loss": last.get("val_loss"),
        "best_test_error": None if not best else 1 - best["val_accuracy"],
        "best_epoch": best.get("epoch"),
        "diverged": any(r.get("loss") is None or not math.isfinite(r["loss"]) for r in rows),
        "images_per_second": _steady_images_per_second(rows),
        "images_per_second_note": "median over the epochs that were not the first of their "
        "process (those include tracing and compilation; all epochs if there are no others); "
        "training steps only, test-set evaluation excluded",
        "wall_seconds_this_invocation": wall,
        "files": {
            "final": FINAL_MODEL,
            "best": BEST_MODEL,
            "saved_model": SAVED_MODEL,
            "log": LOG_CSV,
            "tensorboard": TENSORBOARD,
        },
    }


def _steady_images_per_second(rows):
    speeds = [r for r in rows if r.get("images_per_second")]
    steady = [r for r in speeds if not r.get("warmup")] or speeds
    return statistics.median(r["images_per_second"] for r in steady) if steady else None


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
