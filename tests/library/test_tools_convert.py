"""tfnorms.strip and tfnorms.convert_model on Sequential, functional and
nested models, TimeDistributed and Bidirectional, operation nodes, under
MirroredStrategy; the batch-norm switch; a small ResNet and
keras.applications.MobileNetV2."""

import json
import warnings

import keras
import numpy as np
import pytest
from layer_checks import (
    _replica_values,
    assert_export_roundtrip,
    assert_keras_roundtrip_fresh_process,
    mirrored_strategy,
    to_numpy,
)
from test_tools_data_init import all_layers, make_data_init_model, wrappers_of

import tfnorms
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper

L = keras.layers
WN, CWN, BWN = tfnorms.WeightNormalization, tfnorms.CenteredWeightNorm, tfnorms.BoundedWeightNorm


# -------------------------------------------------------------------- strip
def make_functional_with_nested(rng_seed=0):
    inputs = keras.Input((6, 4))
    h = CWN(L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"))(inputs)
    nested = keras.Sequential(
        [keras.Input((6, 6)), WN(L.Conv1DTranspose(4, 3, padding="same")), L.ReLU()],
        name="nested",
    )
    h = nested(h)
    h = L.Bidirectional(CWN(L.LSTM(3, return_sequences=True)))(h)
    h = L.TimeDistributed(BWN(L.Dense(4), per_unit_gain=True))(h)
    h = WN(L.SeparableConv1D(4, 3))(h)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, BWN(L.Dense(2))(h))


def make_sequential_without_input():
    model = keras.Sequential([WN(L.Dense(5, activation="relu")), CWN(L.Dense(2))])
    model(np.zeros((1, 3), "float32"))
    return model


STRIP_CASES = {
    "functional_nested": (make_functional_with_nested, (6, 4)),
    "sequential_deferred": (make_sequential_without_input, (3,)),
    "sequential": (make_data_init_model, (8, 8, 3)),
}


def randomize_trainable(model, rng):
    for variable in model.trainable_variables:
        variable.assign(to_numpy(variable) + 0.3 * rng.normal(size=variable.shape))


@pytest.mark.parametrize("name", sorted(STRIP_CASES))
def test_strip_gives_plain_layers_and_identical_outputs(name, rng):
    make, shape = STRIP_CASES[name]
    model = make()
    randomize_trainable(model, rng)  # as after training
    x = rng.normal(size=(4, *shape)).astype("float32")
    want = to_numpy(model(x))
    stripped = tfnorms.strip(model)
    np.testing.assert_allclose(to_numpy(stripped(x)), want, atol=1e-5)
    assert wrappers_of(stripped) == []
    assert "tfnorms" not in json.dumps(keras.saving.serialize_keras_object(stripped))
    # Layer names are the inner layers' names.
    inner_names = {w.layer.name for w in wrappers_of(model)}
    stripped_names = {layer.name for layer in all_layers(stripped)}
    assert inner_names - {n for n in inner_names if n.startswith(("forward_", "backward_"))} <= (
        stripped_names
    )
    # The original is unchanged.
    assert wrappers_of(model)
    np.testing.assert_allclose(to_numpy(model(x)), want, atol=0)


@pytest.mark.tensorflow_only
def test_stripped_model_exports(tmp_path, rng):
    model = make_functional_with_nested()
    x = rng.normal(size=(4, 6, 4)).astype("float32")
    assert_export_roundtrip(tfnorms.strip(model), x, tmp_path, atol=1e-5)


def test_strip_refuses_unbuilt_models_and_layers():
    with pytest.raises(ValueError, match="not built"):
        tfnorms.strip(keras.Sequential([WN(L.Dense(2))]))
    with pytest.raises(ValueError, match="Keras model"):
        tfnorms.strip(WN(L.Dense(2)))


# ------------------------------------------------------------ convert_model
def make_plain_model():
    inputs = keras.Input((6, 4))
    h = L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu")(inputs)
    h = keras.Sequential(
        [keras.Input((6, 6)), L.Conv1DTranspose(4, 3, padding="same"), L.ReLU()], name="nested"
    )(h)
    h = L.Bidirectional(L.LSTM(3, return_sequences=True))(h)
    h = L.TimeDistributed(L.Dense(4))(h)
    h = L.SeparableConv1D(4, 3)(h)
    h = L.BatchNormalization()(h)
    h = L.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, L.Dense(2, name="classifier")(h))


def supported_leaves(model):
    return [
        layer
        for layer in all_layers(model)
        if tfnorms.axes.is_supported(layer) and not isinstance(layer, KernelNormWrapper)
    ]


