"""The wrappers on every kernel kind of docs/design.md, "Output units", beyond Dense/Conv:
transposed, depthwise and separable convolutions, causal/dilated Conv1D, an
EinsumDense whose kernel is stored (out, in),
SimpleRNN/LSTM/GRU and their cells, inside Bidirectional, TimeDistributed
and keras.layers.RNN; NumPy references on the right axes; the migration
cases of tensorflow-addons users (TCN block, MelGAN upsampler); and the
duties of docs/design.md, "Duties of every public class", through the
shared helper."""

import keras
import numpy as np
import pytest
from layer_checks import (
    assert_config_roundtrip,
    assert_export_roundtrip,
    assert_fit_lowers_loss,
    assert_jit_fit,
    assert_keras_roundtrip_fresh_process,
    assert_mirrored_matches_single,
    assert_mixed_precision,
    compile_for_regression,
    loss_and_gradients,
    to_numpy,
)

import tfnorms

L = keras.layers

# ------------------------------------------------------------ NumPy reference
# Output-unit axes written from docs/design.md, "Output units" (counted from the end), not
# read from tfnorms.axes.
RNN_AXES = {"kernel": (-1,), "recurrent_kernel": (-1,)}

# name: (make inner layer, input shape, {kernel variable name: unit axes}, is cell)
KINDS = {
    "conv1d_causal_dilated": (
        lambda: L.Conv1D(5, 3, padding="causal", dilation_rate=2),
        (3, 10, 4),
        {"kernel": (-1,)},
        False,
    ),
    "conv1d_transpose": (
        lambda: L.Conv1DTranspose(5, 3, strides=2),
        (3, 6, 4),
        {"kernel": (-2,)},
        False,
    ),
    "conv2d_transpose": (
        lambda: L.Conv2DTranspose(5, 3, padding="same"),
        (2, 5, 5, 3),
        {"kernel": (-2,)},
        False,
    ),
    "conv3d_transpose": (
        lambda: L.Conv3DTranspose(3, 2),
        (2, 3, 3, 3, 2),
        {"kernel": (-2,)},
        False,
    ),
    "depthwise1d": (
        lambda: L.DepthwiseConv1D(3, depth_multiplier=2),
        (3, 8, 4),
        {"kernel": (-2, -1)},
        False,
    ),
    "depthwise2d": (
        lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
        (2, 5, 5, 3),
        {"kernel": (-2, -1)},
        False,
    ),
    "separable1d": (
        lambda: L.SeparableConv1D(5, 3, depth_multiplier=2),
        (3, 8, 4),
        {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
        False,
    ),
    "separable2d": (
        lambda: L.SeparableConv2D(5, 3),
        (2, 5, 5, 3),
        {"depthwise_kernel": (-2, -1), "pointwise_kernel": (-1,)},
        False,
    ),
    # A kernel stored (out, in), its units inside the output: d is the unit.
    "einsum_dense_out_in": (
        lambda: L.EinsumDense("abc,dc->adb", (5, 4), bias_axes="d"),
        (3, 4, 6),
        {"kernel": (-2,)},
        False,
    ),
    "simple_rnn": (lambda: L.SimpleRNN(4, return_sequences=True), (3, 5, 3), RNN_AXES, False),
    "lstm": (lambda: L.LSTM(4), (3, 5, 3), RNN_AXES, False),
    "gru": (lambda: L.GRU(4, return_sequences=True), (3, 5, 3), RNN_AXES, False),
    "simple_rnn_cell": (lambda: L.SimpleRNNCell(4), (3, 3), RNN_AXES, True),
    "lstm_cell": (lambda: L.LSTMCell(4), (3, 3), RNN_AXES, True),
    "gru_cell": (lambda: L.GRUCell(4), (3, 3), RNN_AXES, True),
}
LAYER_KINDS = sorted(k for k, v in KINDS.items() if not v[3])

WRAPPERS = {
    "cwn": lambda layer: tfnorms.CenteredWeightNorm(layer, scale_initializer="random_uniform"),
    "wn": lambda layer: tfnorms.WeightNormalization(layer),
    "bwn": lambda layer: tfnorms.BoundedWeightNorm(layer),
    "bwn_gain": lambda layer: tfnorms.BoundedWeightNorm(layer, per_unit_gain=True),
}


def np_reduce_axes(shape, unit_axes):
    unit = {a % len(shape) for a in unit_axes}
    return tuple(a for a in range(len(shape)) if a not in unit)


def np_normalize(v, unit_axes, center, eps=1e-12):
    axes = np_reduce_axes(v.shape, unit_axes)
    if center:
        v = v - v.mean(axis=axes, keepdims=True)
    return v / np.sqrt((v**2).sum(axis=axes, keepdims=True) + eps)


def np_per_unit(values, shape, unit_axes):
    """A per-unit array (shape of the unit axes) broadcast against a kernel."""
    unit = sorted(a % len(shape) for a in unit_axes)
    return np.reshape(values, [shape[a] if a in unit else 1 for a in range(len(shape))])


def np_unit_norms(w, unit_axes):
    return np.sqrt((w**2).sum(axis=np_reduce_axes(w.shape, unit_axes)))


def inner_variables(wrapper):
    """{variable name: variable} of the inner layer (the cell of an RNN)."""
    owner = wrapper.layer.cell if isinstance(wrapper.layer, L.RNN) else wrapper.layer
    return {v.name: v for v in owner.weights}


def reference_kernels(wrapper, unit_table):
    """{kernel name: W} in NumPy from the wrapper's V and its parameters."""
    variables = inner_variables(wrapper)
    out = {}
    for name, unit_axes in unit_table.items():
        v = to_numpy(variables[name].value)
        if isinstance(wrapper, tfnorms.BoundedWeightNorm):
            rho = float(to_numpy(wrapper.rho_variables()[name].value))
            w = np_normalize(v, unit_axes, center=False)
            if wrapper.per_unit_gain:
                g = to_numpy(wrapper.scale_variables()[name].value)
                w = w * np_per_unit(g * rho / np.sqrt((g**2).sum() + 1e-12), v.shape, unit_axes)
            else:
                w = w * rho
        else:
            w = np_normalize(v, unit_axes, center=wrapper.center)
            g = to_numpy(wrapper.scale_variables()[name].value)
            w = w * np_per_unit(g, v.shape, unit_axes)
        out[name] = w
    return out


# ------------------------------------------------------------------- cases
def cell_states(cell, batch, rng):
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    return [rng.normal(size=(batch, s)).astype(cell.compute_dtype) for s in sizes]


def call(layer, x, states=None, **kwargs):
    out = layer(x, states, **kwargs) if states is not None else layer(x, **kwargs)
    if isinstance(out, (list, tuple)):  # a cell: (output, new states)
        return np.concatenate([to_numpy(t).reshape(-1) for t in keras.tree.flatten(out)])
    return to_numpy(out)


def make_case(kind, wrapper_name, rng, dtype=None):
    make_inner, shape, unit_table, is_cell = KINDS[kind]
    layer = make_inner()
    if dtype:
        layer = type(layer).from_config({**layer.get_config(), "dtype": dtype})
    wrapper = WRAPPERS[wrapper_name](layer)
    x = rng.normal(size=shape).astype(dtype or "float32")
    states = cell_states(layer, shape[0], rng) if is_cell else None
    call(wrapper, x, states)
    # Random values for every non-kernel inner weight (biases) too.
    for name, variable in inner_variables(wrapper).items():
        if name not in unit_table:
            variable.assign(rng.normal(size=variable.shape))
    return wrapper, x, states, unit_table


def plain_copy_with(wrapper, kernels, x, states):
    """A plain copy of the inner layer whose kernels are the given arrays."""
    plain = type(wrapper.layer).from_config(wrapper.layer.get_config())
    call(plain, x, states)
    variables = inner_variables(wrapper)
    owner = plain.cell if isinstance(plain, L.RNN) else plain
    plain_vars = {v.name: v for v in owner.weights}
    assert plain_vars.keys() == variables.keys()
    for name, variable in plain_vars.items():
        variable.assign(kernels[name] if name in kernels else variables[name].value)
    return plain


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_forward_matches_numpy_reference(kind, rng):
    for wrapper_name in sorted(WRAPPERS):
        wrapper, x, states, unit_table = make_case(kind, wrapper_name, rng)
        kernels = reference_kernels(wrapper, unit_table)
        effective = wrapper.effective_kernels()
        assert sorted(effective) == sorted(unit_table)
        for name, w in kernels.items():
            np.testing.assert_allclose(
                to_numpy(effective[name]), w, atol=1e-6, err_msg=f"{wrapper_name} {name}"
            )
        # The wrapper's own forward pass computes the inner operator with the
        # NumPy W (and the inner layer's other weights).
        want = call(plain_copy_with(wrapper, kernels, x, states), x, states)
        np.testing.assert_allclose(call(wrapper, x, states), want, atol=1e-5, err_msg=wrapper_name)
        # remove(): the plain layer with W baked in computes the same.
        np.testing.assert_allclose(
            call(wrapper.remove(), x, states), want, atol=1e-5, err_msg=wrapper_name
        )


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cwn_invariants_on_each_kernels_unit_axes(kind, rng):
    wrapper, _, _, unit_table = make_case(kind, "cwn", rng)
    effective = wrapper.effective_kernels()
    for name, unit_axes in unit_table.items():
        w = to_numpy(effective[name])
        g = to_numpy(wrapper.scale_variables()[name].value)
        unit = sorted(a % w.ndim for a in unit_axes)
        assert g.shape == tuple(w.shape[a] for a in unit)
        np.testing.assert_allclose(w.sum(axis=np_reduce_axes(w.shape, unit_axes)), 0, atol=1e-5)
        np.testing.assert_allclose(np_unit_norms(w, unit_axes), np.abs(g), rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(LAYER_KINDS))
def test_cwn_gradient_is_centered_and_orthogonal_per_unit(kind, rng):
    """Proposition 2 on every kind, per unit on the table's axes (float64)."""
    # Keras 3.15's own SimpleRNN fails in float64 on JAX (its scan carry
    # comes back float32): that one case runs in float32.
    float32_only = kind == "simple_rnn" and keras.backend.backend() == "jax"
    dtype, atol = ("float32", 1e-5) if float32_only else ("float64", 1e-10)
    wrapper, x, _, unit_table = make_case(kind, "cwn", rng, dtype=dtype)
    weights = rng.normal(size=call(wrapper, x).shape)
    variables = inner_variables(wrapper)
    kernels = [variables[name] for name in unit_table]
    _, grads = loss_and_gradients(
        wrapper, x, lambda out: keras.ops.sum(keras.ops.multiply(out, weights)), kernels
    )
    effective = wrapper.effective_kernels()
    for (name, unit_axes), grad in zip(unit_table.items(), grads, strict=True):
        w = to_numpy(effective[name])
        axes = np_reduce_axes(w.shape, unit_axes)
        scale = np.abs(grad).max()
        assert scale > 0, name
        np.testing.assert_allclose((grad * w).sum(axis=axes) / scale, 0, atol=atol, err_msg=name)
        np.testing.assert_allclose(grad.sum(axis=axes) / scale, 0, atol=atol, err_msg=name)


# ------------------------------------------------ reading W from the forward pass
def test_transposed_conv_normalizes_each_output_channel(rng):
    """The kernel read back through the wrapper's forward pass: with a
    length-1 input that is one-hot on input channel c, a stride-1 valid
    Conv1DTranspose outputs its taps for every output channel o. CWN makes
    each output channel's filter (over taps and inputs) zero-mean with norm
    g_o; the input channels are not normalized."""
    taps, outputs, inputs = 3, 5, 4
    wrapper = tfnorms.CenteredWeightNorm(
        L.Conv1DTranspose(outputs, taps, use_bias=False), scale_initializer="random_uniform"
    )
    probe = np.eye(inputs, dtype="float32")[:, None, :]  # (inputs, length 1, inputs)
    read = to_numpy(wrapper(probe))  # (inputs, taps, outputs): read[c, t, o]
    g = to_numpy(wrapper.scale_variables()["kernel"].value)
    assert g.shape == (outputs,)
    np.testing.assert_allclose(read.sum(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((read**2).sum(axis=(0, 1))), np.abs(g), rtol=1e-5)
    per_input = read.sum(axis=(1, 2))
    assert np.abs(per_input).max() > 1e-3  # input channels are not centered


def test_depthwise_conv_normalizes_each_channel_and_multiplier(rng):
    """A DepthwiseConv1D with kernel size k on a length-k input, one-hot at
    (t, c), outputs tap t of filters (c, m) at channel c * multiplier + m."""
    taps, channels, multiplier = 3, 4, 2
    wrapper = tfnorms.CenteredWeightNorm(
        L.DepthwiseConv1D(taps, depth_multiplier=multiplier, use_bias=False),
        scale_initializer="random_uniform",
    )
    probes = np.zeros((taps * channels, taps, channels), "float32")
    for t in range(taps):
        for c in range(channels):
            probes[t * channels + c, t, c] = 1.0
    out = to_numpy(wrapper(probes))[:, 0, :]  # (taps * channels, channels * multiplier)
    read = np.zeros((taps, channels, multiplier))
    for t in range(taps):
        for c in range(channels):
            read[t, c] = out[t * channels + c, c * multiplier : (c + 1) * multiplier]
    g = to_numpy(wrapper.scale_variables()["kernel"].value)
    assert g.shape == (channels, multiplier)
    np.testing.assert_allclose(read.sum(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt((read**2).sum(axis=0)), np.abs(g), rtol=1e-5)


# ------------------------------------------------- containers and recurrences
def test_bidirectional_around_a_wrapped_lstm(rng):
    x = rng.normal(size=(3, 6, 2)).astype("float32")
    x[0, 4:] = 0.0  # masked steps
    wrapped = L.Bidirectional(tfnorms.CenteredWeightNorm(L.LSTM(4, return_sequences=True)))
    plain = L.Bidirectional(L.LSTM(4, return_sequences=True))
    masking = L.Masking()
    wrapped(masking(x))
    plain(masking(x))
    forward, backward = wrapped.forward_layer, wrapped.backward_layer
    assert isinstance(forward, tfnorms.CenteredWeightNorm)
    assert isinstance(backward, tfnorms.CenteredWeightNorm)
    assert backward.layer.go_backwards and not forward.layer.go_backwards
    assert forward.scale_variables()["kernel"] is not backward.scale_variables()["kernel"]
    for variable in backward.trainable_variables:  # make the directions differ
        variable.assign(rng.normal(size=variable.shape))
    plain.forward_layer.set_weights(forward.plain_weights())
    plain.backward_layer.set_weights(backward.plain_weights())
    for inputs in (x, masking(x)):
        np.testing.assert_allclose(to_numpy(wrapped(inputs)), to_numpy(plain(inputs)), atol=1e-5)
    clone = assert_config_roundtrip(wrapped, x)
    assert clone.backward_layer.layer.go_backwards


def test_bidirectional_gru_with_return_state_in_a_functional_model(rng):
    inputs = keras.Input((5, 3))
    outputs = L.Bidirectional(tfnorms.WeightNormalization(L.GRU(4, return_state=True)))(inputs)
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    output, forward_state, backward_state = (to_numpy(t) for t in model(x))
    assert output.shape == (2, 8)
    np.testing.assert_allclose(output, np.concatenate([forward_state, backward_state], -1))


def test_time_distributed_around_a_wrapped_conv(rng):
    x = rng.normal(size=(2, 3, 6, 6, 2)).astype("float32")
    wrapped = L.TimeDistributed(tfnorms.CenteredWeightNorm(L.Conv2D(4, 3)))
    wrapped(x)
    plain = L.TimeDistributed(L.Conv2D(4, 3))
    plain(x)
    plain.layer.set_weights(wrapped.layer.plain_weights())
    np.testing.assert_allclose(to_numpy(wrapped(x)), to_numpy(plain(x)), atol=1e-5)
    assert_config_roundtrip(wrapped, x)


def test_wrapped_cell_in_rnn_equals_wrapped_layer(rng):
    """keras.layers.RNN(CWN(LSTMCell)) computes what CWN(LSTM) computes."""
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    by_cell = L.RNN(tfnorms.CenteredWeightNorm(L.LSTMCell(4)), return_sequences=True)
    by_layer = tfnorms.CenteredWeightNorm(L.LSTM(4, return_sequences=True))
    by_cell(x)
    by_layer(x)
    assert [v.name for v in by_cell.weights] == [v.name for v in by_layer.weights]
    for variable in by_layer.weights:
        variable.assign(rng.normal(size=variable.shape))
    by_cell.set_weights(by_layer.get_weights())
    np.testing.assert_allclose(to_numpy(by_cell(x)), to_numpy(by_layer(x)), atol=1e-5)
    assert_config_roundtrip(by_cell, x)


def test_stateful_wrapped_rnn_carries_and_resets_its_state(rng):
    x = rng.normal(size=(2, 4, 3)).astype("float32")
    wrapped = tfnorms.BoundedWeightNorm(L.SimpleRNN(4, stateful=True))
    plain = L.SimpleRNN(4, stateful=True)
    wrapped(x)
    plain(x)
    wrapped.reset_state()
    plain.reset_state()
    plain.set_weights(wrapped.plain_weights())
    first = to_numpy(wrapped(x))
    np.testing.assert_allclose(first, to_numpy(plain(x)), atol=1e-5)
    second = to_numpy(wrapped(x))  # starts from the carried state
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, to_numpy(plain(x)), atol=1e-5)
    wrapped.reset_state()
    np.testing.assert_allclose(to_numpy(wrapped(x)), first, atol=1e-6)


def test_recurrent_attributes_are_refused_for_other_layers():
    wrapper = tfnorms.CenteredWeightNorm(L.Dense(2))
    assert getattr(wrapper, "go_backwards", None) is None
    with pytest.raises(AttributeError, match="Dense"):
        wrapper.reset_state()


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_config_roundtrip(kind, rng):
    for wrapper_name in ("cwn", "bwn_gain"):
        wrapper, x, _, _ = make_case(kind, wrapper_name, rng)
        assert_config_roundtrip(wrapper, x, atol=1e-5)


def test_initialize_from_kernels_reads_the_new_kernel(rng):
    """After V is set by hand, the kernel-dependent parameters follow it."""
    x = rng.normal(size=(3, 8, 4)).astype("float32")
    cases = [
        (tfnorms.WeightNormalization(L.SeparableConv1D(5, 3)), KINDS["separable1d"][2]),
        (
            tfnorms.BoundedWeightNorm(L.Conv1DTranspose(5, 3), per_unit_gain=True),
            KINDS["conv1d_transpose"][2],
        ),
        (tfnorms.BoundedWeightNorm(L.LSTM(4)), RNN_AXES),
    ]
    for wrapper, unit_table in cases:
        wrapper(x)
        for variable in inner_variables(wrapper).values():
            variable.assign(3.0 * rng.normal(size=variable.shape))
        wrapper.initialize_from_kernels()
        for name, unit_axes in unit_table.items():
            v = to_numpy(inner_variables(wrapper)[name].value)
            w = to_numpy(wrapper.effective_kernels()[name])
            if isinstance(wrapper, tfnorms.WeightNormalization):
                np.testing.assert_allclose(w, v, rtol=1e-5, atol=1e-6)  # g = ||V||: W == V
                continue
            norms = np_unit_norms(v, unit_axes)
            rho = to_numpy(wrapper.rho_variables()[name].value)
            if wrapper.per_unit_gain:  # g = ||V_i|| and rho_F = ||g||: W == V
                np.testing.assert_allclose(rho, np.linalg.norm(norms), rtol=1e-5)
                np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-6)
            else:
                np.testing.assert_allclose(rho, norms.mean(), rtol=1e-5)


# ---------------------------------------------- migration from tensorflow-addons
def wn(layer):
    return tfnorms.WeightNormalization(layer)


def make_tcn(length=16, channels=2):
    """A TCN (Bai et al. 2018) with weight-normalized causal dilated convs,
    as written with tfa.layers.WeightNormalization."""

    def block(x, filters, dilation):
        h = wn(L.Conv1D(filters, 3, padding="causal", dilation_rate=dilation, activation="relu"))(x)
        h = L.Dropout(0.1)(h)
        h = wn(L.Conv1D(filters, 3, padding="causal", dilation_rate=dilation, activation="relu"))(h)
        if x.shape[-1] != filters:
            x = L.Conv1D(filters, 1)(x)
        return L.Activation("relu")(L.Add()([x, h]))

    inputs = keras.Input((length, channels))
    h = block(inputs, 8, 1)
    h = block(h, 8, 2)
    return keras.Model(inputs, L.Dense(1)(h))


def make_melgan_upsampler(frames=8, mels=4):
    """A MelGAN-style generator stage: weight-normalized conv, a transposed
    conv upsampling x4, a dilated residual unit and a tanh output conv."""
    inputs = keras.Input((frames, mels))
    h = wn(L.Conv1D(16, 7, padding="same"))(inputs)
    h = L.LeakyReLU(0.2)(h)
    h = wn(L.Conv1DTranspose(8, 8, strides=4, padding="same"))(h)
    r = L.LeakyReLU(0.2)(h)
    r = wn(L.Conv1D(8, 3, padding="same", dilation_rate=3))(r)
    h = L.Add()([h, r])
    h = L.LeakyReLU(0.2)(h)
    return keras.Model(inputs, wn(L.Conv1D(1, 7, padding="same", activation="tanh"))(h))


def test_tcn_block_is_causal_and_trains(rng):
    model = make_tcn()
    x = rng.normal(size=(32, 16, 2)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1).astype("float32") / 4
    tfnorms.data_init(model, x)  # tfa's data_init=True, as an explicit step
    bumped = x.copy()
    bumped[:, 10] += 5.0
    before, after = to_numpy(model(x)), to_numpy(model(bumped))
    np.testing.assert_allclose(before[:, :10], after[:, :10], atol=1e-6)  # no leak from the future
    assert np.abs(before[:, 10:] - after[:, 10:]).max() > 1e-3
    assert_fit_lowers_loss(compile_for_regression(model, learning_rate=0.02), x, y, epochs=4)


def test_melgan_upsampler_trains(rng):
    model = make_melgan_upsampler()
    x = rng.normal(size=(32, 8, 4)).astype("float32")
    y = 0.5 * np.sin(np.linspace(0, 6, 32))[None, :, None].repeat(32, 0).astype("float32")
    assert model.output_shape == (None, 32, 1)
    assert_fit_lowers_loss(compile_for_regression(model, learning_rate=0.05), x, y, epochs=4)


# ----------------------------- Duties of every public class (docs/design.md)
def make_sequence_zoo():
    """Every recurrent and 1-D kind in one model (TimeDistributed, whose
    Python loop over time steps is slow to trace, is tested on its own)."""
    return keras.Sequential(
        [
            keras.Input((4, 3)),
            tfnorms.CenteredWeightNorm(L.Conv1D(6, 3, padding="causal", dilation_rate=2)),
            tfnorms.WeightNormalization(L.Conv1DTranspose(6, 3, strides=2, padding="same")),
            tfnorms.BoundedWeightNorm(L.DepthwiseConv1D(3, padding="same", depth_multiplier=2)),
            tfnorms.CenteredWeightNorm(L.SeparableConv1D(6, 3, padding="same")),
            L.Bidirectional(tfnorms.CenteredWeightNorm(L.GRU(4, return_sequences=True))),
            tfnorms.WeightNormalization(L.SimpleRNN(4, return_sequences=True)),
            tfnorms.BoundedWeightNorm(L.LSTM(4), per_unit_gain=True),
            tfnorms.WeightNormalization(L.Dense(3)),
        ]
    )


def make_image_zoo():
    """The 2-D and 3-D convolution kinds in one model."""
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            tfnorms.CenteredWeightNorm(L.Conv2DTranspose(4, 3, strides=2, padding="same")),
            tfnorms.WeightNormalization(L.DepthwiseConv2D(3, depth_multiplier=2)),
            tfnorms.BoundedWeightNorm(L.SeparableConv2D(4, 3), per_unit_gain=True),
            L.Reshape((8, 8, 4, 1)),
            tfnorms.CenteredWeightNorm(L.Conv3DTranspose(2, 2)),
            L.GlobalAveragePooling3D(),
            tfnorms.WeightNormalization(L.Dense(3)),
        ]
    )


