"""What only LpRMSNormalization does: it is LpLayerNormalization(rms_scaling=
True) with Keras's RMSNormalization defaults and names, so Keras's configs,
weights and mixed-precision outputs carry over; it is uncentered; it takes
inputs of another rank than the built one. The contract shared with the
other families (Keras at p=2, NumPy references, Gaussian consistency,
degenerate inputs, precision, masks, bad arguments, config) is
test_norm_contract.py."""

import keras
import numpy as np
import per_example_reference as pref
import pytest
from keras import ops
from layer_checks import call_gradients, to_numpy
from norm_families import P_SHORT, p_id

import tfnorms


@pytest.mark.parametrize(("p", "top_k"), P_SHORT, ids=[p_id(p, k) for p, k in P_SHORT])
@pytest.mark.parametrize("axis", [-1, [1, 2]], ids=["last", "axes12"])
def test_is_layer_norm_with_rms_scaling(axis, p, top_k, rng):
    """The same outputs and gradients as LpLayerNormalization(rms_scaling=True)
    with the same epsilon, and the same weight under Keras's name."""
    x = rng.normal(1.0, 2.0, size=(3, 4, 5))
    rms = tfnorms.LpRMSNormalization(p=p, top_k=top_k, axis=axis, dtype="float64")
    layer = tfnorms.LpLayerNormalization(
        p=p, top_k=top_k, axis=axis, rms_scaling=True, epsilon=1e-6, dtype="float64"
    )
    rms.build(x.shape)
    layer.build(x.shape)
    assert [w.name for w in rms.weights] == ["scale"]
    assert [w.name for w in layer.weights] == ["gamma"]
    rms.set_weights([rng.uniform(0.5, 2.0, size=rms.gamma.shape)])
    layer.set_weights(rms.get_weights())
    w = ops.convert_to_tensor(rng.normal(size=x.shape))
    mine = call_gradients(rms, x, lambda y: ops.sum(w * y * y))
    theirs = call_gradients(layer, x, lambda y: ops.sum(w * y * y))
    np.testing.assert_allclose(mine[0], theirs[0], rtol=1e-12)
    np.testing.assert_allclose(mine[1], theirs[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mine[2][0], theirs[2][0], rtol=1e-10, atol=1e-12)


def test_p2_is_ops_rms_normalization_and_keeps_a_shift(rng):
    x = rng.normal(1.0, 2.0, size=(4, 5, 6)).astype("float32")
    layer = tfnorms.LpRMSNormalization()
    layer(x)
    layer.set_weights([rng.uniform(0.5, 2.0, size=(6,))])
    np.testing.assert_allclose(
        to_numpy(layer(x)),
        to_numpy(ops.rms_normalization(x, scale=layer.gamma, axis=-1, epsilon=1e-6)),
        atol=1e-5,
    )
    # Uncentered: a shift of the input is not removed (a centered norm removes it).
    assert not np.allclose(to_numpy(layer(x + 5.0)), to_numpy(layer(x)), atol=1e-2)
    centered = tfnorms.LpLayerNormalization()
    np.testing.assert_allclose(to_numpy(centered(x + 5.0)), to_numpy(centered(x)), atol=1e-3)


@pytest.mark.parametrize("kwargs", [{}, {"axis": [1, 2], "epsilon": 1e-4}], ids=["default", "axes"])
def test_keras_config_and_weights_load_both_ways(kwargs, rng):
    """Every key of a Keras RMSNormalization config (before and after build,
    when Keras turns `axis` into a list) is an argument of the same meaning."""
    x = rng.normal(size=(4, 5, 6)).astype("float32")
    theirs = keras.layers.RMSNormalization(**kwargs)
    for config in (theirs.get_config(), (theirs(x), theirs.get_config())[1]):
        mine = tfnorms.LpRMSNormalization.from_config(dict(config))
        assert {key: mine.get_config()[key] for key in config} == config
    assert mine.epsilon == theirs.epsilon and mine.p == 2.0
    theirs.set_weights([rng.uniform(0.5, 2.0, size=w.shape) for w in theirs.weights])
    mine(x)
    mine.set_weights(theirs.get_weights())  # Keras -> tfnorms
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=1e-5)
    back = keras.layers.RMSNormalization.from_config(
        {key: mine.get_config()[key] for key in config}
    )
    back(x)
    back.set_weights(mine.get_weights())  # tfnorms -> Keras
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(mine(x)), atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_is_keras(policy, rng):
    """float32 inputs under a mixed policy: cast to the compute dtype first,
    as Keras's layer (which is no normalization layer of Keras's)."""
    keras.config.set_dtype_policy(policy)
    x = rng.normal(1.0, 3.0, size=(4, 64)).astype("float32")
    theirs, mine = keras.layers.RMSNormalization(), tfnorms.LpRMSNormalization()
    theirs(x)
    mine(x)
    theirs.set_weights([rng.uniform(0.5, 2.0, size=(64,))])
    mine.set_weights(theirs.get_weights())
    y = mine(x)
    assert keras.backend.standardize_dtype(y.dtype) == keras.backend.standardize_dtype(
        theirs(x).dtype
    )
    np.testing.assert_array_equal(to_numpy(y), to_numpy(theirs(x)))
    assert keras.backend.standardize_dtype(mine.gamma.dtype) == "float32"


@pytest.mark.parametrize(
    ("built", "called"), [((4, 6), (2, 3, 6)), ((2, 3, 6), (4, 6))], ids=["up", "down"]
)
def test_called_at_another_rank_as_keras(built, called, rng):
    theirs, mine = keras.layers.RMSNormalization(), tfnorms.LpRMSNormalization()
    theirs.build(built)
    mine.build(built)
    pref.copy_random_weights(theirs, mine, rng)
    x = rng.normal(size=called).astype("float32")
    np.testing.assert_allclose(to_numpy(mine(x)), to_numpy(theirs(x)), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"center": True}, {"scale": False}, {"rms_scaling": False}, {"beta_initializer": "ones"}],
    ids=str,
)
def test_layer_norm_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="always has its `scale` weight and no offset"):
        tfnorms.LpRMSNormalization(**kwargs)