def np_unit_axes(layer, kernel_name):
    if isinstance(layer, L.Conv1DTranspose):
        return (-2,)
    if isinstance(layer, L.SeparableConv1D) and kernel_name == "depthwise_kernel":
        return (-2, -1)
    return (-1,)


def np_reduce(shape, unit_axes):
    unit = {a % len(shape) for a in unit_axes}
    return tuple(a for a in range(len(shape)) if a not in unit)


def kernels_of(layer):
    owner = layer.cell if isinstance(layer, L.RNN) else layer
    names = tfnorms.axes.unit_axes_for(layer)
    return {v.name: to_numpy(v.value) for v in owner.weights if v.name in names}


def test_convert_wn_is_exact_and_strip_undoes_it(rng):
    model = make_plain_model()
    randomize_trainable(model, rng)
    x = rng.normal(size=(4, 6, 4)).astype("float32")
    converted = tfnorms.convert_model(model, weight_norm="wn")
    wrappers = wrappers_of(converted)
    assert len(wrappers) == len(supported_leaves(model)) == 7  # Bidirectional: two
    assert all(isinstance(w, tfnorms.WeightNormalization) for w in wrappers)
    assert "classifier_wn" in [layer.name for layer in converted.layers]
    assert converted.get_layer("classifier_wn").layer.name == "classifier"
    np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), atol=1e-5)
    back = tfnorms.strip(converted)
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(model(x)), atol=1e-5)
    for a, b in zip(model.weights, back.weights, strict=True):
        np.testing.assert_allclose(to_numpy(a.value), to_numpy(b.value), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["cwn", "bwn"])
def test_convert_carries_the_kernels_into_the_method(method, rng):
    model = make_plain_model()
    randomize_trainable(model, rng)
    converted = tfnorms.convert_model(model, weight_norm=method)
    originals = supported_leaves(model)
    wrappers = wrappers_of(converted)
    assert len(wrappers) == len(originals)
    for original, wrapper in zip(originals, wrappers, strict=True):
        effective = {k: to_numpy(w) for k, w in wrapper.effective_kernels().items()}
        for name, v in kernels_of(original).items():
            unit_axes = np_unit_axes(original, name)
            axes = np_reduce(v.shape, unit_axes)
            if method == "cwn":  # the kernel loses each unit's mean, keeps its norm
                want = v - v.mean(axis=axes, keepdims=True)
            else:  # every unit rescaled to the mean of the original unit norms
                norms = np.sqrt((v**2).sum(axis=axes, keepdims=True))
                want = v / norms * norms.mean()
            np.testing.assert_allclose(
                effective[name], want, rtol=1e-4, atol=1e-6, err_msg=f"{wrapper.name} {name}"
            )


def test_convert_options(rng):
    model = make_plain_model()
    converted = tfnorms.convert_model(
        model,
        weight_norm=lambda layer: tfnorms.CenteredWeightNorm(layer, scale=False),
        layer_filter=lambda layer: layer.name != "classifier",
    )
    wrappers = wrappers_of(converted)
    assert len(wrappers) == 6
    assert all(not w.scale for w in wrappers)
    assert isinstance(converted.get_layer("classifier"), L.Dense)
    # Already-wrapped layers are copied, not wrapped twice.
    again = tfnorms.convert_model(converted, weight_norm="wn")
    assert len(wrappers_of(again)) == 7
    assert sum(isinstance(w, tfnorms.WeightNormalization) for w in wrappers_of(again)) == 1
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(again(x)), to_numpy(converted(x)), atol=1e-5)
    # An EinsumDense with a 3-D kernel has no output unit: left as it is.
    inputs = keras.Input((5,))
    einsum = keras.Model(inputs, L.EinsumDense("ab,bcd->acd", (3, 4))(L.Dense(5)(inputs)))
    with pytest.warns(UserWarning, match="einsum_dense: EinsumDense .* 3-D kernel"):
        converted_einsum = tfnorms.convert_model(einsum, weight_norm="cwn")
    assert [type(layer).__name__ for layer in converted_einsum.layers[1:]] == [
        "CenteredWeightNorm",
        "EinsumDense",
    ]
    # No option: a plain copy with the weights.
    copy = tfnorms.convert_model(model)
    np.testing.assert_allclose(to_numpy(copy(x)), to_numpy(model(x)), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_norm": "weightnorm"}, "weight_norm"),
        ({"weight_norm": 3}, "weight_norm"),
        ({"weight_norm": lambda layer: layer}, "tfnorms wrapper"),
        ({"batch_norm": "l3"}, "batch_norm"),
        ({"batch_norm": 2}, "batch_norm"),
        ({"batch_norm": lambda layer: None}, "`batch_norm` callable must return a new Keras"),
        ({"batch_norm": lambda layer: layer}, "it returned the layer it was given"),
        (
            {"batch_norm": lambda layer: L.Dense(7)},
            r"Dense '.*' for layer 'batch_normalization.*', whose output shape "
            r"\(None, 4, 7\) differs from the layer's \(None, 4, 4\)",
        ),
        ({"layer_filter": "dense"}, "layer_filter"),
    ],
)
def test_convert_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tfnorms.convert_model(make_plain_model(), **kwargs)


