"""What only LpGroupNormalization does: 4-D inputs against the NumPy
reference, its mask (the input's shape without the channel axis; Keras's
GroupNormalization takes none), the `groups` argument, the batch axis and
rank checks, and a convolutional model that trains. The contract shared with
the other families (Keras at p=2, NumPy references, Gaussian consistency,
degenerate inputs, precision, masks, bad arguments, config) is
test_norm_contract.py."""

import math

import keras
import numpy as np
import per_example_reference as pref
import pytest
from layer_checks import assert_fit_lowers_loss, compile_for_regression, to_numpy

import tfnorms

P_CASES = [(1.0, None), (3.0, None), (math.inf, None), (math.inf, 3)]


def test_four_dimensional_inputs_match_numpy(rng):
    x = rng.normal(1.0, 2.0, size=(2, 3, 4, 6))
    for p, top_k in P_CASES:
        layer = tfnorms.LpGroupNormalization(3, p=p, top_k=top_k, dtype="float64", center=False)
        want = pref.reference_group_norm(x, 3, -1, p, top_k, None, None, 1e-3)
        np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------- masks
def test_channels_first_mask_and_mask_only_along_the_batch(rng):
    x = rng.normal(1.0, 2.0, size=(3, 4, 6))  # (batch, channels, time)
    mask = rng.uniform(size=(3, 6)) < 0.6
    mask[:, 0] = True
    layer = tfnorms.LpGroupNormalization(2, p=1, axis=1, dtype="float64")
    want = pref.reference_group_norm(x, 2, 1, 1.0, None, None, None, 1e-3, mask=mask)
    np.testing.assert_allclose(to_numpy(layer(x, mask=mask)), want, rtol=1e-7, atol=1e-9)
    # (batch, channels) with a (batch,) mask: each statistic is all valid or
    # all masked, so the statistics are the plain ones (as Keras).
    x2 = rng.normal(size=(4, 6))
    layer2 = tfnorms.LpGroupNormalization(3, p=1, dtype="float64")
    np.testing.assert_allclose(
        to_numpy(layer2(x2, mask=np.array([True, False, True, False]))), to_numpy(layer2(x2))
    )
    # A mask that keeps everything: Keras's GroupNormalization at p=2 (whose
    # JAX moments round float64 through float32, hence the tolerance).
    p2 = tfnorms.LpGroupNormalization(2, axis=1, dtype="float64")
    np.testing.assert_allclose(
        to_numpy(p2(x, mask=np.ones((3, 6), bool))),
        to_numpy(keras.layers.GroupNormalization(2, axis=1, dtype="float64")(x)),
        atol=1e-6,
    )


# ----------------------------------------------------------- bad arguments
BAD_ARGUMENTS = [
    ({"groups": 0}, r"`groups` must be an integer >= 1, or -1.*received 0"),
    ({"groups": -2}, r"`groups` must be an integer >= 1, or -1.*received -2"),
    ({"groups": 2.0}, r"`groups` must be an integer >= 1, or -1.*received 2.0"),
    ({"groups": True}, r"`groups` must be an integer >= 1, or -1.*received True"),
    ({"groups": "4"}, r"`groups` must be an integer >= 1, or -1.*'4'"),
    ({"axis": [1, 2]}, r"`axis` must be an integer.*\[1, 2\]"),
]


@pytest.mark.parametrize(
    ("kwargs", "message"), BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(**kwargs)


@pytest.mark.parametrize(
    ("groups", "shape", "message"),
    [
        (4, (2, 5, 6), r"`groups`=4 must divide the 6 channels .*divisors of 6, or -1"),
        (8, (2, 6), r"`groups`=8 must divide the 6 channels"),
        (32, (2, 3, 3, 16), r"`groups`=32 must divide the 16 channels"),  # the default
    ],
)
def test_groups_that_do_not_divide_the_channels_are_refused(groups, shape, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(groups)(np.ones(shape, "float32"))


@pytest.mark.parametrize(
    ("axis", "shape", "message"),
    [
        (0, (4, 6), r"must not be the batch axis 0"),
        (-2, (4, 6), r"must not be the batch axis 0"),
        (-1, (6,), r"needs inputs of rank >= 2"),
    ],
)
def test_bad_axes_and_ranks_are_refused_at_build(axis, shape, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.LpGroupNormalization(2, axis=axis)(np.ones(shape, "float32"))


# ------------------------------------------------------ a model
def conv_model():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    h = tfnorms.LpGroupNormalization(4, p=1)(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = tfnorms.LpGroupNormalization(2, p="inf", top_k=5)(h)
    outputs = keras.layers.Dense(1)(keras.layers.Flatten()(h))
    return keras.Model(inputs, outputs)


def test_convolutional_model_trains(rng):
    """Group norms on images train (saving, export, mixed precision,
    jit_compile and MirroredStrategy: test_norm_models.py)."""
    x = rng.normal(size=(64, 6, 6, 2)).astype("float32")
    y = (x[:, :3, :3, 0].mean(axis=(1, 2)) - x[:, 3:, 3:, 1].mean(axis=(1, 2)))[:, None]
    model = compile_for_regression(conv_model())
    assert_fit_lowers_loss(model, x, y.astype("float32"))
