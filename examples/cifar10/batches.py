"""The CIFAR-10 pipeline without TensorFlow: `keras.utils.PyDataset`s over
NumPy arrays, for the JAX and PyTorch backends on machines where TensorFlow
is not installed (a GPU machine with JAX alone, say).

The same steps as data.train_dataset and data.eval_dataset: shuffle each
epoch, standardize, random horizontal flip, zero padding after
standardization (so the padding is the mean) and a random 32x32 crop. The
random streams differ from tf.data's, so a run is reproducible on one
pipeline, not across the two.
"""

from __future__ import annotations

import keras
import numpy as np

from cifar10.data import standardize_numpy


def augment(images, rng, flip=True, pad=4):
    """Random flip and pad-and-crop of a standardized float batch (N, H, W, C)."""
    out = images.copy()
    n, height, width, _ = images.shape
    if flip:
        flipped = rng.random(n) < 0.5
        out[flipped] = out[flipped, :, ::-1]
    if pad:
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        rows = rng.integers(0, 2 * pad + 1, n)
        cols = rng.integers(0, 2 * pad + 1, n)
        for i in range(n):
            out[i] = padded[i, rows[i] : rows[i] + height, cols[i] : cols[i] + width]
    return out


class TrainBatches(keras.utils.PyDataset):
    """Shuffled (anew each epoch), augmented, standardized batches of
    `batch_size` (the global batch), the last partial batch dropped."""

    def __init__(self, x, y, batch_size, mean, std, *, seed, flip=True, pad=4):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.mean, self.std, self.flip, self.pad = mean, std, flip, pad
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images = standardize_numpy(self.x[chosen], self.mean, self.std)
        return augment(images, self.rng, flip=self.flip, pad=self.pad), self.y[chosen]

    def on_epoch_end(self):
        self.order = self.rng.permutation(len(self.x))


class EvalBatches(keras.utils.PyDataset):
    """Standardized, in order, every example once (the last batch may be short)."""

    def __init__(self, x, y, batch_size, mean, std):
        super().__init__()
        self.x, self.y, self.batch_size, self.mean, self.std = x, y, batch_size, mean, std

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return standardize_numpy(self.x[part], self.mean, self.std), self.y[part]
