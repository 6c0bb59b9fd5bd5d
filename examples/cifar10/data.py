"""CIFAR-10: the python-version archive, read safely, and the tf.data pipeline.

The archive (`cifar-10-python.tar.gz`) holds pickled batches. A pickle can run
arbitrary code when it is loaded, so the batches are unpickled with an
allow-list: numpy array reconstruction (and the byte-string helper that
Python 3 protocol-2 pickles use), nothing else. Anything else in the stream
(`os.system`, `subprocess.Popen`, ...) is refused before it is called.

The archive is never extracted to disk: its members are read in memory.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
INNER_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
ARCHIVE_ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# sha256 of the official archive (the value keras.datasets.cifar10 checks).
ARCHIVE_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
# One official batch is about 31 MB; anything far larger is not CIFAR-10.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


class DataError(ValueError):
    """The data could not be read; the message says what and where."""


# ---------------------------------------------------------------- unpickling
def _codecs_encode(text, encoding="latin1", errors="strict"):
    # Python 3 writes `bytes` in protocol-2 pickles as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed for latin1 byte strings only")
    return text.encode("latin1", errors)


def _allowed_globals():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs_encode,
    }


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refusing to load '{module}.{name}': a CIFAR-10 batch holds only numpy "
                "arrays, lists, numbers and strings, and this loader allows nothing else"
            )
        return allowed


_ALLOWED = {}


def safe_unpickle(data: bytes, source: str):
    """Unpickle `data` with the allow-list; `source` names it in errors."""
    if not _ALLOWED:
        _ALLOWED.update(_allowed_globals())
    try:
        return _AllowListUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{source}: untrusted or corrupt pickle: {error}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise DataError(
            f"{source}: not a readable CIFAR-10 batch ({type(error).__name__}: {error})"
        ) from None


def _parse_batch(obj, source):
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a dict, found {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{source}: the batch has no 'data' or no 'labels' entry")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{source}: 'data' should be uint8 of shape (N, 3072); found {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{source}: 'labels' should be {data.shape[0]} integers; found "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{source}: labels outside 0..{NUM_CLASSES - 1}")
    # Stored as (N, channel, row, column), the channels' planes one after another.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _stack(batches):
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return images, labels


# ------------------------------------------------------------------ sources
def _read_archive(path):
    members = {}
    wanted = set(TRAIN_BATCHES + (TEST_BATCH,))
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                base = os.path.basename(member.name)
                if base not in wanted:
                    continue
                if not member.isfile():
                    raise DataError(f"{path}: member {member.name} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}: member {member.name} is implausibly large")
                handle = archive.extractfile(member)
                members[base] = (handle.read(), f"{path}:{member.name}")
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path}: the archive is corrupt or truncated ({type(error).__name__}: {error}); "
            f"download {ARCHIVE_NAME} again"
        ) from None
    return members


def _read_folder(path):
    folder = path
    if not os.path.exists(os.path.join(folder, TEST_BATCH)) and os.path.isdir(
        os.path.join(folder, INNER_FOLDER)
    ):
        folder = os.path.join(folder, INNER_FOLDER)
    members = {}
    for name in TRAIN_BATCHES + (TEST_BATCH,):
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            if os.path.getsize(file) > MAX_MEMBER_BYTES:
                raise DataError(f"{file}: implausibly large for a CIFAR-10 batch")
            with open(file, "rb") as handle:
                members[name] = (handle.read(), file)
    return members


def load_cifar10(data_dir=None):
    """`((x_train, y_train), (x_test, y_test))`: uint8 images (N, 32, 32, 3),
    int64 labels (N,).

    `data_dir` is the official python-version archive (`cifar-10-python.tar.gz`),
    the folder it extracts to (`cifar-10-batches-py`), or a folder holding
    either. `None` downloads the archive with `keras.utils.get_file` (cached in
    ~/.keras/datasets) and reads it with the same safe loader.
    """
    if data_dir is None:
        import keras

        data_dir = keras.utils.get_file(
            ARCHIVE_NAME, origin=ARCHIVE_ORIGIN, file_hash=ARCHIVE_SHA256
        )
    path = os.path.abspath(os.path.expanduser(str(data_dir)))
    if not os.path.exists(path):
        raise DataError(f"--data-dir {data_dir}: no such file or folder")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, ARCHIVE_NAME)):
        if not any(
            os.path.exists(os.path.join(p, TEST_BATCH))
            for p in (path, os.path.join(path, INNER_FOLDER))
        ):
            path = os.path.join(path, ARCHIVE_NAME)
    members = _read_folder(path) if os.path.isdir(path) else _read_archive(path)
    missing = [name for name in TRAIN_BATCHES + (TEST_BATCH,) if name not in members]
    if missing:
        raise DataError(
            f"--data-dir {data_dir}: not the CIFAR-10 python version; missing "
            f"{', '.join(missing)} (expected {ARCHIVE_NAME} or its folder {INNER_FOLDER}/)"
        )
    train = [
        _parse_batch(safe_unpickle(*members[name]), members[name][1]) for name in TRAIN_BATCHES
    ]
    test = _parse_batch(safe_unpickle(*members[TEST_BATCH]), members[TEST_BATCH][1])
    return _stack(train), test


@dataclasses.dataclass
class Cifar10:
    """The loaded set, with the training images' per-channel mean and
    standard deviation (what the pipeline standardizes with)."""

    train: tuple
    test: tuple
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def load(cls, data_dir=None):
        train, test = load_cifar10(data_dir)
        return cls(train, test, *channel_stats(train[0]))


# ------------------------------------------------------------------ writing
def write_archive(path, x_train, y_train, x_test, y_test, protocol=2):
    """Write arrays as a CIFAR-10 python-version archive (tests, small demos).

    The same layout as the official file: `cifar-10-batches-py/data_batch_1..5`
    and `test_batch`, each a pickled dict with b'data' (N, 3072) uint8,
    b'labels', b'batch_label' and b'filenames'.
    """

    def batch(images, labels, label):
        data = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
        return {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": np.ascontiguousarray(data),
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
        }

    parts = np.array_split(np.arange(len(x_train)), len(TRAIN_BATCHES))
    entries = [
        (name, batch(x_train[idx], y_train[idx], f"training batch {i + 1} of 5"))
        for i, (name, idx) in enumerate(zip(TRAIN_BATCHES, parts, strict=True))
    ]
    entries.append((TEST_BATCH, batch(x_test, y_test, "testing batch 1 of 1")))
    with tarfile.open(path, "w:gz") as archive:
        for name, content in entries:
            payload = pickle.dumps(content, protocol=protocol)
            info = tarfile.TarInfo(f"{INNER_FOLDER}/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


# ----------------------------------------------------------------- pipeline
def channel_stats(images):
    """Per-channel mean and standard deviation of uint8 images, in [0, 255]."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return x.mean(axis=0), x.std(axis=0)


