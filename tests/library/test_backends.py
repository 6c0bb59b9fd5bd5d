"""`.keras` files move between the three Keras backends.

A model holding every public layer and constraint of tfnorms (weight-norm
wrappers with and without data-dependent initialization, every batch, layer,
group and RMS norm, synchronized batch norms, both constraints) is trained a
few steps and saved on TensorFlow, JAX and PyTorch, one process per
backend; each process then loads the two other backends' files, which must
hold the saver's weights and moving statistics exactly and compute its
outputs, in inference and in training mode.

The test starts its own processes, so one pass of the suite runs it: the
PyTorch one (it needs all three backends installed, as `make test` does).
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from layer_checks import REPO_ROOT

BACKENDS = ("tensorflow", "jax", "torch")

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "torch",
        reason="starts a process per backend: run once, in the PyTorch pass",
    ),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("tensorflow", "jax", "torch")),
        reason="needs TensorFlow, JAX and PyTorch installed",
    ),
]

_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    import keras
    import tfnorms

    def build_model():
        inputs = keras.Input((8, 6))
        h = tfnorms.WeightNormalization(keras.layers.Conv1D(8, 3, padding="causal"),
                                        data_init=True)(inputs)
        h = tfnorms.L1BatchNormalization(synchronized=True)(h)
        h = tfnorms.CenteredWeightNorm(keras.layers.Conv1D(8, 3, padding="same"),
                                       scale=False)(h)
        h = tfnorms.LinfBatchNormalization(top_k=3)(h)
        h = tfnorms.LpGroupNormalization(groups=2, p=3)(h)
        h = tfnorms.BoundedWeightNorm(keras.layers.LSTM(6, return_sequences=True))(h)
        h = tfnorms.L1LayerNormalization()(h)
        h = tfnorms.LpLayerNormalization(p="inf", rms_scaling=True)(h)
        h = tfnorms.LpRMSNormalization(p=1)(h)
        h = tfnorms.LinfBatchNormalization(synchronized=True)(h)
        h = keras.layers.Flatten()(h)
        h = tfnorms.BoundedWeightNorm(keras.layers.Dense(12), per_unit_gain=True)(h)
        h = tfnorms.MeanOnlyBatchNormalization(synchronized=True)(h)
        h = keras.layers.Dense(10, kernel_constraint=tfnorms.CenteredUnitNorm(axis=0),
                               use_bias=False)(h)
        h = tfnorms.LpBatchNormalization(p=2, synchronized=True)(h)
        h = tfnorms.LpBatchNormalization(p=1.5)(h)
        h = keras.layers.Dense(4, kernel_constraint=tfnorms.FixedNorm(2.0, axis=0))(h)
        outputs = tfnorms.CenteredWeightNorm(keras.layers.Dense(3))(h)
        return keras.Model(inputs, outputs)

    def outputs(model, x):
        # The weights first: the training call updates the moving statistics.
        result = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
        result["inference"] = keras.ops.convert_to_numpy(model(x, training=False))
        result["training"] = keras.ops.convert_to_numpy(model(x, training=True))
        return result

    directory, backend = sys.argv[1], keras.backend.backend()
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 8, 6)).astype("float32")
    keras.utils.set_random_seed(7)
    model = build_model()
    tfnorms.data_init(model, x[:8])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    y = rng.normal(size=(16, 3)).astype("float32")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # moving statistics move
    stem = os.path.join(directory, backend)
    model.save(stem + ".tmp.keras")
    np.savez(stem + ".tmp.npz", **outputs(model, x))
    os.replace(stem + ".tmp.npz", stem + ".npz")
    os.replace(stem + ".tmp.keras", stem + ".keras")  # last: the file is complete

    # Then every other backend's file, as soon as it is there.
    waiting = [b for b in sys.argv[2:] if b != backend]
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for saver in [b for b in waiting if os.path.exists(os.path.join(directory, b + ".keras"))]:
            loaded = keras.saving.load_model(os.path.join(directory, saver + ".keras"))
            np.savez(os.path.join(directory, f"{saver}_on_{backend}.npz"), **outputs(loaded, x))
            waiting.remove(saver)
        time.sleep(0.2)
    assert not waiting, f"no file from {waiting}"
    """
)


def test_keras_files_load_on_every_other_backend(tmp_path):
    """One process per backend: it trains and saves its model, then loads the
    two other backends' files as they appear."""
    processes = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
        processes[backend] = subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(tmp_path), *BACKENDS],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    logs = {}
    try:
        for backend, process in processes.items():
            logs[backend] = process.communicate(timeout=400)[0]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    failed = [f"{b}:\n{logs.get(b, '')[-3000:]}" for b, p in processes.items() if p.returncode]
    assert not failed, "\n".join(failed)

    for saver in BACKENDS:
        want = np.load(tmp_path / f"{saver}.npz")
        for loader in (b for b in BACKENDS if b != saver):
            got = np.load(tmp_path / f"{saver}_on_{loader}.npz")
            assert sorted(got.files) == sorted(want.files), (saver, loader)
            for key in want.files:  # the weights exactly, the outputs to rounding
                exact = key.startswith("w")
                np.testing.assert_allclose(
                    got[key], want[key], rtol=0 if exact else 1e-5, atol=0 if exact else 1e-5,
                    err_msg=f"saved on {saver}, loaded on {loader}: {key}",
                )  # fmt: skip