def test_convert_puts_what_a_norm_callable_returns_in_place():
    """A callable may return any layer that keeps the shape (here Keras's
    GroupNormalization); it gets the layer it replaces."""
    model = make_plain_model()
    seen = []

    def to_group_norm(layer):
        seen.append(layer)
        return L.GroupNormalization(groups=2, name="gn")

    converted = tfnorms.convert_model(model, batch_norm=to_group_norm)
    assert seen == [model.layers[6]]
    assert isinstance(converted.get_layer("gn"), L.GroupNormalization)
    assert converted.output.shape == model.output.shape


@pytest.mark.tensorflow_only
def test_convert_model_inside_a_strategy_scope(rng):
    """Convert a trained model into a MirroredStrategy scope, then train it."""
    model = trained_bn_model(rng)
    with mirrored_strategy().scope():
        converted = tfnorms.convert_model(model, weight_norm="cwn")
        converted.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    v = to_numpy(model.layers[1].kernel)
    w = wrappers_of(converted)[0].effective_kernels()["kernel"]
    np.testing.assert_allclose(to_numpy(w), v - v.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    x = rng.normal(size=(8, 5, 5, 3)).astype("float32")
    converted.fit(x, rng.normal(size=(8, 2)).astype("float32"), epochs=1, batch_size=8, verbose=0)
    # Trainable variables (Keras's unsynchronized batch norm keeps its
    # moving statistics per replica).
    for variable in converted.trainable_variables:
        replicas = _replica_values(variable)
        assert len(replicas) == 2, variable.path
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)


# ------------------------------------------------------ batch_norm switch
def make_bn_model():
    inputs = keras.Input((5, 5, 3))
    h = L.Conv2D(4, 3, use_bias=False)(inputs)
    h = L.BatchNormalization(momentum=0.9, epsilon=1e-4, name="bn")(h)
    h = L.ReLU()(h)
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(h)))


def trained_bn_model(rng):
    model = make_bn_model()
    bn = model.get_layer("bn")
    for variable in bn.weights:  # as after training: non-trivial statistics
        variable.assign(np.abs(rng.normal(size=variable.shape)) + 0.5)
    return model


@pytest.mark.parametrize(
    "option, class_name, carried",
    [
        ("l2", "LpBatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"]),
        ("l1", "L1BatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"]),
        ("linf", "LinfBatchNormalization", ["gamma", "beta", "moving_mean", "moving_variance"]),
        ({"p": 3, "top_k": None}, "LpBatchNormalization", ["gamma", "beta", "moving_mean"]),
        ("mean_only", "MeanOnlyBatchNormalization", ["beta", "moving_mean"]),
    ],
    ids=["l2", "l1", "linf", "dict", "mean_only"],
)
def test_convert_replaces_batch_normalization(option, class_name, carried, rng):
    model = trained_bn_model(rng)
    converted = tfnorms.convert_model(model, batch_norm=option)
    bn = model.get_layer("bn")
    new = converted.get_layer("bn")
    assert type(new) is getattr(tfnorms, class_name)
    assert new.momentum == pytest.approx(0.9)
    if hasattr(new, "epsilon"):
        assert new.epsilon == pytest.approx(1e-4)
    old_values = {v.name: to_numpy(v.value) for v in bn.weights}
    new_values = {v.name: to_numpy(v.value) for v in new.weights}
    for name in carried:
        np.testing.assert_array_equal(new_values[name], old_values[name], err_msg=name)
    if option == "l2":  # p=2 is Keras's batch norm (docs/design.md): nothing changes
        x = rng.normal(size=(4, 5, 5, 3)).astype("float32")
        np.testing.assert_allclose(to_numpy(converted(x)), to_numpy(model(x)), atol=1e-5)


