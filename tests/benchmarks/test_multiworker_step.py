"""The bench's MultiWorkerMirroredStrategy rows train on the global batch:
two local worker processes (benchmarks/multiworker.py) each take their share
of it, and one step leaves the weights one device reaches on the whole
batch."""

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "tests", "support"))

import bench_multiworker_worker as worker  # noqa: E402
import multiworker  # noqa: E402


@pytest.mark.tensorflow_only
def test_one_multiworker_step_equals_one_device_on_the_global_batch():
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    output = multiworker.run([sys.executable, worker.__file__], env, timeout=300)
    chief = json.loads(output.strip().splitlines()[-1])

    model = worker.make_model()
    x, y = worker.batch()
    initial = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(x, y, return_dict=True)
    for got, want, before in zip(chief["weights"], model.get_weights(), initial, strict=True):
        assert not np.allclose(want, before)  # the step moved the weights
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert chief["loss"] == pytest.approx(logs["loss"], rel=1e-5)
