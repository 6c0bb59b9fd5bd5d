"""Smoke test of an installed tfnorms (run from outside the source tree).

Checks that the import comes from site-packages, that `py.typed` ships, and
that a model using every public layer class saves and loads in a fresh
process with the same predictions.
"""

import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

import tfnorms

here = os.path.dirname(os.path.abspath(tfnorms.__file__))
assert "site-packages" in here, f"tfnorms imported from {here}, not from the installed wheel"
assert os.path.exists(os.path.join(here, "py.typed")), "py.typed marker missing"

layers = [keras.Input((32,))]  # 32: divisible by the default 32 groups
for name in tfnorms.__all__:
    obj = getattr(tfnorms, name)
    if isinstance(obj, type) and issubclass(obj, keras.layers.Wrapper):
        layers.append(obj(keras.layers.Dense(32, activation="relu")))
    elif isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
        try:
            layers.append(obj())
        except TypeError:
            pass  # layers with required arguments are covered by the test suite
model = keras.Sequential(layers + [keras.layers.Dense(2)])
x = np.random.default_rng(0).normal(size=(16, 32)).astype("float32")
model.compile("sgd", "mse")
model.fit(x, np.zeros((16, 2), "float32"), epochs=1, verbose=0)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "m.keras")
    model.save(path)
    x_path, y_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
    code = (
        "import numpy as np, keras, tfnorms;"
        f"m = keras.saving.load_model({path!r});"
        f"np.save({y_path!r}, m.predict(np.load({x_path!r}), verbose=0))"
    )
    np.save(x_path, x)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp)
    np.testing.assert_allclose(np.load(y_path), model.predict(x, verbose=0), atol=1e-6)
print(
    f"tfnorms {tfnorms.__version__} from {here}: {len(layers) - 1} public layers, "
    "save/load in a fresh process OK"
)