# ------------------------------------------- ResNet and MobileNetV2 end to end
def make_small_resnet(classes=4):
    def block(x, filters, stride):
        h = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        h = L.BatchNormalization()(h)
        h = L.ReLU()(h)
        h = L.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = L.BatchNormalization()(h)
        if stride != 1 or x.shape[-1] != filters:
            x = L.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
            x = L.BatchNormalization()(x)
        return L.ReLU()(L.Add()([x, h]))

    inputs = keras.Input((16, 16, 3))
    h = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = block(h, 8, 1)
    h = block(h, 16, 2)
    h = L.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, L.Dense(classes, name="classifier")(h), name="small_resnet")


def train_one_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="categorical_crossentropy")
    history = model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def classification_data(rng, shape, n=8, classes=4):
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, size=n)]
    return x, y


def test_convert_small_resnet_exactly_with_wn_and_l2(rng):
    model = make_small_resnet()
    x, y = classification_data(rng, (16, 16, 3))
    train_one_step(model, x, y)  # moving statistics move away from 0 and 1
    converted = tfnorms.convert_model(model, weight_norm="wn", batch_norm="l2")
    assert len(wrappers_of(converted)) == 7
    np.testing.assert_allclose(
        converted.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
    )


@pytest.mark.slow
def test_convert_resnet_and_mobilenet_train_save_and_load(tmp_path, rng):
    """The norm-matters recipe on a ResNet (bounded weight norm on every conv,
    not the classifier; mean-only batch norm) and CWN with L1 batch norm on
    keras.applications.MobileNetV2: one training step, then save and load in
    a fresh process."""
    cases = []
    resnet = tfnorms.convert_model(
        make_small_resnet(),
        weight_norm="bwn",
        batch_norm="mean_only",
        layer_filter=lambda layer: layer.name != "classifier",
    )
    assert len(wrappers_of(resnet)) == 6
    assert (
        sum(isinstance(layer, tfnorms.MeanOnlyBatchNormalization) for layer in resnet.layers) == 6
    )
    x, y = classification_data(rng, (16, 16, 3))
    train_one_step(resnet, x, y)
    cases.append((resnet, x))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the input size has no ImageNet weights
        mobilenet = keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=4
        )
    converted = tfnorms.convert_model(mobilenet, weight_norm="cwn", batch_norm="l1")
    assert len(wrappers_of(converted)) == len(supported_leaves(mobilenet)) == 53
    assert not any(type(layer) is L.BatchNormalization for layer in converted.layers)
    x, y = classification_data(rng, (32, 32, 3), n=4)
    train_one_step(converted, x, y)
    cases.append((converted, x))
    assert_keras_roundtrip_fresh_process(cases, tmp_path, atol=1e-5)


@pytest.mark.parametrize("method", ["wn", "cwn", "bwn"])
def test_convert_keeps_a_frozen_layer_frozen(method, rng):
    """A `trainable=False` layer's wrapper is frozen too (its new scale `g`
    included), in a graph and inside a nested model; strip gives it back
    frozen."""
    frozen = L.Dense(3, name="frozen")
    frozen.trainable = False
    nested = keras.Sequential([keras.Input((3,)), L.Dense(3, name="inner_frozen")], name="nested")
    nested.layers[0].trainable = False
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="head")(nested(frozen(inputs))))
    x = rng.normal(size=(5, 4)).astype("float32")
    converted = tfnorms.convert_model(model, weight_norm=method)
    for wrapper in wrappers_of(converted):
        trainable = wrapper.layer.name == "head"
        assert wrapper.trainable is trainable, wrapper.name
        assert trainable or not wrapper.trainable_weights, wrapper.name
    head = converted.get_layer(f"head_{method}")
    assert {id(v) for v in converted.trainable_weights} == {
        id(v) for v in head.weights if v.trainable
    }
    back = tfnorms.strip(converted)
    assert not back.get_layer("frozen").trainable
    assert not back.get_layer("nested").layers[0].trainable
    assert len(back.trainable_weights) == len(model.trainable_weights) == 2
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(converted(x)), atol=1e-5)


@pytest.mark.parametrize(
    "option",
    [
        {"batch_norm": "l1"},
        {"batch_norm": lambda layer: tfnorms.LpBatchNormalization(p=2)},
        {"layer_norm": lambda layer: tfnorms.LpLayerNormalization(p=2)},
    ],
    ids=["preset", "batch_norm_callable", "layer_norm_callable"],
)
def test_convert_keeps_a_frozen_norm_frozen(option):
    """What replaces a `trainable=False` normalization layer is frozen too,
    whether a preset or the user's callable made it."""
    inputs = keras.Input((4,))
    norm = L.BatchNormalization() if "batch_norm" in option else L.LayerNormalization()
    model = keras.Model(inputs, L.Dense(2, name="head")(norm(inputs)))
    norm.trainable = False
    converted = tfnorms.convert_model(model, **option)
    new = converted.layers[1]
    assert type(new) is not type(norm)
    assert not new.trainable
    assert len(converted.trainable_weights) == len(model.trainable_weights) == 2


