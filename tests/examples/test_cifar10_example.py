"""The CIFAR-10 example (examples/cifar10): the safe loader on a
miniature archive in the real format, one epoch of each model family under
MirroredStrategy on two logical CPUs, reloading what it saved, resuming after
SIGKILL, two local MultiWorkerMirroredStrategy workers, and bad input.

Training runs in this process where it can (reusing the suite's one
MirroredStrategy); the kill/resume and multi-worker tests need their own
processes (train.py --cpu-replicas 2 splits the CPU there).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import keras
import numpy as np
import pytest
from cifar10_helpers import (
    TRAIN_SCRIPT,
    data,
    make_archive,
    make_images,
    make_tampered_archive,
    train,
)
from processes import free_ports, run_together

TINY = ["--epochs", "1", "--batch-size", "32", "--verbose", "0"]
FAMILIES = {
    # Each family with another weight norm and batch norm, in the papers' pairings.
    "resnet": ["--preset", "normmatters-resnet56-bwn", "--depth", "8", "--width", "0.25"],
    "vgg-a": ["--preset", "vgg-a", "--width", "0.0625", "--weight-norm", "wn",
              "--batch-norm", "topk", "--top-k", "4", "--lr", "0.05"],
    "googlenet": ["--preset", "googlenet", "--width", "0.0625", "--inception-blocks", "1",
                  "--weight-norm", "cwn", "--batch-norm", "l2"],
}  # fmt: skip
EXPECTED_OUTPUTS = {
    "config.json",
    "backup",
    "log.csv",
    "best.keras",
    "best.json",
    "final.keras",
    "saved_model",
    "results.json",
}


def _subprocess_env(**extra):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _expected_outputs():
    return EXPECTED_OUTPUTS | ({"tensorboard"} if train.tensorboard_available() else set())


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar") / data.ARCHIVE_NAME
    arrays = make_archive(path, n_train=320, n_test=64)
    return path, arrays


def _log_epochs(out):
    with open(os.path.join(out, "log.csv"), newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


# ----------------------------------------------------------------- the loader
def test_help_prints_every_preset_without_importing_tensorflow():
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in ("resnet56", "normmatters-resnet56-bwn", "vgg-a", "googlenet",
                 "normmatters-vgg-wd"):  # fmt: skip
        assert f"  {name}" in result.stdout
    assert "--lr-boundaries 80,120" in result.stdout
    assert "--weight-decay-scope classifier" in result.stdout


def test_loader_reads_the_archive_its_folder_and_its_parent(archive, tmp_path):
    path, ((x_train, y_train), (x_test, y_test)) = archive
    for source in (path, path.parent):
        (xa, ya), (xt, yt) = data.load_cifar10(source)
        np.testing.assert_array_equal(xa, x_train)
        np.testing.assert_array_equal(ya, y_train)
        np.testing.assert_array_equal(xt, x_test)
        np.testing.assert_array_equal(yt, y_test)
        assert xa.dtype == np.uint8 and xa.shape == (320, 32, 32, 3)
    with tarfile.open(path) as handle:
        handle.extractall(tmp_path, filter="data")
    for folder in (tmp_path / data.INNER_FOLDER, tmp_path):
        (xa, ya), (xt, _) = data.load_cifar10(folder)
        np.testing.assert_array_equal(xa, x_train)
        np.testing.assert_array_equal(xt, x_test)


def test_pipeline_standardizes_augments_and_batches(archive):
    _, ((x, y), _) = archive
    mean, std = data.channel_stats(x)
    batches = list(data.train_dataset(x, y, 64, mean, std, seed=0))
    assert len(batches) == 320 // 64
    images = np.concatenate([b[0].numpy() for b in batches])
    assert images.shape == (320, 32, 32, 3) and images.dtype == np.float32
    # Standardized: zero-padded crops pull the statistics slightly towards 0.
    assert np.all(np.abs(images.mean(axis=(0, 1, 2))) < 0.2)
    assert np.all(np.abs(images.std(axis=(0, 1, 2)) - 1) < 0.2)
    evaluation = list(data.eval_dataset(x[:70], y[:70], 32, mean, std))
    assert [len(b[1]) for b in evaluation] == [32, 32, 6]
    np.testing.assert_allclose(
        evaluation[0][0].numpy(), data.standardize_numpy(x[:32], mean, std), atol=1e-5
    )


def test_numpy_pipeline_standardizes_flips_crops_and_reshuffles(archive):
    """The pipeline for JAX or PyTorch without TensorFlow (batches.py): every
    training image is a horizontal flip or not, then a 32x32 window of the
    standardized image zero-padded by 4, with its own label; each epoch is a
    new permutation of every example; evaluation is in order."""
    from cifar10 import batches

    _, ((x, y), _) = archive
    mean, std = data.channel_stats(x)
    standardized = data.standardize_numpy(x, mean, std)
    padded = np.pad(standardized, ((0, 0), (4, 4), (4, 4), (0, 0)))
    train_data = batches.TrainBatches(x, y, 64, mean, std, seed=0)
    assert len(train_data) == 320 // 64
    first_order = train_data.order.copy()
    assert sorted(first_order) == list(range(320))
    flips = crops = 0
    for index in range(len(train_data)):
        images, labels = train_data[index]
        assert images.shape == (64, 32, 32, 3) and images.dtype == np.float32
        source = first_order[index * 64 : (index + 1) * 64]
        np.testing.assert_array_equal(labels, y[source])
        for image, i in zip(images, source, strict=True):
            windows = [
                (flip, r, c)
                for flip in (False, True)
                for r in range(9)
                for c in range(9)
                if np.array_equal(
                    image, (padded[i, :, ::-1] if flip else padded[i])[r : r + 32, c : c + 32]
                )
            ]
            assert windows, "not a flipped or plain crop of the padded image"
            flips += windows[0][0]
            crops += windows[0][1:] != (4, 4)
    assert 0 < flips < 320 and crops > 0  # random, not all or nothing
    train_data.on_epoch_end()
    assert not np.array_equal(train_data.order, first_order)
    evaluation = batches.EvalBatches(x[:70], y[:70], 32, mean, std)
    assert [len(evaluation[i][1]) for i in range(len(evaluation))] == [32, 32, 6]
    np.testing.assert_array_equal(evaluation[2][0], standardized[64:70])


def test_tampered_pickle_is_refused_and_runs_nothing(archive, tmp_path, capsys):
    marker = tmp_path / "pwned"
    tampered = tmp_path / "tampered.tar.gz"
    make_tampered_archive(tampered, archive[0], f"touch {marker}")
    with pytest.raises(data.DataError, match=r"refusing to load '(posix|os|nt)\.system'"):
        data.load_cifar10(tampered)
    out = tmp_path / "out"
    code = train.main(["--data-dir", str(tampered), "--out", str(out), *TINY])
    assert code != 0
    assert "untrusted or corrupt pickle" in capsys.readouterr().err
    assert not marker.exists()
    assert not out.exists()


# ------------------------------------------------------------------ bad input
def _truncated(archive, tmp_path):
    payload = archive[0].read_bytes()
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(payload[: len(payload) // 2])
    return path


def _garbage(archive, tmp_path):
    path = tmp_path / "garbage.tar.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _empty_folder(archive, tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "make_source, message",
    [
        (_truncated, "corrupt or truncated"),
        (_garbage, "corrupt or truncated"),
        (lambda archive, tmp_path: tmp_path / "missing", "no such file or folder"),
        (_empty_folder, "not the CIFAR-10 python version"),
    ],
    ids=["truncated", "garbage", "missing", "wrong-folder"],
)
def test_bad_data_dir_fails_cleanly(archive, tmp_path, capsys, make_source, message):
    out = tmp_path / "out"
    code = train.main(["--data-dir", str(make_source(archive, tmp_path)), "--out", str(out), *TINY])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "resnet-1001"], "invalid choice: 'resnet-1001'"),
        (["--weight-norm", "spectral"], "invalid choice: 'spectral'"),
        (["--batch-norm", "group"], "invalid choice: 'group'"),
        (["--depth", "21"], "depth 6n+2"),
        (["--preset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--top-k", "0"], "--top-k 0: must be >= 1"),
        (["--weight-decay", "inf"], "--weight-decay inf: must be a finite number >= 0"),
    ],
    ids=["model", "weight-norm", "batch-norm", "depth", "preset", "top-k", "weight-decay"],
)
def test_bad_names_fail_cleanly(archive, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    code = train.main(["--data-dir", str(archive[0]), "--out", str(out), *TINY, *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_layers_check_their_arguments_with_the_same_rules():
    from cifar10 import models
    from cifar10.norms import NormError, Norms

    with pytest.raises(NormError, match=r"^--top-k 0: must be >= 1$"):
        Norms("none", "topk", top_k=0)
    with pytest.raises(NormError, match=r"^--weight-norm 'spectral': choose one of none, wn"):
        Norms("spectral")
    with pytest.raises(models.ModelError, match=r"^--depth 21: a CIFAR ResNet has depth 6n\+2"):
        models.resnet(Norms(), depth=21)


@pytest.mark.tensorflow_only
def test_batch_not_divisible_by_replicas_fails_before_writing(archive, tmp_path, capsys):
    from layer_checks import mirrored_strategy

    out = tmp_path / "out"
    args = ["--data-dir", str(archive[0]), "--out", str(out), *TINY, *FAMILIES["resnet"]]
    code = train.main([*args, "--batch-size", "33"], strategy=mirrored_strategy())
    assert code == 2
    assert "does not split evenly across 2 replicas" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.tensorflow_only
def test_out_holding_another_run_is_refused_untouched(archive, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    config = out / "config.json"
    config.write_text(json.dumps({"model": "vgg-a"}))
    code = train.main(["--data-dir", str(archive[0]), "--out", str(out), *TINY])
    assert code == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["config.json"]
    assert json.loads(config.read_text()) == {"model": "vgg-a"}


# ------------------------------------------------------------- resume pieces
def _fake_backup(out, epoch, previous=None):
    backup = out / "backup"
    backup.mkdir(parents=True, exist_ok=True)
    (backup / "latest.weights.h5").write_bytes(b"weights of epoch %d" % epoch)
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": epoch, "batch": 0}))
    if previous is not None:
        (backup / "latest.weights.h5.bkp").write_bytes(b"weights of epoch %d" % previous)
        (backup / "training_metadata.json.bkp").write_text(
            json.dumps({"epoch": previous, "batch": 0})
        )
    return backup


def test_log_is_cut_back_to_the_epochs_the_backup_holds(tmp_path, capsys):
    from cifar10 import callbacks

    _fake_backup(tmp_path, 2)
    log = callbacks.EpochLog(str(tmp_path), epochs=5)
    log.rows = [{"epoch": e, "loss": 1.0 / e, "val_accuracy": 0.1 * e} for e in (1, 2, 3)]
    log._write()  # epoch 3 was logged, then the run was killed before its backup
    callbacks.EpochLog(str(tmp_path), epochs=5).on_train_begin()
    assert _log_epochs(tmp_path) == [1, 2]
    assert "resuming from the backup after epoch 2/5" in capsys.readouterr().out
    best = callbacks.BestModel(str(tmp_path))
    best.on_train_begin()
    assert best.best == pytest.approx(0.2)  # from the epochs kept, not the lost epoch 3
    assert not list(tmp_path.glob(".tmp-*"))


def test_unreadable_backup_metadata_falls_back_to_the_previous_generation(tmp_path):
    from cifar10 import callbacks, outputs

    backup = _fake_backup(tmp_path, 3, previous=2)
    (backup / "training_metadata.json").write_text('{"epoch": 3, "ba')  # killed mid-write
    callbacks.ResumableBackup(str(tmp_path)).repair()
    assert outputs.backed_up_epochs(str(tmp_path)) == 2
    assert (backup / "latest.weights.h5").read_bytes() == b"weights of epoch 2"

    backup = _fake_backup(tmp_path / "first", 1)
    (backup / "training_metadata.json").write_text("{")
    callbacks.ResumableBackup(str(tmp_path / "first")).repair()
    assert outputs.backed_up_epochs(str(tmp_path / "first")) == 0
    assert not (backup / "latest.weights.h5").exists()


# ------------------------------------------------------------------- training
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_epoch_mirrored_then_saved_models_reload(archive, tmp_path, family):
    import tensorflow as tf
    from layer_checks import mirrored_strategy

    import tfnorms  # noqa: F401  (registers the classes before load_model)

    out = tmp_path / family
    config = train.resolve(
        train.build_parser().parse_args(
            ["--data-dir", str(archive[0]), "--out", str(out), *TINY, *FAMILIES[family]]
        )
    )
    result = train.run(config, strategy=mirrored_strategy())
    results = json.loads((out / "results.json").read_text())
    assert set(os.listdir(out)) == _expected_outputs()
    assert results["distribution"] == {
        "kind": "MirroredStrategy",
        "replicas": 2,
        "devices": results["distribution"]["devices"],
    }
    assert results["config"]["model"] == family
    assert [row["epoch"] for row in results["epochs"]] == [1]
    assert _log_epochs(out) == [1]
    assert 0 <= results["final_test_error"] <= 1
    assert np.isfinite(results["epochs"][0]["loss"]) and not results["diverged"]
    assert results["images_per_second"] > 0
    assert results["train_images"] == 320 and results["test_images"] == 64

    model = result["model"]
    _, (x_test, _) = archive[1]
    images = data.standardize_numpy(
        x_test[:16], np.array(results["channel_mean"]), np.array(results["channel_std"])
    )
    expected = model.predict(images, verbose=0)

    reloaded = keras.saving.load_model(out / "final.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), expected, atol=1e-5)
    served = tf.saved_model.load(str(out / "saved_model"))
    np.testing.assert_allclose(served.serve(tf.constant(images)).numpy(), expected, atol=1e-4)
    assert keras.saving.load_model(out / "best.keras").count_params() == model.count_params()


# ------------------------------------------- Norm matters weight-norm ResNet
def _preset_model(*flags):
    config = train.resolve(train.build_parser().parse_args(list(flags)))
    return train.build_and_compile(config, steps_per_epoch=10)


def _standardized_images(n, seed=0):
    images, labels = make_images(n, seed)
    images = images.astype("float32")
    images = (images - images.mean(axis=(0, 1, 2))) / images.std(axis=(0, 1, 2))
    return images, labels


def _block_output_stds(model, images):
    """Standard deviation of the stem's output and of every residual block's
    output (after its addition and ReLU), on one batch in training mode."""
    names = ["stem_relu"] + [
        layer.name
        for layer in model.layers
        if layer.name.startswith("stage")
        and layer.name.endswith("_relu")
        and not layer.name.endswith("_a_relu")
    ]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    outputs = [keras.ops.convert_to_numpy(o) for o in probe(images, training=True)]
    return [float(np.std(o)) for o in outputs[:-1]], outputs[-1]


@pytest.mark.slow  # a ResNet-56 recipe property: the TensorFlow pass checks it
@pytest.mark.parametrize("weight_norm", ["bwn", "wn"])
def test_weight_norm_resnet56_starts_with_bounded_activations(weight_norm):
    """With mean-only batch norm nothing rescales the residual stream, so the
    initialization sets its scale (docs/reproducing.md, "The start of the
    weight-normed ResNet-56"). The preset starts from PyTorch's default
    initialization, as the authors' code does: the stream stays bounded and
    the first loss is about ln 10; with `--init he` it grows block by block."""
    images, labels = _standardized_images(32)
    preset = ["--preset", "normmatters-resnet56-bwn", "--weight-norm", weight_norm]
    model = _preset_model(*preset, "--width", "0.5")
    stds, logits = _block_output_stds(model, images)
    assert len(stds) == 1 + 27
    assert max(stds) < 2 * stds[0]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(loss) < 3.0  # ln 10 = 2.30

    he = _preset_model(*preset, "--width", "0.5", "--init", "he")
    he_stds, he_logits = _block_output_stds(he, images)
    assert he_stds[-1] > 20 * he_stds[0]  # geometric growth, which diverges in training
    assert float(np.std(he_logits)) > 10 * float(np.std(logits))


@pytest.mark.slow  # a ResNet-56 recipe property: the TensorFlow pass checks it
@pytest.mark.parametrize("weight_norm", ["bwn", "wn"])
def test_weight_norm_resnet_preset_sgd_steps_reduce_the_loss(weight_norm):
    """The preset's own optimizer (lr 0.1, momentum 0.9, clipping at 5,
    classifier-only weight decay) lowers the loss on a learnable batch and
    keeps it finite."""
    images, labels = _standardized_images(64)
    model = _preset_model(
        "--preset", "normmatters-resnet56-bwn", "--weight-norm", weight_norm,
        "--depth", "14", "--width", "0.5",
    )  # fmt: skip
    losses = [
        float(model.train_on_batch(images, labels, return_dict=True)["loss"]) for _ in range(15)
    ]
    assert np.all(np.isfinite(losses)), losses
    assert max(losses) < losses[0] + 0.05, losses  # no spike above the start
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.tensorflow_only
def test_sigkill_during_epoch_two_resumes_from_the_backup(archive, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, TRAIN_SCRIPT, "--data-dir", str(archive[0]), "--out", str(out),
        *FAMILIES["resnet"], "--epochs", "3", "--batch-size", "32", "--verbose", "0",
        "--strategy", "mirrored", "--cpu-replicas", "2", "--slow-steps", "0.2",
    ]  # fmt: skip
    metadata = out / "backup" / "training_metadata.json"
    process = subprocess.Popen(command, env=_subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch") == 1:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # into epoch 2 (10 steps of at least 0.2 s)
        assert process.poll() is None, process.stdout.read()
        process.send_signal(signal.SIGKILL)
        first = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert "epoch 1/3:" in first and "epoch 2/3:" not in first
    assert _log_epochs(out) == [1]
    assert not (out / "results.json").exists()

    second = subprocess.run(command, env=_subprocess_env(), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming from the backup after epoch 1/3" in second.stdout
    assert "epoch 1/3:" not in second.stdout
    assert "epoch 2/3:" in second.stdout and "epoch 3/3:" in second.stdout
    assert _log_epochs(out) == [1, 2, 3]
    results = json.loads((out / "results.json").read_text())
    assert [row["epoch"] for row in results["epochs"]] == [1, 2, 3]
    assert set(os.listdir(out)) == _expected_outputs()


@pytest.mark.tensorflow_only
def test_two_local_workers_train_one_epoch_and_the_chief_writes_once(archive, tmp_path):
    out = tmp_path / "out"
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    command = [
        sys.executable, TRAIN_SCRIPT, "--data-dir", str(archive[0]), "--out", str(out),
        *FAMILIES["resnet"], *TINY, "--strategy", "multiworker", "--sync-bn",
        "--weight-norm", "cwn", "--batch-norm", "l1",
    ]  # fmt: skip
    runs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        runs.append((command, _subprocess_env(TF_CONFIG=json.dumps(tf_config))))
    outputs = run_together(runs)
    assert "done: final test error" in outputs[0]
    assert "done:" not in outputs[1] and "epoch 1/1:" not in outputs[1]
    assert set(os.listdir(out)) == _expected_outputs()
    results = json.loads((out / "results.json").read_text())
    assert results["distribution"]["kind"] == "MultiWorkerMirroredStrategy"
    assert results["distribution"]["replicas"] == 2
    assert results["config"]["sync_bn"] and results["config"]["batch_norm"] == "l1"
    assert results["config"]["weight_norm"] == "cwn"
    assert _log_epochs(out) == [1]


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's path")
def test_jax_backend_data_parallel_over_two_host_devices(archive, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, TRAIN_SCRIPT, "--data-dir", str(archive[0]), "--out", str(out),
        *FAMILIES["resnet"], *TINY, "--cpu-replicas", "2",
    ]  # fmt: skip
    result = subprocess.run(command, env=_subprocess_env(KERAS_BACKEND="jax"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "jax"
    assert results["distribution"]["kind"] == "jax-data-parallel"
    assert results["distribution"]["replicas"] == 2
    assert _log_epochs(out) == [1]
    shutil.rmtree(out)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX backend's path")
def test_jax_backend_trains_without_tensorflow_installed(archive, tmp_path):
    """A machine with JAX and no TensorFlow (TensorFlow made unimportable in
    the child): the NumPy pipeline trains, the .keras files are written, and
    the SavedModel export, TensorFlow's format, is skipped and says so."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['tensorflow'] = None\n")
    out = tmp_path / "out"
    command = [
        sys.executable, TRAIN_SCRIPT, "--data-dir", str(archive[0]), "--out", str(out),
        *FAMILIES["resnet"], *TINY,
    ]  # fmt: skip
    env = _subprocess_env(KERAS_BACKEND="jax", PYTHONPATH=str(site))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TensorFlow is not installed: no SavedModel export" in result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "jax" and "tensorflow" not in results["versions"]
    assert results["files"]["saved_model"] is None
    assert not (out / "saved_model").exists()
    assert _log_epochs(out) == [1]
    import tfnorms  # noqa: F401  (registers the layers the file names)

    reloaded = keras.saving.load_model(out / "final.keras")
    assert reloaded.count_params() > 0
