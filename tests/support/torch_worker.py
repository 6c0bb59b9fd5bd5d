"""One process of the two-process `torch.distributed` tests.

    python tests/support/torch_worker.py MODE RANK PORT DIRECTORY

Both processes join a gloo process group of two on 127.0.0.1:PORT
(`init_process_group("gloo", init_method="tcp://127.0.0.1:PORT", ...)`),
then, by MODE:

- `layers`: for each case of DIRECTORY/cases.json (a synchronized batch
  norm, a split of the global batch, with or without a mask), the process
  takes its rows of each step's global batch from DIRECTORY/cases.npz, calls
  the layer on them with `training=True`, differentiates
  `sum(w * y**3)` with respect to its rows and the layer's weights, and saves
  its outputs, gradients and final moving statistics to
  DIRECTORY/layers_RANK.npz, with the number of `all_reduce` calls of one
  training call and of its backward pass per layer kind.
- `train`: trains `multiworker_worker.make_model` (masked and unmasked)
  wrapped in `DistributedDataParallel` on its rows of
  `multiworker_worker.global_batches()` (the last global batch a single
  row: rank 1 holds none) from DIRECTORY/initial_{masked,unmasked}.npz, and
  saves the final weights to DIRECTORY/train_RANK_{masked,unmasked}.npz.

The test (tests/library/test_distribute_torch.py) runs the same
computations in one process on the global batches and compares. Importing
this module (the test does, for `run_step` and the cases) starts nothing.
"""

import json
import os
import sys

import numpy as np

SHAPE = (3, 4)  # (time, channels) of each row
STEPS = 2  # two training calls per case: the moving statistics move twice

# Global batches split between the two processes, one holding no rows, and
# one whose rows are all masked.
SPLITS = {"1+0": (1, 0), "0+2": (0, 2), "3+2": (3, 2), "3+2 masked out": (3, 2)}
KINDS = ["p1", "p2", "p3", "pinf", "top3", "top10", "mean_only"]


def make_layer(kind, **kwargs):
    import tfnorms

    if kind == "pinf":
        return tfnorms.LinfBatchNormalization(**kwargs)
    if kind.startswith("top"):
        # top10 > the elements a process may hold under the mask: sentinels.
        return tfnorms.LinfBatchNormalization(top_k=int(kind[3:]), **kwargs)
    if kind == "mean_only":
        return tfnorms.MeanOnlyBatchNormalization(**kwargs)
    return tfnorms.LpBatchNormalization(p=int(kind[1:]), **kwargs)


def cases():
    """`{name: (kind, split name, masked)}` for every case."""
    return {
        f"{kind}/{split}/{'mask' if masked else 'nomask'}": (kind, split, masked)
        for kind in KINDS
        for split in SPLITS
        for masked in (False, True)
    }


def case_data(name, rng):
    """Initial weights and, per step, `(x, w, mask)` of the global batch
    (mask None when unmasked), as NumPy arrays."""
    kind, split, masked = cases()[name]
    sizes = SPLITS[split]
    rows = sum(sizes)
    layer = make_layer(kind)
    layer.build((None, *SHAPE))
    initial = [rng.uniform(0.5, 2.0, size=v.shape).astype("float32") for v in layer.weights]
    steps = []
    for _ in range(STEPS):
        x = rng.normal(2.0, 3.0, size=(rows, *SHAPE)).astype("float32")
        w = rng.normal(size=x.shape).astype("float32")
        mask = None
        if masked or "masked out" in split:
            mask = rng.uniform(size=(rows, SHAPE[0])) < 0.6
            mask[0, 0] = True  # at least one valid element in the global batch
            if "masked out" in split:
                mask[sizes[0] :] = False
        steps.append((x, w, mask))
    return initial, steps


def rows_of(rank, sizes):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def run_step(layer, x, w, mask):
    """`[y, dL/dx, dL/dweights...]` as NumPy arrays for
    `L = sum(w * layer(x, training=True, mask=mask) ** 3)`."""
    import torch

    x = torch.tensor(x, requires_grad=True)
    mask = None if mask is None else torch.tensor(mask)
    variables = [v.value for v in layer.trainable_variables]
    for v in variables:
        v.grad = None
    y = layer(x, training=True, mask=mask)
    loss = torch.sum(torch.tensor(w) * y * y * y)
    loss.backward()
    grads = [torch.zeros_like(v) if v.grad is None else v.grad for v in variables]
    return [t.detach().cpu().numpy() for t in (y, x.grad, *grads)]