def test_a_frozen_nested_model_nothing_replaces_stays_frozen(rng):
    """A frozen backbone (a nested Sequential) with nothing replaced inside
    is copied from its config, which does not hold the flag: the copy is
    frozen as the original is, in convert_model and in strip."""
    backbone = keras.Sequential(
        [keras.Input((4,)), L.Dense(4, name="b1"), L.Dense(4, name="b2")], name="backbone"
    )
    backbone.trainable = False
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2, name="head")(backbone(inputs)))
    x = rng.normal(size=(5, 4)).astype("float32")
    converted = tfnorms.convert_model(
        model, weight_norm="wn", layer_filter=lambda layer: layer.name == "head"
    )
    back = tfnorms.strip(converted)
    for copy in (converted, back):
        assert copy.get_layer("backbone").trainable is False
        copy.get_layer("backbone").trainable = True  # unfreezing reaches every layer
        assert len(copy.get_layer("backbone").trainable_weights) == 4
    np.testing.assert_allclose(to_numpy(back(x)), to_numpy(model(x)), atol=1e-5)


def test_convert_model_keeps_operator_nodes_of_functional_models():
    """`h + x` in a functional model is an operation node, not a layer:
    conversion must replay it (Transformer-style residuals)."""
    inputs = keras.Input((6,))
    h = keras.layers.Dense(6)(inputs)
    outputs = keras.layers.Dense(2)(h + inputs)
    model = keras.Model(inputs, outputs)
    converted = tfnorms.convert_model(model, weight_norm="wn")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(
        converted.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_batch_renormalization_is_carried_or_refused(rng):
    """renorm, renorm_clipping and renorm_momentum cross over with the
    renorm statistics; mean-only batch norm cannot renormalize, so a
    BatchNormalization(renorm=True) is refused, naming the layer."""
    clipping = {"rmax": 1.5, "rmin": 0.5, "dmax": 0.3}
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(
                renorm=True, renorm_clipping=clipping, renorm_momentum=0.9, name="bn"
            ),
            keras.layers.Dense(1),
        ]
    )
    x = rng.normal(1.0, 2.0, size=(16, 6)).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, rng.normal(size=(16, 1)), epochs=2, batch_size=8, verbose=0)
    converted = tfnorms.convert_model(model, batch_norm="l2")
    layer = converted.get_layer("bn")
    assert type(layer) is tfnorms.LpBatchNormalization and layer.renorm
    assert layer.renorm_clipping == clipping and layer.renorm_momentum == 0.9
    for old, new in zip(model.get_layer("bn").weights, layer.weights, strict=True):
        assert old.name == new.name
        np.testing.assert_array_equal(to_numpy(old.value), to_numpy(new.value))
    for training in (True, False):
        np.testing.assert_allclose(
            to_numpy(converted(x, training=training)),
            to_numpy(model(x, training=training)),
            atol=1e-5,
        )
    with pytest.raises(ValueError, match=r"renorm=True.*'bn'.*MeanOnlyBatchNormalization"):
        tfnorms.convert_model(model, batch_norm="mean_only")


def test_every_tool_refuses_what_is_not_a_model_naming_it():
    """Each model tool names itself and what it received; a path that is not
    one names `path`; `for_layer` refuses what is not a layer."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for call, tool in [
        (lambda: tfnorms.convert_model("m", weight_norm="wn"), "convert_model"),
        (lambda: tfnorms.strip("m"), "strip"),
        (lambda: tfnorms.data_init("m", np.zeros((2, 3))), "data_init"),
        (lambda: tfnorms.load_addons_weights("m", "weights.h5"), "load_addons_weights"),
    ]:
        with pytest.raises(ValueError, match=rf"tfnorms\.{tool} takes a Keras model; received 'm'"):
            call()
    with pytest.raises(TypeError, match="`path` must be a file or folder path.*None"):
        tfnorms.load_addons_weights(model, None)
    with pytest.raises(ValueError, match="Expected a Keras layer or layer class; received 'Dense'"):
        tfnorms.CenteredUnitNorm.for_layer("Dense")
