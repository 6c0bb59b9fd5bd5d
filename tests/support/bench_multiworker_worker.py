"""One worker of the bench's MultiWorkerMirroredStrategy step test
(tests/benchmarks/test_multiworker_step.py), started by
benchmarks/multiworker.run with TF_CONFIG set: one training step of the
bench's step (`timing.keras_runners` under the strategy) on the global batch
of `batch()`, then the weights as JSON on standard output."""

import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def batch():
    rng = np.random.default_rng(3)
    return rng.normal(size=(8, 4)).astype("float32"), rng.integers(0, 10, 8).astype("int32")


def make_model():
    import keras

    keras.utils.set_random_seed(0)
    import bench

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
    return bench.compile_model(model, jit=False)


def main():
    import multiworker

    strategy = multiworker.strategy()
    import timing

    with strategy.scope():
        model = make_model()
        train, _, _ = timing.keras_runners(model, *batch())
        loss = train()
    print(json.dumps({"loss": loss, "weights": [w.tolist() for w in model.get_weights()]}))


if __name__ == "__main__":
    main()
