"""synchronized=True across `torch.distributed` processes (docs/distributed.md).

Two local CPU processes (tests/support/torch_worker.py) join a gloo process
group. The synchronized batch norms' outputs, input gradients, weight
gradients (summed over the processes) and moving statistics equal one
process's on the global batch for any split, a process with no rows or
with every row masked included, for p = 1, 2, 3, inf, top-k and mean-only,
with and without a mask; the reduction costs one `all_reduce` per stage
(forward and backward); and `DistributedDataParallel` training ends where
one process trained on the global batches ends. The TensorFlow
counterparts are in test_distribute.py.

These tests run in the PyTorch pass of the suite (the references are
computed in the test process), and need `torch.distributed` with gloo.
"""

import json
import os
import sys

import keras
import numpy as np
import pytest
from layer_checks import REPO_ROOT
from processes import free_ports, run_together

import tfnorms
from tfnorms import distribute, distribute_torch
from tfnorms._math import replicas

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the PyTorch backend's torch.distributed"
)

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support")


def run_workers(mode, directory, timeout=300):
    """Run the two processes of torch_worker.py in `mode`; fail with their
    logs if either fails."""
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, SUPPORT, env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    script = os.path.join(SUPPORT, "torch_worker.py")
    (port,) = free_ports(1)
    command = [sys.executable, script, mode, "{rank}", str(port), str(directory)]
    run_together(
        [([part.format(rank=rank) for part in command], env) for rank in range(2)], timeout
    )


def test_without_a_process_group_statistics_are_local(rng):
    """No `torch.distributed` process group: `synchronized=True` computes the
    statistics of the batch the layer sees, as on JAX."""
    assert distribute_torch.process_group_size() is None
    assert distribute.reduction(True) is replicas.LOCAL
    x = rng.normal(size=(8, 4)).astype("float32")
    synced = tfnorms.L1BatchNormalization(synchronized=True)
    local = tfnorms.L1BatchNormalization()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(synced(x, training=True)),
        keras.ops.convert_to_numpy(local(x, training=True)),
    )


def test_any_split_of_the_global_batch_is_exact(tmp_path, rng):
    """Outputs, input and weight gradients and moving statistics of the
    synchronized layers in two processes equal one process's on the global
    batch, for every case of torch_worker.cases(): p = 1, 2, 3, inf, top-3,
    top-10 and mean-only; splits (1, 0), (0, 2), (3, 2) and (3, 2) with the
    second process's rows all masked; with and without a mask; two steps."""
    import torch_worker as worker

    arrays, expected = {}, {}
    for name, (kind, _split, _) in worker.cases().items():
        initial, steps = worker.case_data(name, rng)
        for i, value in enumerate(initial):
            arrays[f"{name}/initial/{i}"] = value
        single = worker.make_layer(kind, momentum=0.5)
        single.build((None, *worker.SHAPE))
        single.set_weights(initial)
        for step, (x, w, mask) in enumerate(steps):
            arrays[f"{name}/{step}/x"], arrays[f"{name}/{step}/w"] = x, w
            if mask is not None:
                arrays[f"{name}/{step}/mask"] = mask
            expected[(name, step)] = worker.run_step(single, x, w, mask)
        expected[(name, "moving")] = worker.moving_statistics(single)
    np.savez(tmp_path / "cases.npz", **arrays)
    (tmp_path / "cases.json").write_text(json.dumps(list(worker.cases())))

    run_workers("layers", tmp_path)

    got = [np.load(tmp_path / f"layers_{rank}.npz") for rank in range(2)]
    for name, (_, split, _) in worker.cases().items():
        sizes = worker.SPLITS[split]
        for step in range(worker.STEPS):
            want = expected[(name, step)]
            parts = [[g[f"{name}/{step}/{i}"] for g in got] for i in range(len(want))]
            for i in (0, 1):  # outputs and input gradients: each process its rows
                assert [len(p) for p in parts[i]] == list(sizes), name
                np.testing.assert_allclose(
                    np.concatenate(parts[i]), want[i], rtol=1e-4, atol=1e-4,
                    err_msg=f"{name} step {step} {'output' if i == 0 else 'input gradient'}",
                )  # fmt: skip
            for i in range(2, len(want)):  # weight gradients: summed over processes
                assert all(np.all(np.isfinite(p)) for p in parts[i]), name
                np.testing.assert_allclose(
                    parts[i][0] + parts[i][1], want[i], rtol=1e-4, atol=1e-4,
                    err_msg=f"{name} step {step} weight gradient {i - 2}",
                )  # fmt: skip
        for i, theirs in enumerate(expected[(name, "moving")]):
            first, second = (g[f"{name}/moving/{i}"] for g in got)
            np.testing.assert_array_equal(first, second, err_msg=f"{name} moving {i}")
            np.testing.assert_allclose(first, theirs, rtol=1e-5, err_msg=f"{name} moving {i}")

    # One all_reduce per statistics stage, forward and backward (where the
    # stage's result needs a gradient), as on TensorFlow.
    counts = [json.loads((tmp_path / f"collectives_{rank}.json").read_text()) for rank in (0, 1)]
    assert counts[0] == counts[1]
    forward = {kind: pair[0] for kind, pair in counts[0].items()}
    assert forward == {"p1": 2, "p2": 1, "pinf": 1, "top3": 2, "mean_only": 1}, counts[0]
    assert all(0 < back <= fwd for fwd, back in counts[0].values()), counts[0]
    # top-k's mean and scale are one op whose backward sums both upstreams at once.
    assert counts[0]["top3"][1] == 1, counts[0]


def one_process_run(worker, masked, directory):
    """Initial weights saved for the processes; the final weights of the same
    training in this process on the global batches."""
    import torch

    name = "masked" if masked else "unmasked"
    model = worker.make_model(masked)
    initial = model.get_weights()
    np.savez(directory / f"initial_{name}.npz", **{f"w{i}": w for i, w in enumerate(initial)})
    optimizer = keras.optimizers.SGD(worker.LEARNING_RATE)
    optimizer.build(model.trainable_variables)
    for x, y in worker.global_batches():
        for v in model.trainable_variables:
            v.value.grad = None
        loss = worker.step_loss(model, torch.tensor(x), torch.tensor(y), float(len(x)))
        loss.backward()
        optimizer.apply(
            [v.value.grad for v in model.trainable_variables], model.trainable_variables
        )
    return model, initial


def test_distributed_data_parallel_training_matches_one_process(tmp_path):
    """Two processes train a model of synchronized p=1, top-k, max, p=2 and
    mean-only batch norms wrapped in `DistributedDataParallel`, with and
    without a mask, the last global batch a single row (the second process
    holds none): both end with identical weights and moving statistics,
    equal to one process's on the global batches."""
    import multiworker_worker as worker

    references = {masked: one_process_run(worker, masked, tmp_path) for masked in (True, False)}
    run_workers("train", tmp_path)
    for masked, (model, initial) in references.items():
        name = "masked" if masked else "unmasked"
        results = [np.load(tmp_path / f"train_{rank}_{name}.npz") for rank in range(2)]
        for i, expected in enumerate(model.get_weights()):
            first, second = (r[f"w{i}"] for r in results)
            path = f"{name}: {model.weights[i].path}"
            np.testing.assert_array_equal(first, second, err_msg=path)
            np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-5, err_msg=path)
        moving = [i for i, w in enumerate(model.weights) if "moving" in w.path]
        assert moving and all(not np.allclose(model.get_weights()[i], initial[i]) for i in moving)
