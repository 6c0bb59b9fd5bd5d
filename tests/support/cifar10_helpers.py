"""Helpers for tests/examples/test_cifar10_example.py: a miniature CIFAR-10
archive in the real python-version format, and the example's modules on
sys.path."""

from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO_ROOT, "examples")
TRAIN_SCRIPT = os.path.join(EXAMPLES, "cifar10", "train.py")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

from cifar10 import data, train  # noqa: E402

__all__ = [
    "TRAIN_SCRIPT",
    "data",
    "make_archive",
    "make_images",
    "make_tampered_archive",
    "train",
]


def make_images(n, seed):
    """`n` learnable 32x32 RGB images: each class has its own mean colour and
    a bright square at a class-dependent place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    colours = np.random.default_rng(0).integers(40, 216, size=(10, 3))
    images = rng.normal(0, 25, size=(n, 32, 32, 3)) + colours[labels][:, None, None, :]
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 4 + 8 * row : 10 + 8 * row, 2 + 7 * col : 8 + 7 * col, :] += 60
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def make_archive(path, n_train=320, n_test=64, seed=0):
    """A cifar-10-python.tar.gz with `n_train` + `n_test` images, written by
    the example's own writer (the official layout: pickled dicts in
    cifar-10-batches-py/), returning the arrays."""
    x_train, y_train = make_images(n_train, seed)
    x_test, y_test = make_images(n_test, seed + 1)
    data.write_archive(str(path), x_train, y_train, x_test, y_test)
    return (x_train, y_train), (x_test, y_test)


class _Exploit:
    """A pickle payload that calls os.system when unpickled."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def make_tampered_archive(path, good_archive, command, member="data_batch_3"):
    """A copy of `good_archive` whose `member` is a pickle that would run
    `command` through os.system."""
    with tarfile.open(good_archive, "r:gz") as source, tarfile.open(path, "w:gz") as target:
        for info in source.getmembers():
            payload = source.extractfile(info).read()
            if os.path.basename(info.name) == member:
                payload = pickle.dumps({b"data": _Exploit(command), b"labels": [0]}, protocol=2)
                info.size = len(payload)
            target.addfile(info, io.BytesIO(payload))
