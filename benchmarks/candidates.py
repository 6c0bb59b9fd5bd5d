"""The bench's candidates: the models it times (ResNet-20, the MLP, the
synchronized rows' CNN) and the layers each group compares, the first of a
group its baseline."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "examples"))  # the ResNet of examples/cifar10


def batch_norm_factories():
    import keras

    import tfnorms

    return {
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(),
        "LpBN p=2": lambda: tfnorms.LpBatchNormalization(p=2),
        "LpBN p=1": lambda: tfnorms.LpBatchNormalization(p=1),
        "LpBN p=inf": lambda: tfnorms.LpBatchNormalization(p="inf"),
        "LpBN top-10": lambda: tfnorms.LpBatchNormalization(p="inf", top_k=10),
    }


def synchronized_factories():
    """The synchronized batch norms. Keras's layer refuses `synchronized=True`
    off TensorFlow; on JAX the sharded step reduces globally without it."""
    import keras

    import tfnorms

    sync = keras.backend.backend() == "tensorflow"
    return {
        "keras BatchNormalization": lambda: keras.layers.BatchNormalization(synchronized=sync),
        "LpBN p=2": lambda: tfnorms.LpBatchNormalization(p=2, synchronized=True),
        "LpBN p=1": lambda: tfnorms.LpBatchNormalization(p=1, synchronized=True),
        "LinfBN": lambda: tfnorms.LinfBatchNormalization(synchronized=True),
        "LinfBN top-10": lambda: tfnorms.LinfBatchNormalization(top_k=10, synchronized=True),
        "MeanOnlyBN": lambda: tfnorms.MeanOnlyBatchNormalization(synchronized=True),
    }


def weight_norm_factories():
    import keras

    import tfnorms

    return {
        "plain": lambda layer: layer,
        "CenteredWeightNorm": tfnorms.CenteredWeightNorm,
        "WeightNormalization": tfnorms.WeightNormalization,
        "BoundedWeightNorm": tfnorms.BoundedWeightNorm,
        "keras SpectralNormalization": keras.layers.SpectralNormalization,
    }


class CandidateLayers:
    """The layers `cifar10.models.resnet` asks its `norms` for, as a
    candidate makes them: bias-free convolutions and the classifier wrapped
    by `wrap`, each convolution followed by `norm()` (by nothing without a
    `norm`). Keras's default initializers: only the cost is measured."""

    def __init__(self, wrap, norm):
        self.wrap = wrap
        self.norm = norm

    def conv(self, filters, kernel_size, strides=1, padding="same", name=None, fan_in=None):
        from keras import layers

        conv = layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, use_bias=False, name=name
        )
        return self.wrap(conv)

    def bn(self, name=None, zero_gamma=False):
        return self.norm() if self.norm else None

    def classifier(self, units, fan_in=None):
        from keras import layers

        return self.wrap(layers.Dense(units))


def resnet20(wrap=lambda layer: layer, norm=None):
    """He et al.'s CIFAR ResNet-20 (3 x 3 basic blocks, option-A shortcuts),
    the example's own definition: built-in Keras layers around the
    candidates', so that `tfnorms.strip` can clone it."""
    from cifar10 import models

    return models.resnet(CandidateLayers(wrap, norm), depth=20, shortcut="A")


def mlp(wrap=lambda layer: layer, norm=None, width=512, depth=6, input_dim=784):
    import keras
    from keras import layers

    inputs = keras.Input((input_dim,))
    x = inputs
    for _ in range(depth - 1):
        x = wrap(layers.Dense(width, use_bias=norm is None))(x)
        if norm:
            x = norm()(x)
        x = layers.ReLU()(x)
    outputs = wrap(layers.Dense(10))(x)
    return keras.Model(inputs, outputs)


def cnn(wrap=lambda layer: layer, norm=None, filters=(16, 32, 64)):
    """The synchronized rows' model: three bias-free 3x3 convolutions (the
    last two with stride 2), each followed by `norm()` and a ReLU, global
    average pooling and a classifier."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3))
    x = inputs
    for index, width in enumerate(filters):
        strides = 1 if index == 0 else 2
        x = wrap(layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False))(x)
        if norm:
            x = norm()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, wrap(layers.Dense(10))(x))


# name: (model of `wrap` and `norm`, input shape, global batch)
MODELS = {
    "resnet20": (resnet20, (32, 32, 3), 128),
    "mlp": (mlp, (784,), 1024),
    "cnn": (cnn, (16, 16, 3), 64),
}
SYNC_GROUP = "synchronized batch norm"
# The second instance of a group's baseline, timed like every candidate: its
# ratio to the baseline is what two identical models read apart in that
# configuration, the resolution of the group's other ratios.
REPEAT_SUFFIX = " again (A/A)"


def candidates(model_name, replicas=1):
    """{group: {name: model factory}}; the first name of a group is its
    baseline, the second that baseline again (`REPEAT_SUFFIX`)."""
    import tfnorms

    build = MODELS[model_name][0]
    if replicas > 1:
        factories = synchronized_factories()
        models = {name: (lambda f=f: build(norm=f)) for name, f in factories.items()}
        return {SYNC_GROUP: with_repeat(models)}
    norms = batch_norm_factories()
    wrappers = weight_norm_factories()
    groups = {
        "batch norm": {name: (lambda f=f: build(norm=f)) for name, f in norms.items()},
        "weight norm": {name: (lambda w=w: build(wrap=w)) for name, w in wrappers.items()},
    }
    groups = {group: with_repeat(models) for group, models in groups.items()}
    groups["weight norm"]["CWN stripped (inference)"] = lambda: tfnorms.strip(
        build(wrap=tfnorms.CenteredWeightNorm)
    )
    return groups


def with_repeat(factories):
    """`factories` with its baseline's factory again, second, under the
    baseline's name and `REPEAT_SUFFIX`."""
    baseline, *others = factories
    names = [baseline, baseline + REPEAT_SUFFIX, *others]
    return {name: factories[name.removesuffix(REPEAT_SUFFIX)] for name in names}