def moving_statistics(layer):
    return [np.asarray(v.value.detach().cpu().numpy()) for v in layer.non_trainable_variables]


# ------------------------------------------------------------------ layers
def run_layers(rank, directory):
    import torch.distributed as dist

    with open(os.path.join(directory, "cases.json")) as f:
        names = json.load(f)
    data = np.load(os.path.join(directory, "cases.npz"))
    results = {}
    for name in names:
        kind, split, masked = cases()[name]
        part = rows_of(rank, SPLITS[split])
        layer = make_layer(kind, synchronized=True, momentum=0.5)
        layer.build((None, *SHAPE))
        layer.set_weights([data[f"{name}/initial/{i}"] for i in range(len(layer.weights))])
        for step in range(STEPS):
            x, w = data[f"{name}/{step}/x"][part], data[f"{name}/{step}/w"][part]
            key = f"{name}/{step}/mask"
            mask = data[key][part] if key in data.files else None
            for i, value in enumerate(run_step(layer, x, w, mask)):
                results[f"{name}/{step}/{i}"] = value
        for i, value in enumerate(moving_statistics(layer)):
            results[f"{name}/moving/{i}"] = value

    counts = count_collectives(dist)
    np.savez(os.path.join(directory, f"layers_{rank}.npz"), **results)
    with open(os.path.join(directory, f"collectives_{rank}.json"), "w") as f:
        json.dump(counts, f)


def count_collectives(dist):
    """`{kind: [forward all_reduces, backward all_reduces]}` of one training
    call of a synchronized layer on 4 rows of 8 channels."""
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8)).astype("float32")
    calls = []
    original = dist.all_reduce

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting
    counts = {}
    try:
        for kind in ("p1", "p2", "pinf", "top3", "mean_only"):
            layer = make_layer(kind, synchronized=True)
            layer.build((None, 8))
            calls.clear()
            inputs = torch.tensor(x, requires_grad=True)
            y = layer(inputs, training=True)
            forward = len(calls)
            torch.sum(y * y * y).backward()
            counts[kind] = [forward, len(calls) - forward]
    finally:
        dist.all_reduce = original
    return counts


# ------------------------------------------------------------------- train
def run_training(rank, directory):
    import multiworker_worker as worker

    for masked in (True, False):
        train(rank, masked, directory, worker)


def train(rank, masked, directory, worker):
    import keras
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    name = "masked" if masked else "unmasked"
    initial = np.load(os.path.join(directory, f"initial_{name}.npz"))
    model = worker.make_model(masked)
    model.set_weights([initial[f"w{i}"] for i in range(len(initial.files))])
    optimizer = keras.optimizers.SGD(worker.LEARNING_RATE)
    optimizer.build(model.trainable_variables)
    parallel = DistributedDataParallel(model)
    size = dist.get_world_size()
    for x, y in worker.global_batches():
        rows = worker.replica_rows(len(x), rank, size)
        for v in model.trainable_variables:
            v.value.grad = None
        prediction = parallel(torch.tensor(x[rows]), training=True)
        # DistributedDataParallel averages the processes' gradients: scaled
        # by the number of processes, they add up to the global batch's.
        loss = torch.sum(torch.square(prediction - torch.tensor(y[rows]))) / len(x) * size
        loss.backward()
        grads = [v.value.grad for v in model.trainable_variables]
        optimizer.apply(grads, model.trainable_variables)
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    np.savez(os.path.join(directory, f"train_{rank}_{name}.npz"), **weights)


def main(mode, rank, port, directory):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if mode == "layers":
        run_layers(rank, directory)
    else:
        run_training(rank, directory)
    dist.barrier()
    # Both results are on disk. torch.distributed's teardown (the process
    # group's and rank 0's TCP store's threads) now and then aborted rank 0
    # with "terminate called without an active exception" after its work
    # was done (once in three clean-clone runs of the suite on 2026-12-07),
    # so each process leaves here without it. A failure above still exits
    # non-zero with its traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