ZOOS = {"sequence": (make_sequence_zoo, (4, 3)), "image": (make_image_zoo, (6, 6, 2))}


def zoo_data(rng, name, n=64):
    x = rng.normal(size=(n, *ZOOS[name][1])).astype("float32")
    y = rng.normal(size=(n, 3)).astype("float32")
    return x, y


@pytest.mark.parametrize("name", sorted(ZOOS))
def test_zoo_fit_lowers_the_loss(name, rng):
    x, y = zoo_data(rng, name)
    assert_fit_lowers_loss(compile_for_regression(ZOOS[name][0]()), x, y)


@pytest.mark.slow  # every zoo model in a fresh process: the TensorFlow pass runs it
def test_models_load_in_a_fresh_process(tmp_path, rng):
    cases = []
    for make, shape in [
        (make_sequence_zoo, (4, 3)),
        (make_image_zoo, (6, 6, 2)),
        (make_tcn, (16, 2)),
        (make_melgan_upsampler, (8, 4)),
    ]:
        model = compile_for_regression(make())
        x = rng.normal(size=(8, *shape)).astype("float32")
        model.fit(x, to_numpy(model(x)) + 0.1, epochs=1, verbose=0)  # trained weights
        cases.append((model, x))
    assert_keras_roundtrip_fresh_process(cases, tmp_path, atol=1e-5)


@pytest.mark.tensorflow_only
def test_export_savedmodel_and_tfsmlayer(tmp_path, rng):
    for index, (make, shape) in enumerate(
        [
            (make_sequence_zoo, (4, 3)),
            (make_image_zoo, (6, 6, 2)),
            (make_tcn, (16, 2)),
            (make_melgan_upsampler, (8, 4)),
        ]
    ):
        x = rng.normal(size=(4, *shape)).astype("float32")
        assert_export_roundtrip(make(), x, tmp_path / str(index), atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", sorted(ZOOS))
def test_mirrored_strategy_matches_one_device(name, rng):
    x, y = zoo_data(rng, name, n=16)
    assert_mirrored_matches_single(ZOOS[name][0], x, y, steps=2)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(ZOOS))
def test_mixed_precision(name, policy, rng):
    x, y = zoo_data(rng, name, n=32)
    assert_mixed_precision(ZOOS[name][0], x, y, policy)


@pytest.mark.parametrize("name", sorted(ZOOS))
def test_jit_compile(name, rng):
    x, y = zoo_data(rng, name, n=32)
    assert_jit_fit(ZOOS[name][0], x, y)
