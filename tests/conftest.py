"""Test set-up: two logical CPUs for a real MirroredStrategy, seeds, policies."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# float64 layers (used for exact gradient checks) need 64-bit JAX.
os.environ.setdefault("JAX_ENABLE_X64", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "support"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

if keras.backend.backend() == "torch":
    import torch

    # jit_compile=True is torch.compile on this backend. Its default backend,
    # inductor, generates and builds C++ for every graph: about ten minutes of
    # this pass on 2 cores. The tests compile with aot_eager instead: dynamo's
    # graph capture and AOT autograd, where the layers meet torch.compile,
    # without the code generation, which is PyTorch's own.
    _torch_compile = torch.compile

    def _compile_without_codegen(model=None, **kwargs):
        kwargs.setdefault("backend", "aot_eager")
        return _torch_compile(model, **kwargs) if model is not None else _torch_compile(**kwargs)

    torch.compile = _compile_without_codegen

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Must run before TensorFlow initializes its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )


# Cases that cannot run on the PyTorch backend, by test id (a prefix names
# several parametrized cases), with the Keras limitation that stops them.
# A test marked `not_torch(reason)` is skipped there too.
_MATMUL_FLOAT64 = (
    "Keras 3.15's torch matmul computes float64 in float32 (its result_type maps "
    "64-bit dtypes to 32-bit), so a float64 Dense is not exact enough for this check"
)
NOT_ON_TORCH = {
    "test_norm_contract.py::test_p2_reproduces_keras[layer-axis1]": (
        "Keras 3.15's own LayerNormalization(axis=1), the reference, raises on torch"
    ),
    "test_layer_norm.py::test_built_at_one_rank_called_at_another_as_keras[axis1-": (
        "Keras 3.15's own LayerNormalization(axis=1), the reference, raises on torch"
    ),
    "test_weight_norm.py::test_gradients_match_finite_differences[dense-": _MATMUL_FLOAT64,
    "test_weight_norm.py::test_gradient_matches_papers_closed_form[": _MATMUL_FLOAT64,
    "test_norm_models.py::test_jit_compile[batch]": (
        "torch.compile (jit_compile=True) of Keras 3.15's custom_gradient fails when a "
        "model holds both top-k and max L-inf batch norms (a fake-tensor shape error in "
        "the traced backward); eager torch training of that model is tested"
    ),
}


def _not_on_torch(item):
    marker = item.get_closest_marker("not_torch")
    if marker is not None:
        return marker.args[0] if marker.args else marker.kwargs.get("reason", "")
    test_id = item.nodeid.rsplit("/", 1)[-1]
    return next((why for key, why in NOT_ON_TORCH.items() if test_id.startswith(key)), None)


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason="needs the TensorFlow backend")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)
        elif backend == "torch" and (why := _not_on_torch(item)) is not None:
            item.add_marker(pytest.mark.skip(reason=f"not on PyTorch: {why}"))


@pytest.fixture(autouse=True)
def _isolated_keras_state():
    keras.utils.set_random_seed(1234)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    # Without its gc.collect(): a third of a second per test, minutes per pass.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def rng():
    return np.random.default_rng(20171022)