def _standardize(tf, images, mean, std):
    return (tf.cast(images, tf.float32) - mean) / std


def train_dataset(
    x,
    y,
    batch_size,
    mean,
    std,
    *,
    seed,
    flip=True,
    pad=4,
    input_context=None,
    drop_remainder=True,
    repeat=False,
):
    """Shuffled, augmented (random flip; `pad`-pixel zero padding and a random
    32x32 crop; both after standardization, so the padding is the mean),
    standardized, batched and prefetched.

    `batch_size` is the global batch. With `input_context` (from
    `strategy.distribute_datasets_from_function`) this pipeline's shard and
    per-replica batch are used; otherwise the strategy splits the global batch.
    `repeat=True` makes it endless (the multi-worker loop counts its steps, so
    that every worker runs the same number whatever its shard's size).
    """
    import tensorflow as tf

    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = input_context.get_per_replica_batch_size(batch_size)
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def augment(image, label):
        image = _standardize(tf, image, mean, std)
        if flip:
            image = tf.image.random_flip_left_right(image)
        if pad:
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            image = tf.image.random_crop(image, IMAGE_SHAPE)
        return image, label

    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, batch_size, mean, std):
    """Standardized, in order, every example once (the last batch may be short)."""
    import tensorflow as tf

    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.batch(batch_size).map(
        lambda image, label: (_standardize(tf, image, mean, std), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def standardize_numpy(images, mean, std):
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)
